"""What a pipeline run needs to stop early and resume: its stop flag, resume store and cost budget.

`attach` gives an `flows.engine.context.EngineContext` the run's `flows.guards.interrupts.RunStop`, its
`flows.guards.resume.ResumeStore` and, when a budget is set, its `flows.guards.budget.CostBudget`.
`mark_unreached` marks the rows a stopped run never took through every step, and `stopped_error`
says why a run stopped, as the typed error the caller gets (the flow run ends Cancelled for a
signal, Failed for a budget).
"""

from __future__ import annotations

from typing import Any

from prefect.runtime import flow_run

from dspex.exceptions import BudgetExceededError, RunInterruptedError, RunStoppedError
from dspex.settings import Settings
from flows.engine.learning import prior_cost_per_row
from flows.guards import crashed
from flows.guards.budget import CostBudget
from flows.guards.interrupts import RunStop
from flows.guards.resume import ResumeStore
from tasks.rows import ERROR_FIELD

__all__ = ["attach", "mark_unreached", "stopped_error"]


def _run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id or "")


def _track_crashes(settings: Settings) -> None:
    """Mark earlier runs whose process died as Crashed, and record this one (issue 25)."""
    crashed.mark_dead_runs_crashed(settings)
    ids = [flow_run.id]
    if not flow_run.parent_deployment_id:  # its parents run in this process too (not dispatched here)
        ids += [flow_run.parent_flow_run_id, flow_run.root_flow_run_id]
    crashed.record_run(settings, [str(i or "") for i in ids])


def attach(
    ctx: Any,
    spec: Any,
    settings: Settings,
    *,
    resume: bool | None = None,
    max_cost_usd: float | None = None,
) -> None:
    """Give ``ctx`` the run's stop flag, resume store and (when there is a budget) cost budget.

    Args:
        ctx: The run's `flows.engine.context.EngineContext` (its ``lm_key`` is set).
        spec: The pipeline (its module steps give the budget its expected cost per row).
        settings: The effective settings (grace period, resume and budget defaults).
        resume: Reuse rows earlier runs completed (default ``settings.resume``).
        max_cost_usd: The budget in USD (default ``settings.max_cost_usd``; None: no budget).
    """
    reuse = settings.resume if resume is None else resume
    _track_crashes(settings)
    ctx.halt = RunStop(settings.interrupt_grace_seconds)
    ctx.resume = ResumeStore(ctx.lm_key, settings.resolved_payload_url, reuse=reuse, salt=_run_id())
    budget = settings.max_cost_usd if max_cost_usd is None else max_cost_usd
    if budget is not None:
        ctx.budget = CostBudget(budget, prior_cost_per_row(spec, str(getattr(ctx.lm, "model", ""))))


def mark_unreached(steps: list[Any], rows: list[dict[str, Any]], ctx: Any) -> int:
    """After a stopped run: mark rows that never went through every step as *not attempted*.

    Rows the engine already marked (failed, or not attempted inside a step) keep their error.

    Returns:
        How many rows were marked.
    """
    if not ctx.stopping():
        return 0
    recorded = {r.step for r in ctx.records}
    pending = [s for s in steps if s.name not in recorded]
    if not pending:
        return 0
    reason = (ctx.halt.reason if ctx.halt is not None else None) or "the run stopped"
    marked = 0
    for row in rows:
        if ERROR_FIELD not in row:
            row[ERROR_FIELD] = {
                "step": pending[0].name,
                "type": "NotAttempted",
                "message": reason,
                "retryable": True,
                "not_attempted": True,
            }
            marked += 1
    return marked


def stopped_error(ctx: Any, summary: Any, output: Any) -> RunStoppedError | None:
    """The typed error of a run stopped by a signal or its budget, or None when it was not.

    Args:
        ctx: The run's engine context.
        summary: The run's `flows.pipeline.PipelineSummary` (already written).
        output: The `PayloadRef` of the partial output.
    """
    halt = ctx.halt
    budget = ctx.budget
    common: dict[str, Any] = {
        "completed": summary.rows_out,
        "not_attempted": summary.not_attempted,
        "partial_ref": output.model_dump(mode="json"),
        "summary": summary.model_dump(mode="json"),
    }
    kept = (
        f"{summary.rows_out} completed row(s) kept in {output.uri}; {summary.not_attempted} not attempted "
        "(a re-run resumes them)"
    )
    if halt is not None and halt.interrupted:
        return RunInterruptedError(f"{halt.reason}; {kept}", signal=halt.signal or "", **common)
    if budget is not None and budget.exhausted:
        return BudgetExceededError(
            f"{budget.reason}; {kept}",
            max_cost_usd=budget.max_cost_usd,
            spent_usd=budget.spent_usd,
            **common,
        )
    return None
