"""The pipeline engine's core: runs a spec's steps over rows, routing module and retrieve steps to pools.

Rows are dicts that each step extends. A row that fails gets an ``_error`` (step, type, message),
is skipped by later steps, and stays in the output, so nothing computed is lost. Module steps are
cut into batches (one Prefect task run each) that run concurrently on their pool; native steps run
inline in the flow; parallel, conditional and map steps recurse. Every routed step leaves a
`StepRecord` (estimate versus actual) that the flow turns into artifacts and feeds back into the
registry's learned estimates.

`run_steps` dispatches on the step's type. Two handlers live beside their concept and build on
`flows.engine.context`, not on this module: a ``select`` step (`flows.tuning.select`, which gets
`run_steps` as an argument to run its candidates) and a module step in provider batch mode
(`flows.batch_api.mode`).
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any

from flows.batch_api.mode import run_batch_step
from flows.engine.context import EngineContext, StepRecord, batch_key, fail_row, run_log
from flows.engine.executors import BatchExecutor, BatchRequest
from flows.engine.learning import expected_usage, learn_usage, lm_model
from flows.engine.router import RouteDecision, route_step
from flows.engine.spec import (
    ConditionalStep,
    MapStep,
    ModuleStep,
    NativeStep,
    ParallelStep,
    RetrieveStep,
    SelectStep,
    iter_steps,
)
from flows.telemetry import events, metrics
from flows.tuning.select import run_select
from tasks import tracing
from tasks.batch import BatchResult, RowError, not_attempted_result
from tasks.payloads import confine
from tasks.rows import ERROR_FIELD, get_field, set_field
from tasks.usage import Usage

__all__ = ["check_pools", "run_steps"]

logger = logging.getLogger(__name__)


def run_steps(steps: list[Any], rows: list[dict[str, Any]], ctx: EngineContext) -> list[dict[str, Any]]:
    """Run ``steps`` in order over ``rows`` (modified in place and returned)."""
    for step in steps:
        if ctx.stopping():
            break
        active = [i for i, row in enumerate(rows) if ERROR_FIELD not in row]
        if not active:
            break
        start = time.perf_counter()
        with tracing.step_span(step.name, step.kind, len(active)):
            if isinstance(step, ModuleStep):
                _module_step(step, rows, active, ctx)
            elif isinstance(step, RetrieveStep):
                _retrieve_step(step, rows, active, ctx)
            elif isinstance(step, NativeStep):
                _native_step(step, rows, active)
                ctx.failures.add(sum(ERROR_FIELD in rows[i] for i in active))
                _record_inline(step, rows, active, start, ctx)
            elif isinstance(step, ParallelStep):
                _parallel_step(step, rows, active, ctx)
            elif isinstance(step, ConditionalStep):
                _conditional_step(step, rows, active, ctx)
            elif isinstance(step, MapStep):
                _map_step(step, rows, active, ctx)
            elif isinstance(step, SelectStep):  # adaptive choice among candidate steps (issue 16)
                run_select(step, rows, active, ctx, run_steps)
        if not ctx.continue_on_error and any(ERROR_FIELD in rows[i] for i in active):
            ctx.stop = True
    return rows


def _record_inline(
    step: Any, rows: list[dict[str, Any]], active: list[int], start: float, ctx: EngineContext
) -> None:
    ctx.records.append(
        StepRecord(
            step=step.name,
            kind=step.kind,
            rows=len(active),
            failed=sum(ERROR_FIELD in rows[i] for i in active),
            actual_ms=round((time.perf_counter() - start) * 1000, 1),
        )
    )


# --- module steps -------------------------------------------------------------------------------


def _module_step(
    step: ModuleStep | RetrieveStep, rows: list[dict[str, Any]], active: list[int], ctx: EngineContext
) -> None:
    reused = 0
    # Before anything is reused or dispatched: reused rows and cached corpora pass the read fence a
    # fresh read would (issue 20).
    confine.check_step_reads(step)
    if ctx.resume is not None:  # rows earlier runs completed are taken, not dispatched (flows.guards.resume)
        done, active = ctx.resume.split(step, rows, active)
        for i, reused_output in done.items():
            for key, value in reused_output.items():
                set_field(rows[i], key, value)
        reused = len(done)
        if done:
            run_log(
                "step %s: reusing %d row(s) completed by an earlier run; %d to run",
                step.name,
                reused,
                len(active),
            )
    # Routed after resume took its rows: batch sizes and the estimate are for the rows that run
    # (the estimate of 40 reused rows against 0 ms run read as a 36433 % error: issue 26.2).
    decision = route_step(
        step,
        len(active),
        ctx.settings,
        ctx.availability,
        input_size=_row_chars(step, rows, active),
        slots=ctx.get_executor().slots,  # at least one batch per live worker (issue 26)
    )
    events.step_decided(decision, len(active))
    if ctx.batch_mode is not None and ctx.batch_mode.applies(step):  # provider batch API (issue 21)
        run_batch_step(step, rows, active, ctx, decision, reused)
        return
    chunks = [active[i : i + decision.batch_size] for i in range(0, len(active), decision.batch_size)]
    # Logged after resume took its rows: the counts are the batches actually cut, and they add up.
    run_log("route %s: %s (%d rows in %s)", step.name, decision.reason, len(active), _batch_counts(chunks))
    ctx.batches_total += len(chunks)
    start = time.perf_counter()
    results = _dispatch_batches(step, rows, chunks, decision, ctx)
    actual_ms = (time.perf_counter() - start) * 1000
    for chunk, result in zip(chunks, results, strict=True):
        if isinstance(result, BaseException):
            for i in chunk:
                fail_row(rows[i], step.name, result)
            continue
        reused += result.reused
        for i, output, error in zip(chunk, result.outputs, result.errors, strict=True):
            if error is not None:
                fail_row(rows[i], step.name, error)
            elif output is not None:
                for key, value in output.items():
                    set_field(rows[i], key, value)
    _learn(decision, results)
    model = lm_model(ctx.lm, ctx.settings)
    expected = expected_usage(decision.module, model, len(active))  # before this step's own samples
    learn_usage(decision.module, model, results)
    metrics.observe_batches(step.name, results)
    events.batches_retried(step.name, results)
    record = _record(step, decision, chunks, rows, actual_ms, reused, results)
    record.estimated_tokens, record.estimated_cost_usd = expected
    ctx.records.append(record)


def _batch_counts(chunks: list[list[int]]) -> str:
    """``"3 batches: 2 x 16 + 8"``: the batch sizes, so a log line's numbers add up to its rows."""
    if not chunks:
        return "0 batches"
    sizes = [len(chunk) for chunk in chunks]
    full, rest = sizes[0], sizes[-1]
    parts = f"{len(sizes)} x {full}" if rest == full else f"{len(sizes) - 1} x {full} + {rest}"
    return f"{len(sizes)} batch{'es' if len(sizes) != 1 else ''}: {parts}"


