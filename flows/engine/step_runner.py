"""The ``run-step`` flow: what a work pool executes for one batch in distributed mode.

The pipeline flow writes a batch's rows as a payload on shared storage and runs this flow through
the pool's ``run-step-<pool>`` deployment. The flow reads the rows, builds the LM from *this*
worker's settings (LMs never travel between processes), runs the batch on an executor sized by the
pool's capacity, and writes the `tasks.batch.BatchResult` back under a deterministic name,
``results/<batch_key>``, with a small ``results/<batch_key>.ref.json`` sidecar, so the orchestrator
can read it by key whatever happened to the flow run's own result. The store is `flows.guards.resume`'s,
the one both executors use, so these results also serve later runs' resume.

It is idempotent: when the result for ``batch_key`` already exists (an earlier attempt finished but
its worker died before the orchestrator saw it), it is returned without running anything again, so a
re-dispatched batch contributes every row exactly once.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from pydantic import TypeAdapter

from dspex.exceptions import PipelineSpecError
from dspex.settings import Settings, get_settings
from flows.engine.spec import ModuleStep, RetrieveStep
from flows.guards.resume import RESULTS_PREFIX, read_batch_result, result_ref_uri, write_batch_result
from tasks import tracing
from tasks.batch import BatchResult
from tasks.payloads import PayloadRef, confine, read_rows

__all__ = [
    "RESULTS_PREFIX",
    "execute_step_batch",
    "parse_step",
    "read_batch_result",
    "result_ref_uri",
    "run_step",
    "write_batch_result",
]

_STEP = TypeAdapter(ModuleStep | RetrieveStep)


def parse_step(step: dict[str, Any]) -> ModuleStep | RetrieveStep:
    """The module or retrieve step a ``run-step`` parameter describes.

    Raises:
        PipelineSpecError: Not a module or retrieve step (the message says what is wrong).
    """
    kind = step.get("kind")
    if kind not in ("module", "retrieve"):
        raise PipelineSpecError(
            f"run-step runs module and retrieve steps, not kind {kind!r}", step=step.get("name")
        )
    model: type[ModuleStep | RetrieveStep] = ModuleStep if kind == "module" else RetrieveStep
    try:
        return model.model_validate(step)
    except ValueError as exc:  # pydantic's ValidationError: say which step, keep the details
        raise PipelineSpecError(f"invalid step for run-step: {exc}", step=step.get("name")) from exc


def execute_step_batch(
    step: ModuleStep | RetrieveStep,
    rows: list[dict[str, Any]],
    *,
    batch_key: str,
    pool: str,
    settings: Settings,
    lm: Any = None,
    timeout_s: float | None = None,
    trace_rows: frozenset[int] | None = None,
) -> BatchResult:
    """Run one batch of a module or retrieve step on this process's pool executor.

    It is `flows.engine.executors.run.run_batch`, the function local mode runs: the same row retries,
    breaker, rate limits and timeout, so a batch behaves the same wherever it runs.

    Args:
        step: The step.
        rows: The batch's rows.
        batch_key: The batch's identity across attempts (for logs).
        pool: The pool this worker serves (sizes the executor: the pool's capacity).
        settings: This worker's settings.
        lm: The LM for module steps (default: built from ``settings``).
        timeout_s: Longest the batch may take (the orchestrator's route decision).
        trace_rows: In a traced run, the rows to trace in full (the orchestrator's sample).
    """
    from flows.engine.executors.run import run_batch

    # A worker is one of several processes calling the provider: its rate limits are shared.
    return run_batch(
        step,
        rows,
        pool=pool,
        settings=settings,
        lm=lm,
        timeout_s=timeout_s,
        shared_limits=True,
        trace_rows=trace_rows,
    )


@flow(
    name="run-step",
    description="Run one batch of a pipeline step on this work pool (distributed mode).",
    validate_parameters=True,
    persist_result=False,  # the result travels by reference, under results/<batch_key>
)
def run_step(
    step: dict[str, Any],
    batch: PayloadRef,
    batch_key: str,
    pool: str = "general",
    timeout_s: float | None = None,
    trace_context: dict[str, str] | None = None,
) -> PayloadRef:
    """Run one batch of ``step`` over the rows ``batch`` refers to; store the result by key.

    Args:
        step: The module or retrieve step, as JSON (``step.model_dump(mode="json")``).
        batch: The batch's rows on shared storage.
        batch_key: The batch's identity; its result is stored under ``results/<batch_key>``.
        pool: The pool this deployment serves (sizes the executor).
        timeout_s: Longest the batch may take (rows cut off fail, rows not started are not attempted).
        trace_context: The orchestrator's W3C trace context: when this worker can export spans
            (``OTEL_EXPORTER_OTLP_ENDPOINT``), the batch's spans join the run's trace.

    Returns:
        The reference of the stored `BatchResult`.
    """
    logger = get_run_logger()
    settings = get_settings()
    # Its parameters come from whoever can create flow runs: every read it makes (an earlier result,
    # the batch, a step's corpus or saved state) stays inside the roots, however the flow was started.
    with confine.fenced():
        found = read_batch_result(batch_key)
        if found is not None:
            logger.info("batch %s already has a result (%s); not recomputing it", batch_key, found[0].uri)
            return found[0]
        parsed = parse_step(step)
        rows = read_rows(batch)
        logger.info("step %s: %d rows on pool %s (batch %s)", parsed.name, len(rows), pool, batch_key)
        with tracing.continue_trace(trace_context, settings) as trace_rows:
            result = execute_step_batch(
                parsed,
                rows,
                batch_key=batch_key,
                pool=pool,
                settings=settings,
                timeout_s=timeout_s,
                trace_rows=trace_rows,
            )
    ref = write_batch_result(result, batch_key)
    logger.info("batch %s done: %d failed of %d; result %s", batch_key, result.failed, len(rows), ref.uri)
    return ref
