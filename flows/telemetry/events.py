"""DSPex's Prefect events: the one place that names, builds and emits them.

Every event is named under ``dspex.`` and is cheap by construction: it is emitted per step, per
batch or per run, never per row. Each one names a primary resource (the step, the pool, the
pipeline, a health check) and related resources: the Prefect flow run it happened in, the DSPex
pool, the LM and the pipeline. Prefect's events worker adds the flow, deployment, work queue,
work pool and tags of the surrounding run on its own, so an automation can match on any of them.

=========================  ===================================  ===========================
event                      primary resource                     emitted by
=========================  ===================================  ===========================
``dspex.step.routed``      ``dspex.step.<step>``                the engine, per routed step
``dspex.pool.fallback``    ``dspex.pool.<requested pool>``      the engine, per step
``dspex.batch.retried``    ``dspex.step.<step>``                the engine, per batch whose rows were retried
``dspex.breaker.opened``   ``dspex.endpoint.<LM endpoint>``     the circuit breaker (a listener)
``dspex.breaker.closed``   ``dspex.endpoint.<LM endpoint>``     the circuit breaker (a listener)
``dspex.budget.exceeded``  ``dspex.pipeline.<pipeline>``        the budget guard
``dspex.estimate.drift``   ``dspex.step.<step>``                the engine (actual > factor x estimate)
``dspex.run.summary``      ``dspex.pipeline.<pipeline>``        the ``run-pipeline`` flow
``dspex.health.failed``    ``dspex.health``                     the ``health`` flow
=========================  ===================================  ===========================

When no Prefect API is reachable from here (no flow or task run, no ``PREFECT_API_URL``) or
``DSPEX_EVENTS_ENABLED`` is false, every function returns ``None`` after a couple of attribute
reads: nothing is built, and no server is started just to receive an event.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect.events.schemas.events import Event

__all__ = [
    "EVENT_NAMES",
    "RunScope",
    "batch_retried",
    "batches_retried",
    "breaker_closed",
    "breaker_listener",
    "breaker_opened",
    "budget_exceeded",
    "emit",
    "estimate_drift",
    "events_active",
    "health_failed",
    "pool_fallback",
    "run_scope",
    "run_summary",
    "step_decided",
    "step_routed",
]

logger = logging.getLogger(__name__)

#: Every event name DSPex emits (automations and tests refer to these).
EVENT_NAMES = (
    "dspex.step.routed",
    "dspex.pool.fallback",
    "dspex.batch.retried",
    "dspex.breaker.opened",
    "dspex.breaker.closed",
    "dspex.budget.exceeded",
    "dspex.estimate.drift",
    "dspex.run.summary",
    "dspex.health.failed",
)

_MESSAGE_MAX = 300  # error messages in payloads are cut: an event is a signal, not a log


@dataclass(frozen=True)
class RunScope:
    """What every event of one pipeline run shares (set by the flow, read by the engine's threads).

    Attributes:
        pipeline: The pipeline's name.
        lm_model: The LM's model name (never a key), or None.
        enabled: Whether events are on for this run (``DSPEX_EVENTS_ENABLED``).
        drift_factor: Actual over estimated duration above which a step emits a drift event.
    """

    pipeline: str | None = None
    lm_model: str | None = None
    enabled: bool = True
    drift_factor: float = 2.0


_SCOPE: ContextVar[RunScope | None] = ContextVar("dspex_event_scope", default=None)


@contextlib.contextmanager
def run_scope(
    pipeline: str | None, lm_model: str | None = None, *, settings: Any = None
) -> Iterator[RunScope]:
    """Set the pipeline and LM that the events emitted inside this block relate to.

    Context variables follow Prefect task runs and the engine's threads (both copy the context),
    so events from batches carry the same scope.

    Args:
        pipeline: The pipeline's name.
        lm_model: The LM's model name.
        settings: The effective `Settings` (default: read from the environment once).
    """
    if settings is None:
        from dspex.settings import get_settings

        settings = get_settings()
    scope = RunScope(
        pipeline=pipeline,
        lm_model=lm_model,
        enabled=settings.events_enabled,
        drift_factor=settings.estimate_drift_factor,
    )
    if scope.enabled:
        from flows.guards.circuit import add_listener

        add_listener(breaker_listener)  # idempotent: the breaker keeps one entry per listener
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(token)


def _scope() -> RunScope:
    scope = _SCOPE.get()
    if scope is not None:
        return scope
    from dspex.settings import get_settings

    settings = get_settings()
    return RunScope(enabled=settings.events_enabled, drift_factor=settings.estimate_drift_factor)


def _flow_run() -> tuple[str, str | None] | None:
    """The id and name of the Prefect flow run we are in (from a flow or a task run), if any."""
    from prefect.context import FlowRunContext, TaskRunContext

    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        return str(flow_ctx.flow_run.id), flow_ctx.flow_run.name
    task_ctx = TaskRunContext.get()
    if task_ctx is not None and task_ctx.task_run.flow_run_id is not None:
        return str(task_ctx.task_run.flow_run_id), None
    return None


def events_active() -> bool:
    """Whether an event emitted now would go anywhere: events are enabled, and a Prefect API is
    reachable (we are inside a flow or task run, or ``PREFECT_API_URL`` is set)."""
    if not _scope().enabled:
        return False
    if _flow_run() is not None:
        return True
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def emit(
    event: str,
    resource: Mapping[str, str],
    *,
    related: Sequence[Mapping[str, str]] = (),
    payload: Mapping[str, Any] | None = None,
    pool: str | None = None,
) -> Event | None:
    """Emit one ``dspex.*`` event, related to the current flow run, pipeline, LM and ``pool``.

    Emission never fails the caller: an event that cannot be built or sent is logged and dropped,
    since telemetry must not cost a run its results.

    Args:
        event: The event name; must start with ``dspex.``.
        resource: Labels of the primary resource (``prefect.resource.id`` at least).
        related: Extra related resources (each with ``prefect.resource.id`` and ``.role``).
        payload: JSON-able details; keep it small.
        pool: The DSPex pool involved, added as a related resource.

    Returns:
        The event as sent, or None when events are off or no API is reachable.

    Raises:
        ValueError: ``event`` is not under ``dspex.`` (a programming error, raised even when off).
    """
    if not event.startswith("dspex."):
        raise ValueError(f"DSPex event names start with 'dspex.', got {event!r}")
    if not events_active():
        return None
    from prefect.events import emit_event

    scope = _scope()
    links: list[dict[str, str]] = []
    flow_run = _flow_run()
    if flow_run is not None:
        run_id, run_name = flow_run
        link = {"prefect.resource.id": f"prefect.flow-run.{run_id}", "prefect.resource.role": "flow-run"}
        if run_name:
            link["prefect.resource.name"] = run_name
        links.append(link)
    if scope.pipeline:
        links.append(_resource("pipeline", scope.pipeline, role="pipeline"))
    if pool:
        links.append(_resource("pool", pool, role="pool"))
    if scope.lm_model:
        links.append(_resource("lm", scope.lm_model, role="lm"))
    links.extend(dict(r) for r in related)
    seen = {resource.get("prefect.resource.id")}
    unique = []
    for link in links:
        if link["prefect.resource.id"] not in seen:
            seen.add(link["prefect.resource.id"])
            unique.append(link)
    from dspex.redact import redact_data  # events are stored in Prefect's database: no credentials

    try:
        return emit_event(
            event,
            resource=redact_data(dict(resource)),
            related=redact_data(unique),
            payload=redact_data(dict(payload or {})),
        )
    except Exception as exc:  # telemetry never breaks a run (EventTooLarge, a bad label)
        logger.warning("could not emit event %s: %s: %s", event, type(exc).__name__, exc)
        return None


def _resource(kind: str, name: str, *, role: str | None = None, **labels: str) -> dict[str, str]:
    out = {"prefect.resource.id": f"dspex.{kind}.{name}", "prefect.resource.name": name, **labels}
    if role is not None:
        out["prefect.resource.role"] = role
    return out


def _step_resource(step: str) -> dict[str, str]:
    scope = _scope()
    labels = {"dspex.pipeline": scope.pipeline} if scope.pipeline else {}
    return _resource("step", step, **labels)


def _short(message: str) -> str:
    from dspex.redact import redact  # events are stored in Prefect's database: no credentials

    message = redact(message)
    return message if len(message) <= _MESSAGE_MAX else message[: _MESSAGE_MAX - 1] + "…"


# --- the events ---------------------------------------------------------------------------------


def step_routed(
    step: str,
    *,
    module: str,
    pool: str,
    requested_pool: str,
    reason: str,
    rows: int,
    batches: int,
    batch_size: int,
    estimated_ms: float | None = None,
    estimate_source: str | None = None,
) -> Event | None:
    """A routed step was sent to its pool (once per step)."""
    if not events_active():
        return None
    return emit(
        "dspex.step.routed",
        _step_resource(step),
        pool=pool,
        payload={
            "module": module,
            "pool": pool,
            "requested_pool": requested_pool,
            "reason": reason,
            "rows": rows,
            "batches": batches,
            "batch_size": batch_size,
            "estimated_ms": estimated_ms,
            "estimate_source": estimate_source,
        },
    )


def pool_fallback(step: str, *, requested_pool: str, pool: str, reason: str) -> Event | None:
    """A step's pool could not take work and the step was rerouted (once per step)."""
    if not events_active():
        return None
    return emit(
        "dspex.pool.fallback",
        _resource("pool", requested_pool),
        pool=pool,
        related=[_step_resource(step) | {"prefect.resource.role": "step"}],
        payload={"step": step, "requested_pool": requested_pool, "pool": pool, "reason": _short(reason)},
    )


def batch_retried(
    step: str, *, pool: str, batch: int, attempt: int, error_type: str, message: str
) -> Event | None:
    """A failed batch is being retried (once per retry of a batch, never per row)."""
    if not events_active():
        return None
    return emit(
        "dspex.batch.retried",
        _step_resource(step),
        pool=pool,
        payload={
            "batch": batch,
            "attempt": attempt,
            "error_type": error_type,
            "message": _short(message),
        },
    )


def breaker_opened(endpoint: str, *, failures: int, reset_seconds: float, reason: str = "") -> Event | None:
    """An LM endpoint's circuit breaker opened: no new LM work goes to it for ``reset_seconds``.

    Args:
        endpoint: The endpoint the breaker guards (model and API base; credentials are masked).
        failures: Consecutive transport failures that opened it.
        reset_seconds: How long it stays open before one probe batch is let through.
        reason: What happened, in a few words.
    """
    if not events_active():
        return None
    from dspex.redact import redact

    name = redact(endpoint)
    return emit(
        "dspex.breaker.opened",
        _resource("endpoint", name),
        payload={
            "endpoint": name,
            "failures": failures,
            "reset_seconds": reset_seconds,
            "reason": _short(reason),
        },
    )


def breaker_closed(endpoint: str) -> Event | None:
    """An LM endpoint's circuit breaker closed again (a probe batch succeeded)."""
    if not events_active():
        return None
    from dspex.redact import redact

    name = redact(endpoint)
    return emit("dspex.breaker.closed", _resource("endpoint", name), payload={"endpoint": name})


def breaker_listener(endpoint: str, old: str, new: str) -> None:
    """A `flows.guards.circuit` listener: emit ``dspex.breaker.opened`` / ``.closed`` on state changes
    (the thread that changed the state carries the run's context, so the event relates to its run)."""
    if new == "open":
        from flows.guards.circuit import breaker_for

        breaker = breaker_for(endpoint)
        breaker_opened(
            endpoint,
            failures=breaker.failure_threshold,
            reset_seconds=breaker.reset_seconds,
            reason=f"{breaker.failure_threshold} consecutive transport failures ({old} -> open)",
        )
    elif new == "closed" and old != "closed":
        breaker_closed(endpoint)


def budget_exceeded(
    budget: str, *, limit: float, used: float, action: str = "stopped", pipeline: str | None = None
) -> Event | None:
    """A run's budget (tokens, cost, requests, wall time) was exceeded.

    Args:
        budget: Which budget (e.g. ``"tokens"``, ``"cost_usd"``).
        limit: Its limit.
        used: What was used when it tripped.
        action: What the run did about it (e.g. ``"stopped"``).
        pipeline: The pipeline (default: the current run scope's).
    """
    if not events_active():
        return None
    name = pipeline or _scope().pipeline or "unknown"
    return emit(
        "dspex.budget.exceeded",
        _resource("pipeline", name),
        payload={"budget": budget, "limit": limit, "used": used, "action": action},
    )


def estimate_drift(
    step: str, *, module: str, pool: str, estimated_ms: float | None, actual_ms: float
) -> Event | None:
    """Emit ``dspex.estimate.drift`` when a step took more than the drift factor times its estimate.

    Returns:
        The event, or None when there was no drift (or events are off).
    """
    if not estimated_ms or estimated_ms <= 0:
        return None
    scope = _scope()
    ratio = actual_ms / estimated_ms
    if ratio <= scope.drift_factor or not events_active():
        return None
    return emit(
        "dspex.estimate.drift",
        _step_resource(step),
        pool=pool,
        payload={
            "module": module,
            "pool": pool,
            "estimated_ms": round(estimated_ms, 1),
            "actual_ms": round(actual_ms, 1),
            "ratio": round(ratio, 2),
            "factor": scope.drift_factor,
        },
    )


def run_summary(summary: Any) -> Event | None:
    """A pipeline run ended: rows, failures, tokens, cost, wall time and throughput.

    Args:
        summary: The run's `flows.pipeline.PipelineSummary`; its headline figures become the payload
            (not the failure list or per-step records, which live in the run's artifacts).
    """
    if not events_active():
        return None
    payload: dict[str, Any] = {
        "pipeline": summary.pipeline,
        "mode": summary.mode,
        "rows_in": summary.rows_in,
        "rows_out": summary.rows_out,
        "failed": summary.failed,
        "wall_ms": round(summary.wall_ms, 1),
    }
    run_metrics = getattr(summary, "metrics", None)
    if run_metrics is not None:
        payload |= {
            "rows_per_s": run_metrics.rows_per_s,
            "error_rate": run_metrics.error_rate,
            "peak_rss_mb": run_metrics.peak_rss_mb,
        }
    usage = getattr(summary, "usage", None)
    if usage is not None and hasattr(usage, "model_dump"):
        figures = usage.model_dump(mode="json")
        payload |= {
            k: v for k, v in figures.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
    return emit("dspex.run.summary", _resource("pipeline", summary.pipeline), payload=payload)


def health_failed(failed: Sequence[Mapping[str, Any]], *, total: int) -> Event | None:
    """One or more health checks failed (``failed``: each check's name, status and detail)."""
    if not events_active():
        return None
    names = ",".join(str(c.get("name")) for c in failed)
    return emit(
        "dspex.health.failed",
        {
            "prefect.resource.id": "dspex.health",
            "prefect.resource.name": "dspex health",
            "dspex.failed": names,
        },
        payload={"failed": [dict(c) for c in failed], "checks": total},
    )


# --- what the engine calls ------------------------------------------------------------------------


def step_decided(decision: Any, rows: int) -> None:
    """The router decided where a step runs: emit ``dspex.step.routed``, and ``dspex.pool.fallback``
    when the decision moved the step off the pool it asked for.

    Args:
        decision: The router's `flows.engine.router.RouteDecision`.
        rows: Rows the step will process.
    """
    if not events_active():
        return
    step_routed(
        decision.step,
        module=decision.module,
        pool=decision.pool,
        requested_pool=decision.requested_pool,
        reason=decision.reason,
        rows=rows,
        batches=decision.batches,
        batch_size=decision.batch_size,
        estimated_ms=round(decision.estimated_ms, 1),
        estimate_source=decision.estimate_source,
    )
    if decision.pool != decision.requested_pool:
        pool_fallback(
            decision.step, requested_pool=decision.requested_pool, pool=decision.pool, reason=decision.reason
        )


def batches_retried(step: str | None, results: Sequence[Any]) -> None:
    """Emit ``dspex.batch.retried`` for each finished batch whose rows needed more than one try
    (rows are retried inside their batch; one event per such batch, never per row).

    Args:
        step: The step's name.
        results: The step's batch results (`tasks.batch.BatchResult`; exceptions are skipped).
    """
    if not events_active():
        return
    for index, result in enumerate(results):
        attempts = getattr(result, "attempts", 1) or 1
        if attempts <= 1:
            continue
        errors = [e for e in getattr(result, "errors", []) if e is not None]
        batch_retried(
            str(step),
            pool=getattr(result, "pool", "") or "unknown",
            batch=index,
            attempt=attempts,
            error_type=errors[0].type if errors else "",
            message=f"rows needed up to {attempts} tries; {len(errors)} row(s) still failed",
        )