def _row_chars(step: Any, rows: list[dict[str, Any]], active: list[int]) -> int | None:
    """The size of one row's inputs in characters (the largest of the first 20): the registry's
    per-call ``input_size``."""
    reads = sorted(set(getattr(step, "inputs", {}).values()) | set(step.needs()))
    sizes = [len(json.dumps([get_field(rows[i], f, None) for f in reads], default=str)) for i in active[:20]]
    return max(sizes) if sizes else None


def _dispatch_batches(
    step: ModuleStep | RetrieveStep,
    rows: list[dict[str, Any]],
    chunks: list[list[int]],
    decision: RouteDecision,
    ctx: EngineContext,
) -> list[BatchResult | BaseException]:
    """Run every batch on the executor, a bounded number at a time, results in batch order.

    A batch that raised is kept as its exception, so its rows are reported and the others go on;
    once the run stops (``ctx.stop``), batches not started yet come back *not attempted*.
    """
    executor = ctx.get_executor()
    parent = contextvars.copy_context()
    requests = []
    for n, chunk in enumerate(chunks):
        batch_rows = [rows[i] for i in chunk]
        requests.append(
            BatchRequest(
                step=step,
                rows=batch_rows,
                pool=decision.pool,
                batch_key=batch_key(step, batch_rows, _dispatch_salt(ctx)),
                timeout_s=decision.timeout_s,
                index=n,
            )
        )
    workers = max(min(len(requests), executor.max_in_flight(decision.pool)), 1)
    results: list[BatchResult | BaseException] = []
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dspex-dispatch")
    abandoned = False
    try:
        futures = [pool.submit(parent.copy().run, _run_one, ctx, executor, request) for request in requests]
        for future, request in zip(futures, requests, strict=True):
            try:
                result = ctx.halt.result_of(future) if ctx.halt is not None else future.result()
            except FuturesTimeout:  # stopped, and the grace period ran out: stop waiting for it
                abandoned = True
                results.append(_cut_off(request, ctx))
            except Exception as exc:  # a batch's failure is data: its rows get this error
                logger.warning("step %s: a batch failed: %s: %s", step.name, type(exc).__name__, exc)
                results.append(exc)
                ctx.failures.add(len(request.rows))
                ctx.stop = ctx.stop or not ctx.continue_on_error or ctx.failures.exceeded
            else:
                results.append(result)
                ctx.failures.add(result.failed - result.not_attempted)
                if result.failed > result.not_attempted and (
                    not ctx.continue_on_error or ctx.failures.exceeded
                ):
                    ctx.stop = True  # a row failed for good (or one too many): no other batch starts
            _progress(ctx)
    finally:
        # Batches still running after the grace period are left to finish on their own (their
        # results still reach the resume store); the run does not wait for them.
        pool.shutdown(wait=not abandoned, cancel_futures=abandoned)
    return results


