"""Error codes and the error every fnmesh call fails with (PROTOCOL.md §5)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

INVALID_ARGUMENT = "invalid_argument"
UNAUTHENTICATED = "unauthenticated"
PERMISSION_DENIED = "permission_denied"
NOT_FOUND = "not_found"
DEADLINE_EXCEEDED = "deadline_exceeded"
UNAVAILABLE = "unavailable"
RESOURCE_EXHAUSTED = "resource_exhausted"
CANCELED = "canceled"
INTERNAL = "internal"

MESH_CODES = frozenset(
    {
        INVALID_ARGUMENT,
        UNAUTHENTICATED,
        PERMISSION_DENIED,
        NOT_FOUND,
        DEADLINE_EXCEEDED,
        UNAVAILABLE,
        RESOURCE_EXHAUSTED,
        CANCELED,
        INTERNAL,
    }
)

_CODE_RE = re.compile(r"^[a-z0-9_.]{1,64}$")


def valid_code(code: str) -> bool:
    """Reports whether code may cross the wire: [a-z0-9_.], 1 to 64 bytes."""
    return bool(_CODE_RE.match(code))


@dataclass(frozen=True)
class FieldViolation:
    """One request field that failed validation."""

    field: str
    """JSON path of the field, e.g. "items[0].qty"."""
    rule: str
    """The failed rule, e.g. "required", "gte"."""
    param: str = ""
    """The rule's parameter, e.g. "0" for gte=0."""

    def to_json(self) -> dict[str, str]:
        out = {"field": self.field, "rule": self.rule}
        if self.param:
            out["param"] = self.param
        return out


class FnmeshError(Exception):
    """The error every call raises, and the error a function raises to fail
    with a code of its choice::

        raise FnmeshError("insufficient_funds", "balance 3, price 5")
    """

    def __init__(self, code: str, message: str = "", fields: list[FieldViolation] | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.fields: list[FieldViolation] = list(fields or [])
        self.replica = ""
        """The replica that answered, "" when the caller made the error."""

    def __repr__(self) -> str:
        return f"FnmeshError({self.code!r}, {self.message!r}, fields={self.fields!r})"
