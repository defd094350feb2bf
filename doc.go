// Package fnmesh holds what callers and functions share: the error codes
// that cross the wire and the typed Error that carries them.
//
// A call travels through the folders in this order:
//
//	client/    the caller: Call and Send, breakers, the reply inbox
//	bus/       the transport: Redis Streams or the in-memory bus
//	handlers/  the service: typed functions behind token check and validation
//	security/  tokens, claims and access policies, used by client and handlers
//	placement/ which services share a process: calls between them stay in-process
//	registry/  discovery: replicas announce and heartbeat; callers check
//	telemetry/ Prometheus metrics, OpenTelemetry traces, log ids
//
// See docs/PROTOCOL.md for the wire format.
package fnmesh