def _dispatch_salt(ctx: EngineContext) -> str:
    """The LM key, salted with the run's id: dispatch keys are per run (see `flows.guards.resume.ResumeStore`)."""
    run_id = ctx.resume.run_id if ctx.resume is not None else ""
    return f"{ctx.lm_key}|run:{run_id}" if run_id else ctx.lm_key


def _run_one(ctx: EngineContext, executor: BatchExecutor, request: BatchRequest) -> BatchResult:
    """One batch through the executor, within the run's cost budget."""
    budget = ctx.budget
    if budget is None:
        return executor.run(request)
    if not budget.admit(len(request.rows), ctx.stopping):
        if budget.exhausted and ctx.halt is not None:
            ctx.halt.request(budget.reason or "cost budget reached")
        return not_attempted_result(len(request.rows), budget.reason or "the run stopped", request.pool)
    result: BatchResult | None = None
    try:
        result = executor.run(request)
        return result
    finally:
        budget.settle(len(request.rows) - (result.reused if result else 0), result.usage if result else None)


def _cut_off(request: BatchRequest, ctx: EngineContext) -> BatchResult:
    """The result of a batch still running when the grace period after a stop ran out."""
    grace = ctx.halt.grace_s if ctx.halt is not None else 0.0
    reason = (ctx.halt.reason if ctx.halt is not None else None) or "the run stopped"
    error = RowError(
        type="Interrupted",
        message=f"{reason}: the batch did not finish within the {grace:.0f} s grace period",
        retryable=True,
    )
    n = len(request.rows)
    return BatchResult(outputs=[None] * n, errors=[error] * n, latencies_ms=[0.0] * n, wall_ms=0.0)


def _progress(ctx: EngineContext) -> None:
    ctx.batches_done += 1
    if ctx.on_progress is not None and ctx.batches_total:
        ctx.on_progress(min(ctx.batches_done / ctx.batches_total, 1.0))


def _learn(decision: RouteDecision, results: list[Any]) -> None:
    """Feed per-example latencies back into the registry's learned estimates (one per batch)."""
    import registry

    ok_batches = [r for r in results if isinstance(r, BatchResult)]
    for result in ok_batches:
        measured = [
            lat
            for lat, err in zip(result.latencies_ms, result.errors, strict=True)
            if lat > 0 and err is None
        ]
        if measured:
            registry.record_duration(decision.module, sum(measured) / len(measured), pool=decision.pool)
    for result in results:
        if isinstance(result, BaseException):
            registry.record_duration(decision.module, 0.0, pool=decision.pool, success=False)


