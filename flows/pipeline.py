"""The ``run-pipeline`` flow: run a `PipelineSpec` over data, with duration artifacts.

Call it from Python (``run_pipeline(spec, data=rows, lm=lm)``), from the CLI, or from the Prefect UI
through its deployment. It returns a `PipelineResult`: the output rows as a `PayloadRef` (failed
rows included, each with its ``_error``) plus a summary (rows in/out, failures, per-step
estimated vs actual durations).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from prefect import get_run_logger
from prefect.states import Cancelled, Completed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from dspex.exceptions import (
    InputValidationError,
    LMBatchPendingError,
    PayloadError,
    RegistryError,
    RunInterruptedError,
    StepExecutionError,
)
from dspex.settings import Mode, get_settings
from flows.batch_api.mode import awaiting_batch, batch_mode_for, preflight
from flows.engine import run_control
from flows.engine.context import EngineContext, StepRecord
from flows.engine.core import check_pools, run_steps
from flows.engine.executors import RemoteExecutor
from flows.engine.modes import RunMode, needed_pools, resolve_mode
from flows.engine.params import LMParam, resolve_lm, safe_flow
from flows.engine.spec import ModuleStep, PipelineSpec, check_overwrites
from flows.engine.streaming import run_pipelined
from flows.guards.interrupts import handle_signals
from flows.guards.resume import reuse_note
from flows.guards.safekeeping import keep_partial, prepare_input_rows, row_number, store_output
from flows.telemetry import events
from flows.telemetry.artifacts import progress_reporter, write_duration_artifact, write_summary_artifact
from flows.telemetry.metrics import RunMetrics, build_metrics, collect
from tasks import tracing
from tasks.payloads import PayloadRef, read_rows
from tasks.rows import ERROR_FIELD
from tasks.usage import Usage

__all__ = ["PipelineResult", "PipelineSummary", "RowFailure", "load_rows", "run_pipeline"]


class RowFailure(BaseModel):
    """One failed row."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    row: int
    step: str
    type: str
    message: str


