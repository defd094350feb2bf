package gateway

import (
	"embed"
	"io/fs"
	"net/http"
)

// The function browser: plain HTML, CSS and JS, no build step.
//
//go:embed ui/index.html ui/app.js ui/style.css
var uiFiles embed.FS

// mountUI serves the page at /ui/ and sends / there.
func (g *Gateway) mountUI() {
	sub, _ := fs.Sub(uiFiles, "ui")
	files := http.StripPrefix("/ui/", http.FileServerFS(sub))
	g.mux.Handle("GET /ui/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The page loads only its own files and calls only this gateway.
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
		w.Header().Set("Referrer-Policy", "no-referrer")
		files.ServeHTTP(w, r)
	}))
	g.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/ui/", http.StatusFound)
	})
}
