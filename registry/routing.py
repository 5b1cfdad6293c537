"""Routing recommendations: which pool, how long to wait, whether to go native, what it costs.

The seed's rules are kept exactly: the timeout is the module's static duration times the size factor
(input_size > 10_000: 3.0, > 1_000: 1.5, else 1.0) times a 1.2 buffer, and ``prefer_native`` is
``native_available and optimize_latency``. The timeout deliberately rests on the static catalogue
value rather than a learned median: half of all runs take longer than a median, so a timeout built
on one would cut off healthy runs.

``estimated_cost`` is the expected pool occupancy in relative cost units: the (learned when known)
duration in seconds, for the context's input size, times the pool's weight in `POOL_COST_WEIGHTS`,
because an optimizer slot or an accelerator second is scarcer than a general worker second.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dspex.exceptions import RegistryQueryError
from registry.learning import DurationEstimate
from registry.models import ModuleInfo, PoolType
from registry.sizing import SizeBucket, size_bucket, timeout_factor

__all__ = [
    "POOL_COST_WEIGHTS",
    "TIMEOUT_BUFFER",
    "RoutingContext",
    "RoutingRecommendation",
    "context_bucket",
    "parse_context",
    "recommend",
]

#: The seed's safety margin on top of the size-scaled duration.
TIMEOUT_BUFFER = 1.2

#: Relative cost of one second of each pool (a general worker second is the unit).
POOL_COST_WEIGHTS: dict[PoolType, float] = {PoolType.GENERAL: 1.0, PoolType.OPTIMIZER: 4.0, PoolType.GPU: 8.0}


class RoutingContext(BaseModel):
    """What the router knows about the call it is routing.

    Attributes:
        input_size: The size of the input in the caller's units (characters, tokens, rows); ``None``
            when unknown (treated as small).
        optimize_latency: Whether the caller would rather take a native path when one exists.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_size: int | None = Field(default=None, ge=0, strict=True)
    optimize_latency: bool = False


class RoutingRecommendation(BaseModel):
    """Where and how to run one call of a module.

    Attributes:
        pool_type: The pool to send it to.
        timeout_ms: How long to wait before giving up.
        prefer_native: Whether to take the native implementation.
        estimated_cost: Expected pool occupancy in relative cost units (see `POOL_COST_WEIGHTS`).
        estimated_duration_ms: The duration estimate for the context's input size.
        estimate_source: Whether that estimate is ``static`` or ``learned``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    pool_type: PoolType
    timeout_ms: int = Field(ge=0)
    prefer_native: bool
    estimated_cost: float = Field(ge=0)
    estimated_duration_ms: int = Field(ge=0)
    estimate_source: Literal["static", "learned"]


_CONTEXT_KEYS = frozenset(RoutingContext.model_fields)


def parse_context(context: RoutingContext | Mapping[str, Any] | None) -> tuple[int | None, bool]:
    """Validate a routing context given as a model, a mapping or ``None``.

    Args:
        context: The context; a mapping may hold ``input_size`` and ``optimize_latency``.

    Returns:
        ``(input_size, optimize_latency)``.

    Raises:
        RegistryQueryError: An unknown key or a bad value; the message lists the valid keys.
    """
    if context is None:
        return None, False
    if isinstance(context, RoutingContext):
        return context.input_size, context.optimize_latency
    if type(context) is dict and context.keys() <= _CONTEXT_KEYS:
        # Fast path for the router's hot loop: a plain dict of well-typed values needs no pydantic
        # model; anything else is validated below, for a precise error.
        size = context.get("input_size")
        latency = context.get("optimize_latency", False)
        if (size is None or (type(size) is int and size >= 0)) and type(latency) is bool:
            return size, latency
    try:
        parsed = RoutingContext.model_validate(context)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        valid = ", ".join(RoutingContext.model_fields)
        raise RegistryQueryError(f"invalid routing context: {problems} (valid keys: {valid})") from error
    return parsed.input_size, parsed.optimize_latency


def context_bucket(input_size: int | None) -> SizeBucket:
    """The input-size bucket of a routing context's size (``normal`` when the size is unknown).

    Args:
        input_size: The validated size, or ``None``.
    """
    return "normal" if input_size is None else size_bucket(input_size)


def recommend(
    info: ModuleInfo, estimate: DurationEstimate, input_size: int | None, optimize_latency: bool
) -> RoutingRecommendation:
    """The routing recommendation for one module, given its duration estimate for the context.

    Args:
        info: The module's record.
        estimate: Its duration estimate for the context's input size.
        input_size: The context's validated input size.
        optimize_latency: The context's latency preference.
    """
    factor = timeout_factor(input_size)
    return _make(
        info.pool_type,
        round(info.estimated_duration_ms * factor * TIMEOUT_BUFFER),
        info.native_available and optimize_latency,
        round(estimate.ms / 1000.0 * POOL_COST_WEIGHTS[info.pool_type], 6),
        estimate.ms,
        estimate.source,
    )


@lru_cache(maxsize=8192)
def _make(
    pool_type: PoolType,
    timeout_ms: int,
    prefer_native: bool,
    estimated_cost: float,
    estimated_duration_ms: int,
    estimate_source: Literal["static", "learned"],
) -> RoutingRecommendation:
    # Recommendations are immutable values that repeat across snapshots; sharing them keeps the
    # first routing call after a registry write cheap.
    return RoutingRecommendation(
        pool_type=pool_type,
        timeout_ms=timeout_ms,
        prefer_native=prefer_native,
        estimated_cost=estimated_cost,
        estimated_duration_ms=estimated_duration_ms,
        estimate_source=estimate_source,
    )
