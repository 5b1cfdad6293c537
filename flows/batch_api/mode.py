"""Batch mode: a module step's LM calls go through the provider's batch API, in rounds (issue 21).

Each round runs every waiting row's program from the start with a `tasks.lm.replay.ReplayLM`: calls
answered in earlier rounds are replayed from the response store, and the first unanswered call ends
the row for this round and is recorded. A replayed call is not formatted again: the replay memo
(`tasks.lm.replay_memo`) gives a call parsed before its outputs, and a call whose request is known
its answer without formatting the request, so a round formats only its new calls. The round's
requests (one per distinct request: rows asking the same thing share it) are submitted as one batch
through the LM's provider client (`tasks.lm.batch_clients.client_for`: an OpenAI-compatible JSONL
file upload, or Anthropic's Message Batches with the requests inline). When the batch ends, its answers
join the store and the next round runs. A program that makes *k* LM calls per row (ChainOfThought:
1, two predictors: 2, ReAct: up to its iterations + 1) takes *k* rounds; each round holds every row
still waiting. Rows are run through `tasks.batch.execute_module_batch`, the online path's own row
logic (inputs, signature checks, outputs, error classification), so a row's outputs and errors are
what the online run gives for the same answers.

State: ``<payload_url>/lm_batches/<job>/state.json`` (rounds: idempotency key, file and batch ids,
submitted/completed times, checks), ``round-<round>.json`` (the round's request keys and replay memo
entries, written once) and ``answers-<round>.json`` (request key -> the raw answer), JSON only,
written atomically. A run that finds a submitted round collects it before replaying anything. The
job id is a hash of the step's definition, the LM's identity and the rows' inputs, so a restarted
run (a new process, a re-check flow run) finds the same job. A round is recorded as *preparing*
before anything is submitted, with its time and request count, and an OpenAI batch carries the
round's idempotency key in its metadata: after a crash between the two, the run looks the batch up
(``find``: by that key, or for Anthropic's batches, which carry no metadata, by creation time and
request count) instead of submitting again, so no request is submitted twice.

Waiting: a local run (Python, ``dspex run``) polls in-process with backoff (``DSPEX_LM_BATCH_POLL_SECONDS``
doubling to ``DSPEX_LM_BATCH_POLL_MAX_SECONDS``). A deployment run does not hold its worker: when the
batch is not done it raises `LMBatchPendingError`; the flow ends (state ``AwaitingBatch``) after
scheduling a re-check of its own deployment with the same parameters at the next backoff
(`schedule_recheck`), which resumes from the saved state.

Failures inside a batch follow the online retry policy: a transient failure (5xx, 429, expired,
cancelled) is sent again in the next round, until the row's attempts (``DSPEX_LM_NUM_RETRIES`` + 1)
are spent; with ``lm_batch_fallback: online`` it is asked online instead. A permanent one (400, 401)
fails its row at once, with the typed DSPy error the online call raises.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Collection
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import dspy

from dspex.exceptions import LMBatchPendingError, is_retryable
from flows.batch_api.estimates import record_batch_wait
from flows.batch_api.jobs import (
    BatchJob,
    BatchJobState,
    LMBatchRecord,
    RoundState,
    backoff_seconds,
    job_id,
    now_iso,
)
from flows.batch_api.recheck import awaiting_batch, deployment_run, schedule_recheck
from flows.engine.context import EngineContext, StepRecord, fail_row, run_log
from flows.engine.executors.base import BatchRequest
from tasks.batch import BatchResult, RowError, execute_module_batch
from tasks.lm.batch_api import BatchInfo, ProviderBatchClient
from tasks.lm.batch_clients import client_for
from tasks.lm.batch_pricing import batch_rates, batch_usage
from tasks.lm.replay import Answer, NeedsAnswer, ReplayLM, ResponseStore, error_for
from tasks.lm.replay_memo import ReplayMemo
from tasks.retry import RetryPolicy
from tasks.rows import ERROR_FIELD, set_field
from tasks.usage import Usage

if TYPE_CHECKING:
    from flows.engine.router import RouteDecision

__all__ = [
    "BatchMode",
    "awaiting_batch",
    "batch_mode_for",
    "deployment_run",
    "preflight",
    "run_batch_step",
    "schedule_recheck",
]

logger = logging.getLogger("dspex.batch_mode")
Wait = Literal["poll", "exit"]


@dataclass(frozen=True)
class BatchMode:
    """Which steps of a run go through the batch API, and how the run waits.

    Attributes:
        steps: True: every module step; else the names of the steps.
        fallback: ``retry`` (failed requests go in the next round) or ``online``.
        wait: ``poll`` (wait in this process) or ``exit`` (raise `LMBatchPendingError`).
    """

    steps: bool | frozenset[str] = True
    fallback: Literal["retry", "online"] = "retry"
    wait: Wait = "poll"

    def applies(self, step: Any) -> bool:
        """Whether ``step`` runs in batch mode."""
        if getattr(step, "kind", None) != "module":
            return False
        return self.steps is True or (isinstance(self.steps, frozenset) and step.name in self.steps)


def _inline(fn: Callable[..., Any], *args: Any) -> Future[Any]:
    """``submit`` for `execute_module_batch` that runs each row at once, here: a replay costs no I/O,
    and one thread avoids contention on the GIL for ten thousand rows."""
    future: Future[Any] = Future()
    try:
        future.set_result(fn(*args))
    except (Exception, NeedsAnswer) as exc:  # a failure (classified) or a wait (suspended) for the caller
        future.set_exception(exc)
    return future


def _lm_of(ctx: EngineContext) -> Any:
    if ctx.lm is not None:
        return ctx.lm
    from tasks.lm import build_lm  # distributed mode: the orchestrator's own LM from its settings

    return build_lm(ctx.settings)


def preflight(ctx: EngineContext) -> None:
    """Before any step runs: the run's LM and its provider have a batch API.

    Raises:
        LMBatchUnsupportedError: They do not (nothing was sent).
    """
    client = client_for(_lm_of(ctx))
    try:
        client.check()
    finally:
        client.close()


def run_batch_step(
    step: Any,
    rows: list[dict[str, Any]],
    active: list[int],
    ctx: EngineContext,
    decision: RouteDecision,
    reused: int = 0,
) -> None:
    """Run one module step over ``rows[active]`` through the provider's batch API.

    Rows get their outputs (or ``_error``) in place; a `StepRecord` with the batch details is added to
    ``ctx.records``.

    Raises:
        LMBatchUnsupportedError: The LM or provider has no batch API (before anything is sent).
        LMBatchPendingError: ``wait == "exit"`` and the current round's batch is not done.
        LMBatchError: The provider refused an upload or a batch.
    """

    mode: BatchMode = ctx.batch_mode
    settings = ctx.settings
    started = time.perf_counter()
    if not active:  # every row was reused from earlier runs: nothing to ask
        reason = "provider batch API: every row reused from earlier runs"
        record = StepRecord(
            step=step.name, kind=step.kind, module=decision.module, reason=reason, reused_rows=reused
        )
        ctx.records.append(record)
        return
    lm = _lm_of(ctx)
    client = client_for(lm)  # typed error for an offline LM, a custom client, another API
    try:
        client.check()  # a provider without /v1/batches: a typed error before anything is sent
        model = str(lm.model)
        subset = [rows[i] for i in active]
        fresh = BatchJobState(
            job=job_id(step, subset, ctx.lm_key),
            step=str(step.name),
            module=step.module,
            model=model,
            rows=len(subset),
        )
        job = BatchJob.open(settings.resolved_payload_url, fresh)
        done = None
        if mode.wait == "exit":
            done = _check_first(client, job, ctx)  # a re-check of a batch still pending costs no replay
        store = ResponseStore(job.answers())
        memo = ReplayMemo(store, *job.replay_memo())
        policy = RetryPolicy.from_settings(settings)
        waiting = list(range(len(subset)))
        outputs: list[dict[str, Any] | None] = [None] * len(subset)
        errors: list[RowError | None] = [None] * len(subset)
        online_usage: list[Usage] = []
        fallbacks = _collect_submitted(client, job, done, store, policy, mode.fallback, model, ctx)
        finish_ms = 0.0
        while waiting:
            if ctx.stopping():
                stop = RowError(
                    type="NotAttempted",
                    message=f"the run stopped while batch job {job.state.job} was waiting; a re-run picks it up",
                    retryable=True,
                    not_attempted=True,
                )
                for n in waiting:
                    errors[n] = stop
                break
            round_start = time.perf_counter()
            with dspy.context(adapter=memo.adapter(dspy.settings.adapter)):
                result = execute_module_batch(
                    step,
                    [subset[n] for n in waiting],
                    lm=ReplayLM(lm, store),
                    submit=_inline,
                    policy=RetryPolicy(attempts=1),  # rounds retry, not the replay (see _collect)
                    pool="provider-batch",
                    suspend=NeedsAnswer,
                )
            online_usage.append(result.usage)  # only online fallbacks report usage
            paused = set(result.suspended)
            for position, (n, output, error) in enumerate(
                zip(waiting, result.outputs, result.errors, strict=True)
            ):
                if position not in paused:
                    outputs[n], errors[n] = output, error
            waiting = [waiting[position] for position in result.suspended]
            pending = store.take_pending()
            if not pending:
                finish_ms = round((time.perf_counter() - round_start) * 1000, 1)
                break
            replayed = time.perf_counter()
            current = _current_round(job, client, pending, settings.lm_batch_completion_window, memo)
            if not current.replay_ms:  # the run that submitted the round measured it
                current.replay_ms = round((replayed - round_start) * 1000, 1)
                current.io_ms = round((time.perf_counter() - replayed) * 1000, 1)
            run_log(
                "step %s: batch round %d: %d request(s) for %d waiting row(s) in batch %s",
                step.name,
                current.number,
                current.requests,
                len(waiting),
                current.batch_id,
            )
            info = _wait(client, job, current, ctx)
            collect_start = time.perf_counter()
            fallbacks += _collect(
                client, info, job, current, pending, store, policy, mode.fallback, model, collect_start
            )
    finally:
        client.close()

    for n, i in enumerate(active):
        if errors[n] is not None:
            fail_row(rows[i], step.name, errors[n])  # type: ignore[arg-type]
        elif outputs[n] is not None:
            for key, value in (outputs[n] or {}).items():
                set_field(rows[i], key, value)
    if ctx.resume is not None and any(o is not None for o in outputs):
        result = BatchResult(
            outputs=outputs,
            errors=errors,
            latencies_ms=[0.0] * len(subset),
            wall_ms=0.0,
            pool="provider-batch",
        )
        ctx.resume.store(
            BatchRequest(step=step, rows=subset, pool="provider-batch", batch_key=job.state.job), result
        )
    record = _record(
        step,
        decision,
        job,
        store,
        rows,
        active,
        started,
        reused,
        online_usage,
        fallbacks,
        settings,
        finish_ms,
    )

    if record.lm_batch is not None and record.lm_batch.rounds:
        record_batch_wait(step.module, model, record.lm_batch.wait_s / record.lm_batch.rounds)
    ctx.records.append(record)
    ctx.failures.add(record.failed - record.not_attempted)  # the run's max_errors budget counts them too


def _current_round(
    job: BatchJob,
    client: ProviderBatchClient,
    pending: dict[str, dict[str, Any]],
    window: str,
    memo: ReplayMemo,
) -> RoundState:
    """The round holding ``pending``: the unfinished one an earlier run submitted (or was submitting),
    else a new one, recorded as *preparing* (with its round file and time) before anything is sent."""
    last = job.state.rounds[-1] if job.state.rounds else None
    fresh = last is None or last.status == "done"
    if fresh:
        last = RoundState(
            number=len(job.state.rounds) + 1,
            key=f"dspex-{job.state.job}-r{len(job.state.rounds) + 1}",
            prepared_at=now_iso(),
        )
        job.write_round(last.number, list(pending), memo.take_new())
        job.state.rounds.append(last)
        last.requests = len(pending)
        job.save()
    assert last is not None
    if last.status == "preparing":
        # an earlier run's round: it may have submitted just before a crash; adopt it, never submit twice
        earlier = [r.batch_id for r in job.state.rounds if r.batch_id]  # never one of this job's own
        found = None if fresh else client.find(last.key, last.prepared_at, last.requests, earlier)
        if found is None:
            found = client.submit(pending, last.key, window)
        last.file_id = found.input_file_id or last.file_id
        last.batch_id = found.id
        last.provider_status = found.status
        last.status = "submitted"
        last.submitted_at = last.submitted_at or now_iso()
        last.requests = len(pending)
        job.save()
    return last


def _check_first(client: ProviderBatchClient, job: BatchJob, ctx: EngineContext) -> BatchInfo | None:
    """Before replaying: when the job's last round was submitted and its batch is still not done,
    raise `LMBatchPendingError` at once (a re-check run then costs one status call, not a replay).
    Returns the batch once it is done (None: no round was waiting)."""
    last = job.state.rounds[-1] if job.state.rounds else None
    if last is not None and last.status == "submitted" and last.batch_id:
        return _wait(client, job, last, ctx)  # returns when the batch is done: the rounds then go on
    return None


def _collect_submitted(
    client: ProviderBatchClient,
    job: BatchJob,
    info: BatchInfo | None,
    store: ResponseStore,
    policy: RetryPolicy,
    fallback: str,
    model: str,
    ctx: EngineContext,
) -> int:
    """A round an earlier run submitted, collected (waited for first) before any replay: replaying
    the rows only to find its requests again would cost a round's work. Returns the online fallbacks.

    A round recorded before round files were kept is left to the replay, which finds its requests.
    """
    last = job.state.rounds[-1] if job.state.rounds else None
    if last is None or last.status != "submitted" or not last.batch_id:
        return 0
    requests = job.round_requests(last.number)
    if requests is None:
        return 0
    if info is None or info.id != last.batch_id or not info.done:
        info = _wait(client, job, last, ctx)
    started = time.perf_counter()
    return _collect(client, info, job, last, set(requests), store, policy, fallback, model, started)


def _wait(client: ProviderBatchClient, job: BatchJob, current: RoundState, ctx: EngineContext) -> BatchInfo:
    """The batch once it is done: polled here with backoff, or (``exit``) `LMBatchPendingError`."""
    settings = ctx.settings
    assert current.batch_id is not None
    while True:
        info = client.retrieve(current.batch_id)
        current.provider_status = info.status
        if info.done:
            return info
        wait = backoff_seconds(
            current.checks, settings.lm_batch_poll_seconds, settings.lm_batch_poll_max_seconds
        )
        current.checks += 1
        job.save()
        if ctx.batch_mode.wait == "exit":
            raise LMBatchPendingError(
                f"step {job.state.step}: batch {current.batch_id} (round {current.number}, {current.requests} "
                f"requests) is {info.status}; next check in {wait:.0f} s",
                job=job.state.job,
                batch_id=current.batch_id,
                check_in_s=wait,
            )
        until = time.monotonic() + wait
        while (left := until - time.monotonic()) > 0:
            if ctx.stopping():
                return info  # not done: its requests stay unanswered, and the rows not attempted
            time.sleep(min(left, 0.5))


def _collect(
    client: ProviderBatchClient,
    info: BatchInfo,
    job: BatchJob,
    current: RoundState,
    pending: Collection[str],
    store: ResponseStore,
    policy: RetryPolicy,
    fallback: str,
    model: str,
    started: float,
) -> int:
    """Put a finished batch's answers in the store and the job's files; returns the online fallbacks.

    A request without an answer line (expired, cancelled, a failed batch) counts as a transient
    failure. Failed requests are retried in the next round while the retry policy allows (they are
    simply not answered), asked online under the ``online`` fallback, or kept as the error the row
    then fails with.
    """
    if not info.done:  # the run stopped while waiting: nothing to collect
        return 0
    answers: dict[str, Answer] = {}
    failed: dict[str, Answer] = {}
    for line in client.results(info):
        if line.key not in pending:
            continue
        if line.response is not None:
            answers[line.key] = Answer(response=line.response)
        else:
            failed[line.key] = Answer(status=line.status, message=line.message)
    why = f"request not answered: batch {info.id} ended {info.status}"
    for key in pending:
        if key not in answers and key not in failed:
            failed[key] = Answer(status=0, message=why)
    fallbacks = 0
    for key, failure in failed.items():
        attempts = job.state.failures.get(key, 0) + 1
        job.state.failures[key] = attempts
        transient = is_retryable(error_for(failure.status, failure.message, model))
        if transient and fallback == "online":
            answers[key] = Answer(online=True, status=failure.status, message=failure.message)
            fallbacks += 1
        elif not transient or attempts >= policy.attempts:
            answers[key] = failure  # the row fails with it, as online after its last attempt
        # else: left unanswered, so the next round sends it again
    job.write_answers(current.number, answers)  # before the round is marked done: a crash re-collects
    for key, answer in answers.items():
        store.put(key, answer)
    current.answered = sum(a.response is not None for a in answers.values())
    current.failed = len(failed)
    current.status = "done"
    current.completed_at = now_iso()
    current.io_ms = round(current.io_ms + (time.perf_counter() - started) * 1000, 1)
    job.save()
    if info.status != "completed":
        logger.warning("batch %s ended %s: %d request(s) unanswered", info.id, info.status, len(failed))
    return fallbacks


def _record(
    step: Any,
    decision: RouteDecision,
    job: BatchJob,
    store: ResponseStore,
    rows: list[dict[str, Any]],
    active: list[int],
    started: float,
    reused: int,
    online_usage: list[Usage],
    fallbacks: int,
    settings: Any,
    finish_ms: float,
) -> Any:

    rounds = job.state.rounds
    responses = [a.response for a in store.answers.values() if a.response is not None and not a.online]
    usage = batch_usage(job.state.model, [r for r in responses if r.get("usage")], settings.lm_batch_discount)
    usage = usage + Usage.total(online_usage)
    times = [(r.submitted_at, r.completed_at) for r in rounds]
    wait_s = 0.0
    if rounds and rounds[0].submitted_at and rounds[-1].completed_at:
        first = dt.datetime.fromisoformat(rounds[0].submitted_at)
        wait_s = (dt.datetime.fromisoformat(rounds[-1].completed_at) - first).total_seconds()
    rates = batch_rates(job.state.model, settings.lm_batch_discount)
    failed = [i for i in active if ERROR_FIELD in rows[i] and rows[i][ERROR_FIELD]["step"] == step.name]
    return StepRecord(
        step=step.name,
        kind=step.kind,
        module=decision.module,
        pool="provider-batch",
        requested_pool=decision.requested_pool,
        actual_pool=["provider-batch"] if rounds else [],
        batch_size=len(active),
        batches=len(rounds),
        rows=len(active),
        failed=len(failed),
        not_attempted=sum(bool(rows[i][ERROR_FIELD].get("not_attempted")) for i in failed),
        actual_ms=round((time.perf_counter() - started) * 1000, 1),
        reason=f"provider batch API: {len(rounds)} round(s), {sum(r.requests for r in rounds)} request(s)",
        reused_rows=reused,
        usage=usage,
        lm_batch=LMBatchRecord(
            job=job.state.job,
            rounds=len(rounds),
            requests=sum(r.requests for r in rounds),
            batch_ids=[r.batch_id or "" for r in rounds],
            submitted_at=[s for s, _ in times],
            completed_at=[c for _, c in times],
            wait_s=round(wait_s, 1),
            online_fallbacks=fallbacks,
            replay_ms=[r.replay_ms for r in rounds],
            io_ms=[r.io_ms for r in rounds],
            finish_ms=finish_ms,
            price=rates[2] if rates else "unpriced",
        ),
    )


def batch_mode_for(spec: Any, settings: Any, lm_batch: bool | None, wait: str = "auto") -> BatchMode | None:
    """The run's `BatchMode` (None: every step online).

    Args:
        spec: The pipeline (its ``lm_batch`` and ``lm_batch_fallback``).
        settings: The settings (``DSPEX_LM_BATCH_API``, ``DSPEX_LM_BATCH_FALLBACK``).
        lm_batch: The caller's switch (``--batch-api``, a flow parameter); None: the spec's, else the
            setting's.
        wait: ``poll``, ``exit``, or ``auto``: ``exit`` in a deployment's own flow run (no worker is
            held while the provider works), ``poll`` elsewhere.
    """
    chosen: bool | list[str] = lm_batch if lm_batch is not None else (spec.lm_batch or settings.lm_batch_api)
    if not chosen:
        return None
    if wait == "auto":
        wait = "exit" if deployment_run() is not None else "poll"
    return BatchMode(
        steps=True if chosen is True else frozenset(chosen),
        fallback=spec.lm_batch_fallback or settings.lm_batch_fallback,
        wait="exit" if wait == "exit" else "poll",
    )
