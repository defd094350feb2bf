"""JSON Schemas (2020-12) of functions' arguments and results, from type
hints: dataclasses, TypedDicts, builtins, list/dict/Optional/Union/Literal.
Also decodes arguments into the annotated dataclass and reports missing
required fields."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from .errors import INVALID_ARGUMENT, FieldViolation, FnmeshError

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__required_keys__")


def schema_of(tp: Any, top: bool = True) -> dict[str, Any]:
    """The JSON Schema of values of type tp ({} for unknown or Any)."""
    out = _schema(tp, set())
    if top:
        out = {"$schema": DRAFT, **out}
    return out


def _schema(tp: Any, seen: set[Any]) -> dict[str, Any]:
    if tp is None or tp is type(None):
        return {"type": "null"}
    if tp is Any or tp is typing.Any or tp is object:
        return {}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if tp is bytes:
        return {"type": "string", "contentEncoding": "base64"}
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return {"anyOf": [_schema(a, seen) for a in get_args(tp)]}
    if origin is Literal:
        return {"enum": list(get_args(tp))}
    if origin in (list, tuple, set, frozenset, typing.Sequence, __import__("collections.abc").abc.Sequence):
        args = get_args(tp)
        return {"type": "array", "items": _schema(args[0], seen)} if args else {"type": "array"}
    if origin in (dict, typing.Mapping, __import__("collections.abc").abc.Mapping):
        args = get_args(tp)
        return {"type": "object", "additionalProperties": _schema(args[1], seen)} if len(args) == 2 else {"type": "object"}
    if tp in (list, tuple, set):
        return {"type": "array"}
    if tp is dict:
        return {"type": "object"}
    if isinstance(tp, type) and (dataclasses.is_dataclass(tp) or _is_typeddict(tp)):
        if tp in seen:
            return {"type": "object", "title": tp.__name__}
        seen = seen | {tp}
        hints = _hints(tp)
        props = {name: _schema(h, seen) for name, h in hints.items()}
        out: dict[str, Any] = {"type": "object", "title": tp.__name__, "properties": props}
        req = required_fields(tp)
        if req:
            out["required"] = req
        return out
    return {}


def _hints(tp: Any) -> dict[str, Any]:
    try:
        hints = get_type_hints(tp)
    except Exception:
        hints = dict(getattr(tp, "__annotations__", {}))
    if dataclasses.is_dataclass(tp):
        names = [f.name for f in dataclasses.fields(tp)]
        return {n: hints.get(n, Any) for n in names}
    return hints


def required_fields(tp: Any) -> list[str]:
    """The fields a dataclass or TypedDict cannot do without."""
    if dataclasses.is_dataclass(tp):
        return [
            f.name
            for f in dataclasses.fields(tp)
            if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
    if _is_typeddict(tp):
        return sorted(tp.__required_keys__)
    return []


def decode(tp: Any, value: Any, path: str = "") -> Any:
    """Turns decoded JSON into tp where tp is a dataclass (recursively) or a
    TypedDict (checked for required keys); other values pass unchanged.
    Missing required fields raise invalid_argument naming them."""
    if not (isinstance(tp, type) and (dataclasses.is_dataclass(tp) or _is_typeddict(tp))):
        return value
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise FnmeshError(INVALID_ARGUMENT, f"arguments{' of ' + path if path else ''}: want a JSON object")
    missing = [f for f in required_fields(tp) if f not in value]
    if missing:
        fields = [FieldViolation(path + m, "required") for m in missing]
        raise FnmeshError(INVALID_ARGUMENT, "missing required fields: " + ", ".join(v.field for v in fields), fields)
    if _is_typeddict(tp):
        return value
    hints = _hints(tp)
    kwargs = {}
    for name, h in hints.items():
        if name in value:
            kwargs[name] = decode(h, value[name], path + name + ".")
    try:
        return tp(**kwargs)
    except (TypeError, ValueError) as e:
        raise FnmeshError(INVALID_ARGUMENT, f"arguments do not fit {tp.__name__}: {e}") from None


def encode(value: Any) -> Any:
    """Makes a result JSON-encodable: dataclasses become dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value
