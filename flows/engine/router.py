"""The router: for each step, which pool, what timeout, what batch size, and why.

The decision is the same in local and distributed mode; only the executor differs. It rests on the
registry: the pool it names for the module (or the step's explicit ``pool``), its routing
recommendation (timeout), and its duration estimate per example (static, or learned from earlier
runs). When the chosen pool cannot take work, the fallback policy (``DSPEX_FALLBACK_POLICY``)
either reroutes to the general pool, saying so, or fails fast with `PoolUnavailableError`.

Batch size (`plan_batch_size`): a batch should take about ``target_batch_seconds`` on its pool, so
per-batch overhead (a Prefect task run locally, a flow-run dispatch when distributed) stays small
against the work; at least one full wave of the pool's capacity, and at most
``MAX_BATCHES_PER_CAPACITY`` batches per unit of capacity so a badly over-estimated module does not
explode into thousands of task runs. Then three caps, so a learned (small) estimate cannot put a
whole dataset in one batch (issue 26: 12,000 rows went as 1 batch to one worker while another
idled, and a kill cost all of it): at least one batch per *slot* (a live worker of the pool when
distributed, the pool itself locally), at most ``batch_max_rows`` rows, and at most
``batch_max_seconds`` of expected work per batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dspex.exceptions import PoolUnavailableError
from dspex.settings import Settings

__all__ = [
    "MAX_BATCHES_PER_CAPACITY",
    "RouteDecision",
    "fallback_pool",
    "plan_batch_size",
    "registry_name",
    "route_step",
]

MAX_BATCHES_PER_CAPACITY = 4

Availability = Callable[[str], tuple[bool, str]]


class RouteDecision(BaseModel):
    """Where one step runs, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: str
    module: str = Field(description="The registry name the decision rests on.")
    pool: str = Field(description="The pool that runs the step.")
    requested_pool: str = Field(description="The pool the registry (or the step) asked for.")
    reason: str = Field(description="Why, in one line (logged and recorded in the artifact).")
    timeout_s: float = Field(description="Timeout of one batch.")
    batch_size: int
    batches: int
    capacity: int
    slots: int = Field(
        default=1, description="Batches the pool runs side by side (live workers when distributed)."
    )
    per_example_ms: float = Field(description="Estimated duration of one example.")
    estimate_source: Literal["static", "learned"]
    estimated_ms: float = Field(description="Estimated wall time of the whole step.")


def registry_name(step: Any) -> str:
    """The registry entry a routed step rests on."""
    if step.kind == "retrieve":
        return "dspy.ColBERTv2" if step.backend == "colbertv2" else "dspy.Embeddings"
    return str(step.module)


def fallback_pool(pool: str, why: str, settings: Settings, availability: Availability) -> str:
    """The pool to use instead of ``pool``, which cannot take work (``why``), under the fallback policy.

    The one implementation of ``DSPEX_FALLBACK_POLICY``: the router (before a step starts), the
    remote executor (a batch no worker picked up) and the evaluate flow all call it.

    Raises:
        PoolUnavailableError: The policy is ``fail``, ``pool`` is already ``general``, or the general
            pool cannot take work either.
    """
    if settings.fallback_policy == "fail" or pool == "general":
        raise PoolUnavailableError(pool, why)
    ok_general, why_general = availability("general")
    if not ok_general:
        raise PoolUnavailableError(pool, f"{why}; fallback pool 'general' too: {why_general}")
    return "general"


