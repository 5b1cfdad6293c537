"""Expected duration, tokens and cost of a pipeline before it runs (``dspex estimate``).

The figures are the ones runs taught (`flows.engine.learning`: per-row tokens and cost by module and
LM model, learned batch latencies and provider batch waits).

`estimate_pipeline` answers ``dspex estimate``: for each module or retrieve step, the router's own
decision (pool, batches, estimated duration, static or learned) and the learned tokens and cost
per row times the rows. A step with no learned figures yet is estimated from a *sample*: the first
``sample_rows`` rows run through the pipeline for real (a short, paid run whose usage is learned
like any other), then the figures are read again.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dspex.settings import Settings
from flows.batch_api.estimates import expected_batch_wait
from flows.engine.learning import lm_model, routed_steps
from flows.engine.router import registry_name, route_step
from flows.pipeline import run_pipeline
from tasks.lm.batch_pricing import batch_rates

__all__ = [
    "PipelineEstimate",
    "StepEstimate",
    "estimate_pipeline",
]

logger = logging.getLogger("dspex.estimate")


class StepEstimate(BaseModel):
    """What one routed step is expected to take and cost."""

    model_config = ConfigDict(extra="forbid")

    step: str
    module: str
    pool: str
    rows: int
    batches: int
    duration_ms: float = Field(description="Expected wall time of the step.")
    duration_source: str = Field(description="static (catalogue) or learned (earlier runs).")
    prompt_tokens: float | None = Field(default=None, description="Expected prompt tokens of the step.")
    completion_tokens: float | None = Field(default=None, description="Expected completion tokens.")
    cost_usd: float | None = Field(default=None, description="Expected cost in USD; None when unknown.")
    usage_source: str = Field(description="learned (n batches), sampled, none (no LM) or unknown.")
    batch_cost_usd: float | None = Field(
        default=None, description="Expected cost through the provider's batch API (issue 21); None: unknown."
    )
    batch_wait_s: float | None = Field(
        default=None,
        description="Expected wait of one batch round, learned from earlier batch runs (None: none yet; "
        "the provider promises its completion window).",
    )


class PipelineEstimate(BaseModel):
    """Expected duration, tokens and cost of a whole run."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str
    rows: int
    model: str
    steps: list[StepEstimate]
    sampled_rows: int = Field(default=0, description="Rows run for real to learn figures that were missing.")
    duration_ms: float
    prompt_tokens: float | None
    completion_tokens: float | None
    cost_usd: float | None = Field(description="None when any step's cost is unknown.")
    batch_cost_usd: float | None = Field(
        default=None, description="Expected cost in batch mode (lm_batch); None when any step's is unknown."
    )
    batch_window: str = Field(default="24h", description="The completion window batch mode asks for.")


def _step_estimates(
    spec: Any, rows: int, settings: Settings, model: str, sampled: bool
) -> list[StepEstimate]:
    import registry

    estimates = []
    for step in routed_steps(spec.steps):
        decision = route_step(step, max(rows, 1), settings, lambda pool: (True, "estimate"))
        module = registry_name(step)
        prompt = completion = cost = None
        if step.kind == "retrieve":
            source = "none (no LM)"
            prompt, completion, cost = 0.0, 0.0, 0.0
        else:
            learned = registry.token_estimate(module, model)
            if learned is None:
                source = "unknown"
            else:
                source = "sampled" if sampled else f"learned ({learned.samples} batches)"
                prompt = learned.prompt_tokens * rows
                completion = learned.completion_tokens * rows
                cost = None if learned.cost_usd is None else learned.cost_usd * rows
        estimates.append(
            StepEstimate(
                step=str(step.name),
                module=module,
                pool=decision.pool,
                rows=rows,
                batches=decision.batches,
                duration_ms=round(decision.estimated_ms, 1),
                duration_source=decision.estimate_source,
                prompt_tokens=prompt,
                completion_tokens=completion,
                cost_usd=cost,
                usage_source=source,
                **_batch_figures(step, module, model, prompt, completion, settings),
            )
        )
    return estimates


def _batch_figures(
    step: Any, module: str, model: str, prompt: float | None, completion: float | None, settings: Settings
) -> dict[str, float | None]:
    """The step's expected cost and wait in batch mode (issue 21)."""

    if step.kind == "retrieve":
        return {"batch_cost_usd": 0.0, "batch_wait_s": None}
    rates = batch_rates(model, settings.lm_batch_discount)
    cost = None
    if rates is not None and prompt is not None and completion is not None:
        cost = prompt * rates[0] + completion * rates[1]
    return {"batch_cost_usd": cost, "batch_wait_s": expected_batch_wait(module, model)}


def _total(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def estimate_pipeline(
    spec: Any,
    rows: list[dict[str, Any]],
    *,
    settings: Settings,
    lm: Any = None,
    sample_rows: int = 5,
) -> PipelineEstimate:
    """Estimate a run of ``spec`` over ``rows`` (see the module docstring).

    Args:
        spec: The pipeline.
        rows: The data.
        settings: The effective settings.
        lm: The LM (default: the settings'); only its model name matters unless a sample runs.
        sample_rows: Rows to run for real when a module step has no learned usage (0: never sample).
    """
    model = lm_model(lm, settings) if lm is not None else settings.lm_model
    steps = _step_estimates(spec, len(rows), settings, model, sampled=False)
    sampled = 0
    if sample_rows > 0 and rows and any(s.usage_source == "unknown" for s in steps):
        sample = [dict(row) for row in rows[:sample_rows]]
        logger.info("no learned usage for some steps: running a sample of %d row(s) to learn it", len(sample))
        run_pipeline(spec, data=sample, lm=lm, mode="local", continue_on_error=True)
        sampled = len(sample)
        steps = [
            s if s.usage_source != "unknown" else new
            for s, new in zip(
                steps, _step_estimates(spec, len(rows), settings, model, sampled=True), strict=True
            )
        ]
    return PipelineEstimate(
        pipeline=spec.name,
        rows=len(rows),
        model=model,
        steps=steps,
        sampled_rows=sampled,
        duration_ms=round(sum(s.duration_ms for s in steps), 1),
        prompt_tokens=_total([s.prompt_tokens for s in steps]),
        completion_tokens=_total([s.completion_tokens for s in steps]),
        cost_usd=_total([s.cost_usd for s in steps]),
        batch_cost_usd=_total([s.batch_cost_usd for s in steps]),
        batch_window=settings.lm_batch_completion_window,
    )
