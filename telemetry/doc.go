// Package telemetry makes the mesh visible: Prometheus metrics on both
// sides of a call (Metrics), OpenTelemetry traces that cross services in
// the request's traceparent field (Tracing), and an slog handler that
// puts trace and correlation ids on log records (LogHandler).
//
//	m, _ := telemetry.NewMetrics(telemetry.MetricsConfig{})
//	tr := telemetry.NewTracing(nil) // the global TracerProvider
//	cfg := handlers.Config{Auth: v, OpsAddr: ":9090"}
//	m.InstrumentService(&cfg)   // interceptor, queue gauges, /metrics
//	tr.InstrumentService(&cfg)  // server spans
//	cfg.Plugins = append(cfg.Plugins, registry.NewAnnouncer(registry.Config{Stats: m}))
//
//	ccfg := client.Config{Name: "billing"}
//	m.InstrumentClient(&ccfg)
//	tr.InstrumentClient(&ccfg)
package telemetry
