"""Distributed mode: send each batch to its work pool's ``run-step`` deployment and back, by reference.

`remote_dispatcher` gives the engine a `RemoteDispatcher`: called with a step, its batch of rows, the
route decision and the batch key, it

1. writes the rows as a payload on shared storage (``settings.resolved_payload_url``, which every
   worker must reach) under ``batches/<batch_key>``;
2. returns at once if ``results/<batch_key>`` already exists (an earlier dispatch finished);
3. creates a flow run of ``run-step/run-step-<pool>`` with ``run_deployment(..., timeout=0)`` and polls
   that flow run itself every ``dispatch_poll_seconds`` (Prefect's ``run_deployment`` polls every 5 s,
   which would dominate the overhead of a batch);
4. reads the `BatchResult` back by key when the run is COMPLETED.

With a ``resume_key`` the worker journals each row as it completes (`flows.guards.resume.BatchJournals`),
so a batch dispatched again after its worker died runs only the rows no attempt finished.

Failures, so that every row lands exactly once and nothing hangs:

* the run FAILED, CRASHED or was CANCELLED, or the worker that took it stopped heartbeating (killed,
  lost its machine; a worker counts as dead after three missed heartbeats, the multiple Prefect's own
  server uses, and never before ``worker_grace_seconds`` of silence), or it outlived ``dispatch_timeout_seconds``: the run is marked CRASHED and the *same*
  batch, with the same key, is dispatched again (at most ``task_retries + 1`` attempts). A result
  written by an earlier attempt is reused, never recomputed, and the engine places one result per batch;
* the run is still SCHEDULED and the pool has had no live worker for ``worker_grace_seconds``: the run
  is cancelled and the fallback policy applies, with a log line that says so: ``general`` re-dispatches
  to the general pool, ``fail`` raises `PoolUnavailableError`.

`RemoteDispatcher.availability` tells the router, before a step starts, whether a pool has a live
worker and a ``run-step`` deployment, so an empty pool triggers the fallback policy up front.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dspex.exceptions import DispatchError, PoolUnavailableError
from dspex.settings import Settings
from flows.engine.ownership import OwnedObjects
from flows.engine.step_runner import read_batch_result
from tasks.batch import BatchResult
from tasks.payloads import write_payload

__all__ = [
    "HEARTBEAT_MISSES",
    "RUN_STEP_DEPLOYMENT",
    "PoolStatus",
    "RemoteDispatcher",
    "pool_status",
    "remote_dispatcher",
    "worker_is_live",
]

#: The deployment that runs a batch on a pool, by pool name.
RUN_STEP_DEPLOYMENT = "run-step/run-step-{pool}"
#: A worker is dead after this many missed heartbeats (Prefect's server uses the same multiple).
HEARTBEAT_MISSES = 3
#: How long a pool's worker list is reused between API reads (shared by all dispatch threads).
_WORKERS_TTL_S = 0.5
_TERMINAL_BAD = frozenset({"FAILED", "CRASHED", "CANCELLED", "CANCELLING"})
_WAITING = frozenset({"SCHEDULED", "PAUSED"})
_ACTIVE = frozenset({"PENDING", "RUNNING"})

logger = logging.getLogger("dspex.distributed")


def worker_is_live(worker: Any, now: datetime | None = None, min_silence_s: float = 0.0) -> bool:
    """Whether a Prefect worker record has heartbeated recently enough to be alive.

    Args:
        worker: The worker record (``last_heartbeat_time``, ``heartbeat_interval_seconds``).
        now: The current time (UTC).
        min_silence_s: Never call a worker dead before this much silence: a busy server (SQLite
            under load) drops or delays heartbeats, which must not look like a dead worker.
    """
    last = getattr(worker, "last_heartbeat_time", None)
    if last is None:
        return False
    interval = float(getattr(worker, "heartbeat_interval_seconds", None) or 30)
    age = ((now or datetime.now(UTC)) - last).total_seconds()
    return age <= max(HEARTBEAT_MISSES * interval, min_silence_s)


@dataclass(frozen=True)
class PoolStatus:
    """What the API says about one work pool right now."""

    pool: str
    ok: bool
    reason: str
    live_workers: tuple[str, ...] = ()
    #: The pool or its run-step deployment exists but is not this project's own (`flows.engine.ownership`).
    foreign: bool = False


def pool_status(
    client: Any, pool: str, min_silence_s: float = 0.0, owned: OwnedObjects | None = None
) -> PoolStatus:
    """Whether ``pool`` can take a batch: it exists, is not paused, has a run-step deployment and a live worker.

    Args:
        client: A synchronous Prefect client.
        pool: The work pool's name.
        min_silence_s: Passed to `worker_is_live`.
        owned: When given (auto mode), the pool and its run-step deployment must also be among the
            ones this project created (`flows.engine.ownership`): another account's look-alikes are refused.
    """
    from prefect.exceptions import ObjectNotFound

    name = RUN_STEP_DEPLOYMENT.format(pool=pool)
    try:
        work_pool = client.read_work_pool(pool)
    except ObjectNotFound:
        return PoolStatus(pool, False, f"work pool {pool!r} does not exist (run `dspex pools create`)")
    if owned is not None and not owned.owns_pool(work_pool.id):
        return PoolStatus(
            pool,
            False,
            f"work pool {pool!r} (id {work_pool.id}) was not created by this project; not dispatching to it "
            "(`dspex pools create` records the pools it creates or updates)",
            foreign=True,
        )
    if work_pool.is_paused:
        return PoolStatus(pool, False, f"work pool {pool!r} is paused")
    try:
        deployment = client.read_deployment_by_name(name)
    except ObjectNotFound:
        return PoolStatus(pool, False, f"no deployment {name!r} (run `dspex deploy`)")
    if owned is not None and (
        not owned.owns_deployment(deployment.id) or getattr(deployment, "work_pool_name", pool) != pool
    ):
        return PoolStatus(
            pool,
            False,
            f"deployment {name!r} (id {deployment.id}) was not deployed by this project to pool {pool!r}; "
            "not dispatching to it (`dspex deploy` records the deployments it makes)",
            foreign=True,
        )
    now = datetime.now(UTC)
    live = tuple(
        w.name for w in client.read_workers_for_work_pool(pool) if worker_is_live(w, now, min_silence_s)
    )
    if not live:
        return PoolStatus(
            pool, False, f"no live worker in work pool {pool!r} (start one: dspex worker --pool {pool})"
        )
    return PoolStatus(pool, True, f"{len(live)} live worker(s)", live)


class RemoteDispatcher:
    """Dispatches batches to the pools' ``run-step`` deployments (see the module docstring).

    Callable as the engine's ``dispatch``; `availability` is the router's pool check.

    Args:
        settings: The orchestrator's settings (poll interval, timeouts, grace, fallback policy,
            payload URL, retries).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._status: dict[str, tuple[float, PoolStatus]] = {}
        self._workers: dict[str, tuple[float, dict[str, Any]]] = {}

    # --- pool checks ----------------------------------------------------------------------------

    def availability(self, pool: str) -> tuple[bool, str]:
        """Whether ``pool`` can take work now, and why not (cached for a poll interval)."""
        status = self._pool_status(pool, max_age=max(self.settings.dispatch_poll_seconds, 1.0))
        return status.ok, status.reason

    def pool_status_cached(self, pool: str) -> PoolStatus | None:
        """The last status read for ``pool`` (refreshed when older than a poll interval)."""
        try:
            return self._pool_status(pool, max_age=max(self.settings.dispatch_poll_seconds, 1.0))
        except Exception:  # an API hiccup: the caller falls back to a default
            logger.debug("could not read the status of pool %s", pool, exc_info=True)
            return None

    def _pool_status(self, pool: str, max_age: float) -> PoolStatus:
        with self._lock:
            cached = self._status.get(pool)
        if cached is not None and time.monotonic() - cached[0] <= max_age:
            return cached[1]
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            status = pool_status(client, pool, self.settings.worker_grace_seconds)
        with self._lock:
            self._status[pool] = (time.monotonic(), status)
        return status

    def _worker_records(self, client: Any, pool: str) -> dict[str, Any]:
        with self._lock:
            cached = self._workers.get(pool)
        if cached is not None and time.monotonic() - cached[0] <= _WORKERS_TTL_S:
            return cached[1]
        records = {w.name: w for w in client.read_workers_for_work_pool(pool)}
        with self._lock:
            self._workers[pool] = (time.monotonic(), records)
        return records

    # --- dispatch -------------------------------------------------------------------------------

    def __call__(self, step: Any, rows: list[dict[str, Any]], decision: Any, batch_key: str) -> BatchResult:
        """Run one batch on ``decision.pool`` (the router's decision) and return its result."""
        return self.dispatch(step, rows, str(decision.pool), batch_key, getattr(decision, "timeout_s", None))

    def dispatch(
        self,
        step: Any,
        rows: list[dict[str, Any]],
        pool: str,
        batch_key: str,
        timeout_s: float | None = None,
        trace_context: dict[str, str] | None = None,
        resume_key: str | None = None,
    ) -> BatchResult:
        """Run one batch on ``pool``'s run-step deployment and return its result.

        The result's ``pool`` names the pool that actually ran it (after any fallback).
        ``trace_context`` (from `tasks.tracing.dispatch_span`) lets the worker continue the run's trace.
        ``resume_key`` (`flows.guards.resume.BatchJournals`) has the worker journal each row as it completes,
        so every attempt at the batch runs only the rows earlier attempts did not finish.

        Raises:
            PoolUnavailableError: The pool had no live worker for ``worker_grace_seconds`` and the
                policy is ``fail`` (or the general pool had none either).
            DispatchError: Every attempt failed, crashed or timed out (the message says how).
        """
        found = read_batch_result(batch_key)
        if found is not None:
            return found[1].model_copy(update={"reused": len(rows)})
        batch = write_payload(rows, name=f"batches/{batch_key}")
        parameters: dict[str, Any] = {
            "step": step.model_dump(mode="json"),
            "batch": batch.model_dump(mode="json"),
            "batch_key": batch_key,
        }
        if timeout_s is not None:
            parameters["timeout_s"] = timeout_s
        if trace_context:
            parameters["trace_context"] = trace_context
        if resume_key:  # only when given: a parameter set without it stays what it was
            parameters["resume_key"] = resume_key
        attempts = self.settings.task_retries + 1
        failures: list[str] = []
        while True:
            outcome, detail = self._run_once(step, pool, parameters, batch_key, len(failures) + 1)
            if outcome == "completed":
                found = read_batch_result(batch_key)
                if found is None:
                    raise DispatchError(
                        f"step {step.name!r}: run-step on pool {pool!r} completed but stored no result "
                        f"for batch {batch_key}"
                    )
                return found[1].model_copy(update={"pool": pool})
            if outcome == "no-worker":  # the batch never ran: reroute (or fail) by the policy
                pool = self._fallback(step, pool, detail)
                continue
            failures.append(f"attempt {len(failures) + 1}: {detail}")
            last = len(failures) >= attempts
            logger.warning(
                "step %s: batch %s on pool %s: %s; %s",
                step.name,
                batch_key[:12],
                pool,
                detail,
                "giving up" if last else "dispatching the same batch again",
            )
            if last:
                raise DispatchError(
                    f"step {step.name!r}: batch {batch_key} did not complete on pool {pool!r} after "
                    f"{attempts} attempt(s): {'; '.join(failures)}"
                )

    def _fallback(self, step: Any, pool: str, detail: str) -> str:
        from flows.engine.router import fallback_pool

        grace = self.settings.worker_grace_seconds
        why = f"no live worker for {grace:.0f} s ({detail})"
        try:
            chosen = fallback_pool(pool, why, self.settings, self.availability)
        except PoolUnavailableError:
            logger.error(
                "step %s: pool %r had no live worker for %.0f s; fallback policy %r: failing the batch",
                step.name,
                pool,
                grace,
                self.settings.fallback_policy,
            )
            raise
        logger.warning(
            "step %s: pool %r had no live worker for %.0f s (%s); fallback policy %r: "
            "re-dispatching the batch to pool %r",
            step.name,
            pool,
            grace,
            detail,
            self.settings.fallback_policy,
            chosen,
        )
        return chosen

    def _run_once(
        self, step: Any, pool: str, parameters: dict[str, Any], batch_key: str, attempt: int
    ) -> tuple[str, str]:
        from prefect.client.orchestration import get_client
        from prefect.deployments import run_deployment

        flow_run: Any = run_deployment(  # sync call from a thread: a FlowRun, not a coroutine
            RUN_STEP_DEPLOYMENT.format(pool=pool),
            parameters={**parameters, "pool": pool},
            timeout=0,
            flow_run_name=f"{step.name}-{batch_key[:8]}-{attempt}",
            tags=["dspex", f"pool:{pool}"],
        )
        with get_client(sync_client=True) as client:
            return self._wait(client, flow_run.id, pool)

    def _wait(self, client: Any, flow_run_id: Any, pool: str) -> tuple[str, str]:
        """Poll a run-step flow run until it completes, fails, loses its worker, or waits too long."""
        settings = self.settings
        started = time.monotonic()
        unserved_since: float | None = None
        silent_since: float | None = None
        while True:
            flow_run = client.read_flow_run(flow_run_id)
            state = flow_run.state
            kind = state.type.value if state is not None else "SCHEDULED"
            now = time.monotonic()
            if kind == "COMPLETED":
                return "completed", ""
            if kind in _TERMINAL_BAD:
                message = (state.message or "") if state is not None else ""
                return "failed", f"run {flow_run.name!r} ended {kind}" + (f": {message}" if message else "")
            if kind in _ACTIVE:
                unserved_since = None
                worker = (flow_run.labels or {}).get("prefect.worker.name")
                record = self._worker_records(client, pool).get(worker) if worker else None
                if (
                    worker
                    and record is not None
                    and worker_is_live(record, min_silence_s=settings.worker_grace_seconds)
                ):
                    silent_since = None
                elif not worker and kind != "PENDING":
                    silent_since = None  # running, but no worker named: nothing to watch but the timeout
                else:
                    # A worker's record can lag behind its first pick-up (SQLite under load): only
                    # silence that lasts the whole grace period counts as a dead worker. A run stuck
                    # PENDING that long (a worker that died between taking it and starting it) too.
                    silent_since = silent_since if silent_since is not None else now
                if silent_since is not None and now - silent_since >= settings.worker_grace_seconds:
                    self._crash(client, flow_run_id, f"worker {worker!r} stopped heartbeating")
                    return (
                        "failed",
                        f"worker {worker!r} of run {flow_run.name!r} stopped heartbeating ({kind})",
                    )
            elif kind in _WAITING:
                grace = settings.worker_grace_seconds
                live = any(
                    worker_is_live(w, min_silence_s=grace)
                    for w in self._worker_records(client, pool).values()
                )
                if live:
                    unserved_since = None
                else:
                    unserved_since = unserved_since if unserved_since is not None else now
                    if now - unserved_since >= settings.worker_grace_seconds:
                        self._cancel(client, flow_run_id, f"no live worker in pool {pool!r}")
                        return "no-worker", f"run {flow_run.name!r} was never picked up"
            if now - started >= settings.dispatch_timeout_seconds:
                self._crash(client, flow_run_id, f"timed out after {settings.dispatch_timeout_seconds:.0f} s")
                return (
                    "failed",
                    f"run {flow_run.name!r} timed out after {settings.dispatch_timeout_seconds:.0f} s",
                )
            time.sleep(settings.dispatch_poll_seconds)

    @staticmethod
    def _crash(client: Any, flow_run_id: Any, why: str) -> None:
        from prefect.states import Crashed

        client.set_flow_run_state(flow_run_id, Crashed(message=f"dspex dispatcher: {why}"), force=True)

    @staticmethod
    def _cancel(client: Any, flow_run_id: Any, why: str) -> None:
        from prefect.states import Cancelled

        client.set_flow_run_state(flow_run_id, Cancelled(message=f"dspex dispatcher: {why}"), force=True)


def remote_dispatcher(settings: Settings) -> RemoteDispatcher:
    """The dispatcher the pipeline flow uses in distributed mode."""
    return RemoteDispatcher(settings)
