// @fnmesh/client: call fnmesh functions from Node.js, and serve them, over
// Redis Streams, interoperating with the Go packages (docs/PROTOCOL.md).

export { Codes, FnmeshError, isFnmeshError, isMeshCode, validCode } from "./errors.js";
export type { Code, FieldViolation, MeshCode } from "./errors.js";
export { Client, connect } from "./client.js";
export type { CallInfo, CallOptions, ClientOptions, SendOptions } from "./client.js";
export { Replica, serve } from "./worker.js";
export type { Context, FunctionSpec, Functions, Handler, RetryPolicy, ServeOptions } from "./worker.js";
export { jwtVerifier, rolesOf, signHS256 } from "./jwt.js";
export type { Claims, JwtOptions, Verifier } from "./jwt.js";
export type { Logger, RedisOptions } from "./conn.js";
export type { BreakerOptions, BreakerState } from "./breaker.js";
export { deadLetterKey, functionKey, replyKey, requestKey, GROUP, PROTOCOL_VERSION } from "./protocol.js";
