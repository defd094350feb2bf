// Package handlers runs typed Go functions as fnmesh services.
//
//	svc := handlers.NewService("math", handlers.Config{Auth: verifier})
//	handlers.Register(svc, "add", func(ctx context.Context, in AddIn) (AddOut, error) { ... })
//	err := svc.Run(ctx, b) // one replica; run more processes to scale
//
// Each call passes, in order, through the token check (Config.Auth), the
// function's own claim requirements, the service's middleware (Use), and
// validation of the decoded arguments (validator v10 tags), before the
// function runs. A panic becomes an internal error for that call only.
package handlers