def _record(
    step: Any,
    decision: RouteDecision,
    chunks: list[list[int]],
    rows: list[dict[str, Any]],
    actual_ms: float,
    reused: int,
    results: list[BatchResult | BaseException],
) -> StepRecord:
    indices = [i for chunk in chunks for i in chunk]
    error = None
    if indices:  # nothing ran (every row reused): there is no estimate to be wrong (issue 26.2)
        events.estimate_drift(
            step.name,
            module=decision.module,
            pool=decision.pool,
            estimated_ms=decision.estimated_ms,
            actual_ms=actual_ms,
        )
        error = abs(decision.estimated_ms - actual_ms) / actual_ms * 100 if actual_ms > 0 else None
    ran_on = sorted(
        {r.pool for r in results if isinstance(r, BatchResult) and r.pool and r.not_attempted < len(r.errors)}
    )
    return StepRecord(
        step=step.name,
        kind=step.kind,
        module=decision.module,
        pool=decision.pool,
        requested_pool=decision.requested_pool,
        actual_pool=ran_on,
        batch_size=decision.batch_size,
        batches=len(chunks),
        rows=len(indices),
        failed=sum(ERROR_FIELD in rows[i] and rows[i][ERROR_FIELD]["step"] == step.name for i in indices),
        not_attempted=sum(
            ERROR_FIELD in rows[i]
            and rows[i][ERROR_FIELD]["step"] == step.name
            and rows[i][ERROR_FIELD].get("not_attempted", False)
            for i in indices
        ),
        estimated_ms=round(decision.estimated_ms, 1),
        actual_ms=round(actual_ms, 1),
        error_pct=round(error, 1) if error is not None else None,
        estimate_source=decision.estimate_source,
        reason=decision.reason,
        reused_rows=reused,
        usage=Usage.total(r.usage for r in results if isinstance(r, BatchResult)),
    )


# --- retrieve steps -----------------------------------------------------------------------------


def _retrieve_step(
    step: RetrieveStep, rows: list[dict[str, Any]], active: list[int], ctx: EngineContext
) -> None:
    """Queries are checked here (bad ones fail their row); the batches then run like module batches,
    on the same executor, in both modes (``run_batch`` does the retrieval)."""
    valid = []
    for i in active:
        query = get_field(rows[i], step.retrieve, None)
        if isinstance(query, str) and query.strip():
            valid.append(i)
        else:
            fail_row(rows[i], step.name, ValueError(f"field {step.retrieve!r} is not a non-empty string"))
    ctx.failures.add(len(active) - len(valid))
    _module_step(step, rows, valid, ctx)


# --- native steps -------------------------------------------------------------------------------


def _native_step(step: NativeStep, rows: list[dict[str, Any]], active: list[int]) -> None:
    from dspex.exceptions import InputValidationError, MetricError, TemplateError

    if step.native == "validate":
        from tasks.signatures import compile_signature

        validator = compile_signature(step.signature or "")
        for i in active:
            try:
                values = {name: get_field(rows[i], name, None) for name in validator.spec.input_names}
                validator.validate_inputs(values)
            except InputValidationError as exc:
                fail_row(rows[i], step.name, exc)
    elif step.native == "template":
        from tasks.templates import render_template

        for i in active:
            try:
                set_field(
                    rows[i], step.output or str(step.name), render_template(step.template or "", rows[i])
                )
            except TemplateError as exc:
                fail_row(rows[i], step.name, exc)
    else:
        from tasks.metrics import get_metric

        metric = get_metric(step.metric or "", gold_field="gold", prediction_field="prediction")
        target = step.output or str(step.name)
        for i in active:
            try:
                prediction = {"prediction": get_field(rows[i], step.prediction, None)}
                gold = {"gold": get_field(rows[i], step.gold, None)}
                set_field(rows[i], target, metric(gold, prediction))
            except MetricError as exc:
                fail_row(rows[i], step.name, exc)


# --- composite steps ----------------------------------------------------------------------------


def _propagate(parent: dict[str, Any], child: dict[str, Any]) -> bool:
    if ERROR_FIELD in child and ERROR_FIELD not in parent:
        parent[ERROR_FIELD] = child[ERROR_FIELD]
        return True
    return ERROR_FIELD in child


