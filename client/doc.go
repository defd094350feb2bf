// Package client calls fnmesh functions.
//
//	c, err := client.New(b, client.Config{Token: tok})
//	var out AddOut
//	err = c.Call(ctx, "math.add", AddIn{A: 1, B: 2}, &out, client.WithTimeout(2*time.Second))
//	err = c.Send(ctx, "mail.welcome", Mail{To: "a@b.c"}) // returns once queued
//
// Each client reads the replies to its calls from one inbox of its own
// and matches them by correlation id. Each target function sits behind a
// circuit breaker that opens on unavailable, deadline and internal
// failures (not on the caller's own mistakes), and while open fails calls
// at once with unavailable.
package client
