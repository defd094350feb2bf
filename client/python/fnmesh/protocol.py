"""Names, fields and small helpers of the wire protocol (docs/PROTOCOL.md)."""

from __future__ import annotations

import hashlib
import re
from typing import Any
from urllib.parse import unquote, urlsplit

from .errors import INVALID_ARGUMENT, FnmeshError

PROTOCOL_VERSION = "1"
GROUP = "fnmesh"
"""The consumer group every replica of a service joins (§2)."""
REPLY_PREFIX = "fnmesh:reply:"

SERVICE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
FUNCTION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")


def request_key(service: str) -> str:
    return "fnmesh:{" + service + "}:req"


def function_key(service: str, fn: str) -> str:
    """Where requests for fn go (§1): a versioned function ("add@v2") has a stream of its own."""
    return request_key(service) + ":" + fn if "@" in fn else request_key(service)


def dead_letter_key(service: str) -> str:
    return "fnmesh:{" + service + "}:dead"


def reply_key(inbox: str) -> str:
    return REPLY_PREFIX + "{" + inbox + "}"


INBOX_USER_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def inbox_id(url: str, random: str) -> str:
    """§6: a new inbox id: USER:RANDOM when the connection URL names a
    Redis ACL user other than "default" (an ACL then gives each user its
    own inboxes only, ~fnmesh:reply:{USER:*}), else RANDOM."""
    try:
        user = unquote(urlsplit(url).username or "")
    except ValueError:
        user = ""
    if user in ("", "default"):
        return random
    if not INBOX_USER_RE.match(user):
        raise FnmeshError(INVALID_ARGUMENT, f"Redis user {user!r} cannot name inboxes: use letters, digits, '_', '-' or '.' (at most 64)")
    return user + ":" + random


def limits_key(service: str) -> str:
    return "fnmesh:{" + service + "}:limits"


def idempotency_key(service: str, key: str) -> str:
    return "fnmesh:{" + service + "}:idem:" + key


def idempotency_scope(fn: str, subject: str, key: str) -> str:
    """§12: the stored name of a caller's idempotency key, scoped to the
    function (with its version) and the verified subject ("" without one)."""
    sub = subject.encode()
    return hashlib.sha256(fn.encode() + b"\n" + str(len(sub)).encode() + b"\n" + sub + key.encode()).hexdigest()


def args_hash(payload: str | None) -> str:
    """§12: the hash of the arguments (the `p` bytes as sent) a key was used with."""
    return hashlib.sha256((payload or "").encode()).hexdigest()


def split_name(name: str) -> tuple[str, str]:
    """Splits "service.function" at its first dot."""
    service, dot, fn = name.partition(".")
    if not dot or not SERVICE_RE.match(service) or not fn:
        raise FnmeshError(INVALID_ARGUMENT, f"function name {name!r}: want service.function, e.g. math.add")
    return service, fn


def _parse_id(i: str) -> tuple[int, int]:
    ms, _, seq = i.partition("-")
    try:
        return int(ms or 0), int(seq or 0)
    except ValueError:
        return 0, 0


def next_id(i: str) -> str:
    """The smallest stream id after i: same milliseconds, sequence + 1."""
    ms, seq = _parse_id(i)
    return f"{ms}-{seq + 1}"


def compare_ids(a: str, b: str) -> int:
    pa, pb = _parse_id(a), _parse_id(b)
    return (pa > pb) - (pa < pb)


def s(v: Any) -> str:
    """A Redis reply value as text."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def pairs(flat: Any) -> dict[str, Any]:
    """A flat [k1, v1, k2, v2, ...] reply as a dict with text keys."""
    out: dict[str, Any] = {}
    if isinstance(flat, dict):
        return {s(k): v for k, v in flat.items()}
    it = iter(flat or [])
    for k in it:
        out[s(k)] = next(it, None)
    return out
