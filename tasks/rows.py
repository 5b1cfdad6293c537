"""Rows are dicts; this module reads and writes their (dotted) fields and normalizes values.

Every value a step writes goes through `to_jsonable`, so rows stay plain data that the payload
codecs, Prefect parameters and artifacts all accept: no live DSPy or pydantic objects travel on.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Collection, Mapping
from datetime import date, datetime
from enum import Enum
from typing import Any

__all__ = [
    "ERROR_FIELD",
    "MISSING",
    "absent_inputs",
    "admits_none",
    "get_field",
    "has_field",
    "set_field",
    "to_jsonable",
]


#: The field a failed row carries: ``{"step", "type", "message", ...}``; later steps skip such rows.
ERROR_FIELD = "_error"


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def get_field(row: Mapping[str, Any], path: str, default: Any = MISSING) -> Any:
    """Read ``path`` (``"a"`` or ``"a.b.c"``) from a row; ``default`` when absent."""
    value: Any = row
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        else:
            return default
    return value


def has_field(row: Mapping[str, Any], path: str) -> bool:
    """Whether the row has ``path``."""
    return get_field(row, path) is not MISSING


def admits_none(annotation: Any) -> bool:
    """Whether a field typed ``annotation`` accepts null: ``Optional[X]``, ``X | None``, ``None``, ``Any``."""
    if annotation is None or annotation is type(None) or annotation is Any:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(admits_none(arg) for arg in typing.get_args(annotation))
    return False


def absent_inputs(
    row: Mapping[str, Any], reads: Mapping[str, str], nullable: Collection[str] = ()
) -> dict[str, str]:
    """The inputs a row cannot give its module: ``{input name: "missing" | "null"}`` (empty: none).

    A row that lacks a field, or holds null where the module's field does not accept null, must not
    reach the LM: DSPy would send the text ``None`` and the answer would be paid for (issue 25).

    Args:
        row: The row.
        reads: Each input name and the row field (a dotted path) it is read from.
        nullable: Input names whose type accepts null (``Optional[...]``, a parameter with a default).
    """
    absent: dict[str, str] = {}
    for name, path in reads.items():
        value = get_field(row, path)
        if value is MISSING:
            absent[name] = "missing"
        elif value is None and name not in nullable:
            absent[name] = "null"
    return absent


def set_field(row: dict[str, Any], path: str, value: Any) -> None:
    """Write ``value`` at ``path``, creating nested dicts for dotted paths.

    Copy on write: each nested dict on the path is copied before it is written, because it may be
    shared with the caller's data, a parallel branch or a map item (which start as shallow copies of
    their row); writing through it would change them all, concurrently.
    """
    parts = path.split(".")
    target = row
    for part in parts[:-1]:
        nested = target.get(part)
        nested = dict(nested) if isinstance(nested, dict) else {}
        target[part] = nested
        target = nested
    target[parts[-1]] = value


def to_jsonable(value: Any) -> Any:
    """Turn a module's output value into plain JSON-able data (pydantic models, enums, tuples...)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Enum):
        return to_jsonable(value.value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump):
        return to_jsonable(model_dump(mode="json"))
    to_dict = getattr(value, "toDict", None)  # dspy.Example / dspy.Prediction
    if callable(to_dict):
        return to_jsonable(to_dict())
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return tolist()
    return str(value)
