"""Flows whose parameters are safe to store: no API keys, no bulk data in the run's record.

Prefect stores every flow run's parameters in its database (JSON, via ``jsonable_encoder``, which
walks arbitrary objects' attributes). A ``dspy.LM`` carries its API key, and a DataFrame of 100k rows
is no parameter. `SafeParamsFlow` stores an LM as its public description and bulk data as a short
summary; PayloadRefs, specs and scalars are stored as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from prefect import Flow

__all__ = ["SafeParamsFlow", "safe_flow", "summarize_parameter"]

_MAX_INLINE_ROWS = 20


def summarize_parameter(value: Any) -> Any:
    """What to store for one parameter value (None: store it as Prefect would)."""
    import dspy

    if isinstance(value, dspy.BaseLM):
        from tasks.lm import describe_lm

        return {"lm": describe_lm(value)}
    if isinstance(value, list) and len(value) > _MAX_INLINE_ROWS:
        sample = value[0] if value else None
        columns = sorted(sample) if isinstance(sample, dict) else None
        return {"rows": len(value), "columns": columns, "stored": "summary only (by-value data)"}
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # DataFrame
        return {"rows": len(value), "columns": [str(c) for c in value.columns], "stored": "summary only"}
    return None


class SafeParamsFlow(Flow):
    """A Prefect flow that never stores secrets or bulk data as run parameters."""

    def serialize_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        safe = dict(parameters)
        replaced = {}
        for key, value in parameters.items():
            summary = summarize_parameter(value)
            if summary is not None:
                replaced[key] = summary
                safe.pop(key)
        serialized = super().serialize_parameters(safe)
        serialized.update(replaced)
        return serialized


P = ParamSpec("P")
R = TypeVar("R")


def safe_flow(**options: Any) -> Callable[[Callable[P, R]], Flow[P, R]]:
    """Like ``@prefect.flow(...)``, building a `SafeParamsFlow`."""

    def decorate(fn: Callable[P, R]) -> Flow[P, R]:
        return SafeParamsFlow(fn, **options)

    return decorate