def _parallel_step(
    step: ParallelStep, rows: list[dict[str, Any]], active: list[int], ctx: EngineContext
) -> None:
    start = time.perf_counter()
    sub = ctx.child()
    parent = contextvars.copy_context()

    def branch(steps: list[Any]) -> list[dict[str, Any]]:
        copies = [dict(rows[i]) for i in active]
        return run_steps(steps, copies, sub)

    with ThreadPoolExecutor(max_workers=len(step.parallel), thread_name_prefix="dspex-branch") as executor:
        futures = {
            name: executor.submit(parent.copy().run, branch, steps) for name, steps in step.parallel.items()
        }
        outcomes = {name: future.result() for name, future in futures.items()}
    for name, branch_rows in outcomes.items():
        for i, new in zip(active, branch_rows, strict=True):
            if _propagate(rows[i], new):
                continue
            added = {k: v for k, v in new.items() if k not in rows[i] or k in _produced(step.parallel[name])}
            rows[i][name] = added
    _record_inline(step, rows, active, start, ctx)


def _produced(steps: list[Any]) -> set[str]:
    # Top-level keys: a dotted output 'meta.note' lives under the row's 'meta'.
    return {f.split(".")[0] for s in steps for f in s.produces()}


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a is not None and a > b,
    "ge": lambda a, b: a is not None and a >= b,
    "lt": lambda a, b: a is not None and a < b,
    "le": lambda a, b: a is not None and a <= b,
    "in": lambda a, b: a in (b or []),
    "contains": lambda a, b: a is not None and b in a,
    "truthy": lambda a, _b: bool(a),
}


def _holds(step: ConditionalStep, row: dict[str, Any]) -> bool:
    value = get_field(row, step.when.field, None)
    if step.when.op == "exists":
        return get_field(row, step.when.field, _ABSENT) is not _ABSENT
    try:
        return _OPS[step.when.op](value, step.when.value)
    except TypeError:
        return False


_ABSENT = object()


def _conditional_step(
    step: ConditionalStep, rows: list[dict[str, Any]], active: list[int], ctx: EngineContext
) -> None:
    start = time.perf_counter()
    path_field = step.path_field or f"{step.name}_path"
    chosen = {i: _holds(step, rows[i]) for i in active}
    sub = ctx.child()
    for branch, steps in (("then", step.then), ("otherwise", step.otherwise)):
        picked = [i for i in active if chosen[i] == (branch == "then")]
        for i in picked:
            rows[i][path_field] = branch
        if picked and steps:
            subset = [rows[i] for i in picked]  # same dicts: steps extend the rows in place
            run_steps(steps, subset, sub)
    _record_inline(step, rows, active, start, ctx)


def _map_step(step: MapStep, rows: list[dict[str, Any]], active: list[int], ctx: EngineContext) -> None:
    start = time.perf_counter()
    target = step.output or str(step.name)
    items: list[dict[str, Any]] = []
    owners: list[int] = []
    for i in active:
        values = get_field(rows[i], step.map, None)
        if not isinstance(values, list):
            fail_row(rows[i], step.name, TypeError(f"field {step.map!r} is not a list"))
            continue
        for value in values:
            items.append({**rows[i], step.item: value})
            owners.append(i)
    # All items of all rows go through the inner steps together, so they batch well.
    run_steps(step.steps, items, ctx.child())
    produced = _produced(step.steps)
    collected: dict[int, list[Any]] = {i: [] for i in active if ERROR_FIELD not in rows[i]}
    for owner, item in zip(owners, items, strict=True):
        if _propagate(rows[owner], item):
            continue
        if step.collect:
            collected.setdefault(owner, []).append(get_field(item, step.collect, None))
        else:
            collected.setdefault(owner, []).append({k: item[k] for k in produced if k in item})
    for i, values in collected.items():
        if ERROR_FIELD not in rows[i]:
            rows[i][target] = values
    _record_inline(step, rows, active, start, ctx)


def check_pools(steps: list[Any], ctx: EngineContext) -> None:
    """Fail fast, before any LM call, when a step's pool cannot take work under the policy."""
    for step in iter_steps(steps):
        if isinstance(step, ModuleStep | RetrieveStep):
            route_step(step, 1, ctx.settings, ctx.availability)  # raises PoolUnavailableError