class PipelineSummary(BaseModel):
    """What a run did."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str
    mode: Mode
    rows_in: int
    rows_out: int = Field(description="Rows that completed every step.")
    failed: int
    wall_ms: float
    steps: list[StepRecord]
    failures: list[RowFailure] = Field(description="Failed rows (at most 1000 listed).")
    lm: dict[str, Any] = Field(description="The LM used (model, provider; never a key).")
    metrics: RunMetrics | None = Field(
        default=None, description="Throughput, row latency and error rate per step, orchestrator peak RSS."
    )
    usage: Usage = Field(default_factory=Usage, description="LM tokens and cost of the whole run (issue 12).")
    reused_rows: int = Field(
        default=0, description="Step rows taken from earlier runs instead of recomputed."
    )
    not_attempted: int = Field(default=0, description="Rows never tried: the run stopped before them.")
    stopped: str | None = Field(
        default=None, description="Why the run stopped early (signal, budget); None if not."
    )


class PipelineResult(BaseModel):
    """The output rows (by reference) and the summary."""

    model_config = ConfigDict(extra="forbid")

    output: PayloadRef
    summary: PipelineSummary

    def rows(self) -> list[dict[str, Any]]:
        """Read the output rows back."""
        return read_rows(self.output)


def load_rows(data: Any) -> list[dict[str, Any]]:
    """Rows from what a caller passes: rows, a DataFrame, a PayloadRef (or its JSON), a file path/URL,
    or ``"demo"`` (the bundled questions: ``id``, ``question``, ``answer``, ``aliases``).

    Raises:
        PayloadError: The data cannot be read (the message names it).
        InputValidationError: The data is not a list of row mappings.
    """
    if data is None:
        raise InputValidationError(
            "run_pipeline needs data: rows, a DataFrame, a PayloadRef or a dataset path"
        )
    if isinstance(data, PayloadRef):
        return read_rows(data)
    if isinstance(data, dict) and "uri" in data and "format" in data:
        return read_rows(PayloadRef.model_validate(data))
    if data == "demo":
        from tasks.retrieval import load_demo_questions

        return load_demo_questions("all")
    if isinstance(data, str):
        # A PayloadRef's JSON, a stored payload file (the output path a run prints), or a dataset file.
        return read_rows(data)
    to_dict = getattr(data, "to_dict", None)
    if callable(to_dict) and hasattr(data, "columns"):  # a pandas DataFrame
        return [dict(r) for r in data.to_dict(orient="records")]
    if isinstance(data, list):
        bad = [i for i, row in enumerate(data) if not isinstance(row, dict)]
        if bad:
            raise InputValidationError(
                f"data rows must be mappings; rows {bad[:10]} are not",
                [
                    {"field": f"data[{i}]", "message": "not a mapping", "input": repr(data[i])[:80]}
                    for i in bad[:10]
                ],
            )
        return [dict(row) for row in data]
    raise InputValidationError(f"unsupported data type {type(data).__name__}")


def _check_inputs(spec: PipelineSpec, rows: list[dict[str, Any]]) -> None:
    """Before any LM call: the data fits the pipeline (some row has every field the pipeline reads),
    and the first module step's inputs fit its signature (all problems reported at once).

    When only some rows lack a field (or hold null), the others run: each such row is refused on
    its own when its step runs, before any LM call, naming its row (`tasks.batch`, issue 25)."""
    needed = spec.required_inputs()
    problems: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        missing = [f for f in needed if f not in row]
        if not missing:
            problems = []  # a row that can run
            break
        if len(problems) < 20:
            problems.append({"field": ", ".join(missing), "message": f"row {i} lacks it", "input": None})
    if problems:
        raise InputValidationError(
            f"pipeline {spec.name!r}: every row lacks fields the steps read ({needed}); "
            f"first: {problems[0]['message']} {problems[0]['field']!r}",
            problems,
        )
    # Types can be checked up front only for a module step that reads the data directly: the first.
    first = spec.steps[0]
    if not isinstance(first, ModuleStep) or not first.signature or first.inputs:
        return
    from tasks.signatures import compile_signature

    validator = compile_signature(first.signature or "", instructions=first.instructions)
    errors: list[dict[str, Any]] = []
    names = validator.spec.input_names
    for i, row in enumerate(rows):
        if any(row.get(name) is None for name in names):
            continue  # missing or null: refused on its own when the step runs
        try:
            validator.validate_inputs({name: row[name] for name in names})
        except InputValidationError as exc:
            errors.extend({**e, "field": f"row {i}: {e['field']}"} for e in exc.errors)
        if len(errors) >= 20:
            break
    if errors:
        raise InputValidationError(
            f"step {first.name!r}: {len(errors)}+ input values do not fit signature {first.signature!r}: {errors[0]}",
            errors,
        )


@safe_flow(
    name="run-pipeline",
    description="Run a DSPex pipeline spec over a dataset, routing each step to its pool.",
    task_runner=ThreadPoolTaskRunner(max_workers=32),
    validate_parameters=True,
)
def run_pipeline(
    spec: PipelineSpec,
    data: list[dict[str, Any]] | PayloadRef | str | SkipJsonSchema[Any] = None,
    lm: LMParam = None,
    mode: RunMode = "auto",
    continue_on_error: bool | None = None,
    resume: bool | None = None,
    max_cost_usd: float | None = None,
    pipelined: bool = False,
    chunk_rows: int | None = None,
    lm_batch: bool | None = None,
    lm_batch_wait: Literal["auto", "poll", "exit"] = "auto",
    max_errors: int | None = None,
) -> PipelineResult:
    """Run ``spec`` over ``data``.

    Args:
        spec: The pipeline (a `PipelineSpec` or its JSON).
        data: Rows (list of dicts), a pandas DataFrame, a `PayloadRef`, a dataset path/URL
            (JSONL, CSV, Parquet), or ``"demo"`` (the bundled questions).
        lm: Which LM (an `LMConfig`: model, API base, temperature, Secret block name), or a live DSPy
            LM from Python callers in local mode; default: the settings' LM. Never stored with a key.
            In distributed mode each worker builds its LM from its own settings.
        mode: ``auto`` (default: dispatch to the pools when they have live run-step workers, else
            run here; `flows.engine.modes`), ``local`` or ``distributed``.
        continue_on_error: Override the spec's ``continue_on_error``. True here (as
            ``--continue-on-error``) means no failure budget unless ``max_errors`` is given.
        resume: Reuse rows earlier runs completed (default ``DSPEX_RESUME``, on; `flows.guards.resume`).
        max_cost_usd: Stop dispatching before the projected LM cost passes this many USD (default
            ``DSPEX_MAX_COST_USD``); completed rows are kept (`flows.guards.budget`).
        pipelined: Run chunks of rows through the steps without a barrier between steps, so a slow
            batch holds back only its own rows (`flows.engine.streaming`); the output order is the same.
            A step in batch mode (``lm_batch``) is a barrier: the chunks meet, and one batch per round
            holds every row.
        chunk_rows: Rows per chunk when pipelined (default: about 32 chunks).
        lm_batch: Send module steps' LM calls through the provider's batch API (`flows.batch_api.mode`);
            None: the spec's ``lm_batch``, else ``DSPEX_LM_BATCH_API`` (off).
        lm_batch_wait: How a batch-mode run waits for the provider: ``poll`` here, ``exit`` (the run
            ends ``AwaitingBatch`` and a scheduled re-check resumes it), ``auto``: ``exit`` in a
            deployment's own run, else ``poll``.
        max_errors: Failed rows tolerated before the run stops (default: the spec's ``max_errors``,
            else ``DSPEX_MAX_ERRORS``, 10, as DSPy's); failed rows are recorded and the rest complete.

    Returns:
        The output rows by reference and the run summary; the flow run's state message says how
        many rows failed.

    Raises:
        InputValidationError: The data does not fit the pipeline (before any LM call).
        PoolUnavailableError: A step's pool cannot take work and the policy is to fail.
        StepExecutionError: Rows failed and ``continue_on_error`` is false, or more than
            ``max_errors`` rows failed; the output payload with every completed row is still
            written, and named in the error.
        RunInterruptedError: SIGINT/SIGTERM stopped the run (its flow run ends Cancelled); the partial
            output is written and named in the error.
        BudgetExceededError: ``max_cost_usd`` stopped the run; the partial output is written.
    """
    import registry
    from tasks.lm import describe_lm

    logger = get_run_logger()
    settings = get_settings()
    started = time.perf_counter()
    rows = load_rows(data)
    _check_inputs(spec, rows)
    # A step writing a field the rows have replaces it; refused if a later step reads it as gold (issue 24).
    for warning in check_overwrites(spec.steps, {key for row in rows[:1000] for key in row}):
        logger.warning("%s", warning)
    decision = resolve_mode(mode, settings, needed_pools(spec.steps, settings))
    logger.info("%s", decision.reason)
    settings = settings.model_copy(update={"mode": decision.mode})

    chosen_lm = resolve_lm(lm, settings)
    lm_info = describe_lm(chosen_lm)
    if not lm_info.get("offline"):  # the offline LM has had its WARNING from resolve_lm (issue 24)
        logger.info("LM: %s", lm_info.get("model"))

    ctx = EngineContext(
        settings=settings,
        lm=chosen_lm,
        lm_key=_lm_key(chosen_lm, lm_info),
        continue_on_error=spec.continue_on_error if continue_on_error is None else continue_on_error,
        on_progress=progress_reporter(spec.name),
    )
    ctx.failures.max_errors = _max_errors(spec, settings, continue_on_error, max_errors)
    run_control.attach(ctx, spec, settings, resume=resume, max_cost_usd=max_cost_usd)
    ctx.batch_mode = batch_mode_for(spec, settings, lm_batch, lm_batch_wait)  # provider batches (issue 21)
    if settings.mode == "distributed":
        ctx.executor = RemoteExecutor(settings, stop=ctx.stopping, store=ctx.resume)
    check_pools(spec.steps, ctx)
    if ctx.batch_mode is not None:  # an LM or provider without a batch API: a typed error, nothing sent
        preflight(ctx)
    prepare_input_rows(rows)  # reserved _error/_row on input are kept aside, never crash the run (issue 13)
    lm_model = str(lm_info.get("model"))
    try:
        with (
            events.run_scope(spec.name, lm_model, settings=settings),
            collect() as collected,
            tracing.trace_run(spec.name, settings=settings, rows=len(rows), lm_model=lm_model),
            handle_signals(ctx.halt),  # SIGINT/SIGTERM: stop dispatching, let running rows finish (issue 12)
        ):
            if pipelined:
                run_pipelined(spec.steps, rows, ctx, chunk_rows=chunk_rows)
            else:
                run_steps(spec.steps, rows, ctx)
    except LMBatchPendingError as pending:  # the provider is working: end without holding the worker
        return awaiting_batch(pending)
    except BaseException as exc:  # completed rows are stored, and the error names the file (issue 13)
        keep_partial(rows, exc)
        raise

    run_control.mark_unreached(spec.steps, rows, ctx)
    failures = [
        RowFailure(
            row=row_number(r, i),
            step=r[ERROR_FIELD]["step"],
            type=r[ERROR_FIELD]["type"],
            message=r[ERROR_FIELD]["message"],
        )
        for i, r in enumerate(rows)
        if ERROR_FIELD in r
    ]
    output = store_output(rows)  # always a file a user can open, never inline-only (issue 13)
    summary = PipelineSummary(
        pipeline=spec.name,
        mode=settings.mode,
        rows_in=len(rows),
        rows_out=len(rows) - len(failures),
        failed=len(failures),
        wall_ms=(time.perf_counter() - started) * 1000,
        steps=ctx.records,
        failures=failures[:1000],
        lm=lm_info,
        usage=Usage.total(r.usage for r in ctx.records),
        reused_rows=sum(r.reused_rows for r in ctx.records),
        not_attempted=sum(bool(r.get(ERROR_FIELD, {}).get("not_attempted")) for r in rows),
        stopped=ctx.halt.reason if ctx.halt is not None and ctx.halt.stopped else None,
    )
    summary.metrics = build_metrics(ctx.records, collected, len(rows), summary.failed, summary.wall_ms)
    write_duration_artifact(ctx.records, spec.name, str(lm_info.get("model")))
    write_summary_artifact(summary, ctx.records, lm_info, output.uri)
    with events.run_scope(spec.name, lm_model, settings=settings):
        events.run_summary(summary)
    try:
        registry.default_registry().save()
    except (OSError, PayloadError, RegistryError) as exc:  # learned estimates are an optimization; go on
        logger.warning("could not save the registry's learned estimates: %s", exc)
    logger.info(
        "pipeline %s: %d rows in, %d completed, %d failed; output %s%s",
        spec.name,
        summary.rows_in,
        summary.rows_out,
        summary.failed,
        output.uri,
        reuse_note(summary.reused_rows),  # reused rows are said so, with how to re-run (issue 26.2)
    )
    stopped = run_control.stopped_error(ctx, summary, output)
    if isinstance(stopped, RunInterruptedError):  # the flow run ends Cancelled; the caller gets the error
        return Cancelled(message=str(stopped), data=stopped)  # type: ignore[return-value]
    if stopped is not None:
        raise stopped
    if failures and (not ctx.continue_on_error or ctx.failures.exceeded):
        first = failures[0]
        budget = (
            f"more than max_errors={ctx.failures.max_errors} rows failed, so the run stopped: "
            if ctx.continue_on_error
            else ""
        )
        raise StepExecutionError(
            f"{budget}{len(failures)} row(s) failed (first: row {first.row}: {first.type}: {first.message}); "
            f"{summary.rows_out} completed rows kept in {output.uri}",
            step=first.step,
            completed=summary.rows_out,
            partial_ref=output.model_dump(mode="json"),
        )
    result = PipelineResult(output=output, summary=summary)
    if failures:  # the flow run's state says so (the UI's run list shows it), as dspy.Evaluate's log does
        message = f"{len(failures)} of {summary.rows_in} row(s) failed; {summary.rows_out} completed"
        return Completed(message=message, data=result)  # type: ignore[return-value]
    return result


def _max_errors(
    spec: PipelineSpec, settings: Any, continue_on_error: bool | None, max_errors: int | None
) -> int | None:
    """The run's failure budget: the argument, the spec's, no limit when the caller asked to
    continue on error explicitly (the CLI's ``--continue-on-error``, flows that batch a dataset),
    else ``DSPEX_MAX_ERRORS``."""
    if max_errors is not None:
        return max_errors
    if spec.max_errors is not None:
        return spec.max_errors
    return None if continue_on_error else int(settings.max_errors)


def _lm_key(lm: Any, info: dict[str, Any]) -> str:
    """A stable identity of the LM for batch keys; objects that are not plain ``dspy.LM`` (a test's
    DummyLM, a custom client) are keyed by identity so their answers are never reused for another."""
    import dspy

    if type(lm) is dspy.LM:
        return f"{info.get('model')}|{info.get('api_base')}|{sorted((k, str(v)) for k, v in lm.kwargs.items() if 'key' not in k)}"
    return f"{type(lm).__name__}@{id(lm)}"