def route_step(
    step: Any,
    rows: int,
    settings: Settings,
    availability: Availability,
    *,
    optimize_latency: bool = False,
    input_size: int | None = None,
    slots: Callable[[str], int] | None = None,
) -> RouteDecision:
    """Decide where ``step`` runs for ``rows`` rows.

    Args:
        step: A module or retrieve step.
        rows: How many rows it will process.
        settings: The effective settings (capacities, batch sizing, fallback policy).
        availability: Tells whether a pool can take work now, and why not.
        optimize_latency: Passed to the registry's recommendation (native preference).
        input_size: The size of one row's inputs in characters, when known (the registry's
            ``input_size`` is per call: it scales the per-call timeout, so the row count must not).
        slots: How many batches a pool runs side by side (the executor's `slots`: live workers when
            distributed); default 1.

    Raises:
        PoolUnavailableError: The pool cannot take work and the policy is ``fail`` (or the general
            pool cannot either).
    """
    import registry

    name = registry_name(step)
    recommendation = registry.routing_recommendation(
        name, {"input_size": input_size, "optimize_latency": optimize_latency}
    )
    requested = str(getattr(step, "pool", None) or recommendation.pool_type)
    pool, reason = (
        requested,
        (
            f"step sets pool {requested!r}"
            if getattr(step, "pool", None)
            else f"registry: {name} -> {requested}"
        ),
    )
    ok, why = availability(pool)
    if not ok:
        pool = fallback_pool(pool, why, settings, availability)
        reason = f"fallback: pool {requested!r} unavailable ({why}) -> {pool!r}"

    estimate = registry.estimate(name, pool=pool)
    per_example = max(float(estimate.ms), 0.001)
    capacity = max(settings.pool_capacity(pool), 1)
    pool_slots = max(slots(pool), 1) if slots is not None else 1
    batch_size = _batch_size(step, rows, per_example, capacity, pool_slots, settings)
    batches = max(math.ceil(rows / batch_size), 1) if rows else 0
    waves = math.ceil(rows / capacity) if rows else 0
    # A batch's timeout: its share of waves at the per-call timeout, with the LM request timeout
    # (times DSPy's own retries) as a floor, since the static catalogue value knows no real LM.
    per_call_s = max(
        recommendation.timeout_ms / 1000, settings.lm_timeout_seconds * (settings.lm_num_retries + 1)
    )
    timeout_s = per_call_s * max(math.ceil(batch_size / capacity), 1) * 1.5
    return RouteDecision(
        step=step.name,
        module=name,
        pool=pool,
        requested_pool=requested,
        reason=reason,
        timeout_s=timeout_s,
        batch_size=batch_size,
        batches=batches,
        capacity=capacity,
        slots=pool_slots,
        per_example_ms=per_example,
        estimate_source=estimate.source,
        estimated_ms=per_example * waves
        if step.kind == "module"
        else per_example * rows / min(capacity, max(batches, 1)),
    )


def _batch_size(
    step: Any, rows: int, per_example_ms: float, capacity: int, slots: int, settings: Settings
) -> int:
    explicit = getattr(step, "batch_size", None) or settings.batch_size
    if explicit:
        return int(explicit)
    return plan_batch_size(
        rows,
        per_example_ms,
        capacity,
        slots=slots,
        target_seconds=settings.target_batch_seconds * (10 if settings.mode == "distributed" else 1),
        max_rows=settings.batch_max_rows,
        max_seconds=settings.batch_max_seconds,
    )


def plan_batch_size(
    rows: int,
    per_example_ms: float,
    capacity: int,
    *,
    slots: int = 1,
    target_seconds: float = 2.0,
    max_rows: int = 1000,
    max_seconds: float = 60.0,
) -> int:
    """Rows per batch for a step of ``rows`` rows (see the module docstring).

    Args:
        rows: Rows the step will run.
        per_example_ms: Estimated duration of one row (static or learned).
        capacity: Rows one slot runs at once (the pool's capacity).
        slots: Batches that run side by side (live workers of the pool when distributed).
        target_seconds: The time a batch should take, so per-batch overhead stays small.
        max_rows: Most rows in one batch.
        max_seconds: Most expected work in one batch, in seconds.

    Returns:
        The batch size, between 1 and ``rows``.
    """
    if rows <= 0:
        return 1
    per_example_ms = max(per_example_ms, 0.001)
    capacity, slots = max(capacity, 1), max(slots, 1)
    by_target = int(target_seconds * 1000 * capacity / per_example_ms)
    floor = max(capacity, math.ceil(rows / (MAX_BATCHES_PER_CAPACITY * capacity)))
    size = max(by_target, floor)
    # The caps win over the floors: a lost batch must cost little, and every slot gets work.
    by_seconds = max(int(max_seconds * 1000 * capacity / per_example_ms), 1)
    size = min(size, by_seconds, max_rows, math.ceil(rows / slots))
    return max(min(size, rows), 1)
