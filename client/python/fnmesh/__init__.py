"""fnmesh for Python: call functions of the mesh and serve them, over Redis
Streams, interoperating with the Go and TypeScript packages
(docs/PROTOCOL.md).

Caller::

    async with await fnmesh.connect(token=tok) as c:
        total = await c.call("math.add", {"a": 1, "b": 2}, timeout=5)

Worker::

    @dataclass
    class AddIn:
        a: float
        b: float

    def add(args: AddIn) -> float:
        return args.a + args.b

    fnmesh.run("math", {"add": add}, auth=fnmesh.JWTAuth(hmac_secret=secret))
"""

from .auth import Claims, JWTAuth, Verifier, roles_of, sign_hs256
from .client import CallInfo, Client, connect
from .errors import (
    CANCELED,
    DEADLINE_EXCEEDED,
    INTERNAL,
    INVALID_ARGUMENT,
    NOT_FOUND,
    PERMISSION_DENIED,
    RESOURCE_EXHAUSTED,
    UNAUTHENTICATED,
    UNAVAILABLE,
    FieldViolation,
    FnmeshError,
)
from .schema import schema_of
from .worker import Context, Function, Replica, RetryPolicy, run, serve

__all__ = [
    "CANCELED", "DEADLINE_EXCEEDED", "INTERNAL", "INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED", "UNAUTHENTICATED", "UNAVAILABLE",
    "CallInfo", "Claims", "Client", "Context", "FieldViolation", "FnmeshError", "Function", "JWTAuth", "Replica",
    "RetryPolicy", "Verifier", "connect", "roles_of", "run", "schema_of", "serve", "sign_hs256",
]
