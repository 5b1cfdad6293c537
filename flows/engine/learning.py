"""What each step's runs teach: per-row tokens and cost learned by module and LM model.

After each routed step the engine calls `learn_usage`: every finished batch adds one per-row sample
of prompt tokens, completion tokens and cost to the registry (`registry.record_tokens`, keyed by
module and LM model), the way batch latencies feed the duration estimates. `expected_usage` reads
them back (the step record's estimate), and `prior_cost_per_row` gives a cost budget its first
expected cost per row. `flows.estimate` builds ``dspex estimate`` on the same figures.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dspex.settings import Settings
from flows.engine.router import registry_name
from flows.engine.spec import iter_steps
from tasks.batch import BatchResult

__all__ = ["expected_usage", "learn_usage", "lm_model", "prior_cost_per_row", "routed_steps"]


def lm_model(lm: Any, settings: Settings | None = None) -> str:
    """The model name usage is learned under: the LM's, else the settings'."""
    model = getattr(lm, "model", None)
    if isinstance(model, str) and model:
        return model
    return settings.lm_model if settings is not None else type(lm).__name__


def learn_usage(module: str, model: str, results: Iterable[BatchResult | BaseException]) -> int:
    """Record each finished batch's per-row tokens and cost in the registry; returns samples recorded.

    Rows that were reused or not attempted cost nothing and are not counted.

    Args:
        module: The registry name of the step's module.
        model: The LM model the step called.
        results: The step's batch results (exceptions are skipped).
    """
    import registry

    recorded = 0
    for result in results:
        if not isinstance(result, BatchResult) or not result.usage.requests:
            continue
        ran = len(result.errors) - result.not_attempted - result.reused
        if ran <= 0:
            continue
        usage = result.usage
        cost = usage.cost_usd / ran if usage.cost_usd is not None and usage.cost_known else None
        registry.record_tokens(
            module,
            model,
            prompt_tokens=usage.prompt_tokens / ran,
            completion_tokens=usage.completion_tokens / ran,
            cost_usd=cost,
        )
        recorded += 1
    return recorded


def expected_usage(module: str, model: str, rows: int) -> tuple[float | None, float | None]:
    """Tokens (prompt + completion) and cost that ``rows`` rows of ``module`` on ``model`` are expected
    to take, from the learned figures; (None, None) when none are learned (cost None when unpriced)."""
    import registry

    try:
        learned = registry.token_estimate(module, model)
    except Exception:  # an unknown module has no figures; an estimate must never fail a run
        return None, None
    if learned is None:
        return None, None
    tokens = round((learned.prompt_tokens + learned.completion_tokens) * rows, 1)
    return tokens, None if learned.cost_usd is None else learned.cost_usd * rows


def routed_steps(steps: list[Any]) -> list[Any]:

    return [s for s in iter_steps(steps) if s.kind in ("module", "retrieve")]


def prior_cost_per_row(spec: Any, model: str) -> float | None:
    """The learned cost of one row through every module step of ``spec`` (None when any is unknown)."""
    import registry

    total = 0.0
    for step in routed_steps(spec.steps):
        if step.kind != "module":
            continue
        learned = registry.token_estimate(registry_name(step), model)
        if learned is None or learned.cost_usd is None:
            return None
        total += learned.cost_usd
    return total
