"""The ``dspex`` worker type: a Prefect worker that runs flow runs warm, in its own process.

Prefect's process worker starts a fresh Python for every flow run; importing Prefect, DSPy and LiteLLM
costs seconds, more than a small batch's work. `DSPexWorker` (worker type ``"dspex"``) instead loads a
deployment's flow from its entrypoint once, keeps it, and runs each flow run in a thread of the
worker process with Prefect's own flow engine (``prefect.flow_engine.run_flow`` given the flow run),
so states, logs, retries and results are reported exactly as in any other run. Caches stay warm
between runs too: built modules, the retrieval index, the DSPy cache.

The trade-off is isolation: flow runs share the worker's process and environment (set once when it
starts, see `worker_environment`), and the flow code must be importable there (the worker runs from
the project's checkout, or with the project installed). The plain alternative, one process per run,
is ``prefect worker start --pool NAME --type process`` on a pool created with ``--type process``.

The type is registered the way Prefect collections register theirs (a ``prefect.collections`` entry
point in ``pyproject.toml`` naming this module), so Prefect's own ``prefect worker start --pool
general`` finds it. Started that way, the worker applies the same defaults ``dspex worker`` sets
(`apply_worker_defaults`): fast polling and heartbeats, a DSPy cache folder of its own, no GPU outside
the gpu pool, and no flow-run heartbeats; a variable the user set explicitly always wins.

Stopping (issue 26.7): Prefect's ``prefect worker start`` turns SIGTERM into a SIGINT that its own
handlers absorbed, so the worker kept polling and never exited. A dspex worker handles SIGTERM and
SIGINT itself: it takes no new run, waits up to ``DSPEX_WORKER_STOP_SECONDS`` (10 s) for the runs it
has, marks the ones still going Crashed (so their batches are re-dispatched at once, not after the
dead-worker grace) and exits; a second signal exits at once.

Queues named with ``--work-queue`` that the pool lacks are created when the worker starts (a session
affinity queue of its own, docs/deployment.md section 11): Prefect's server refuses a poll that names a
missing queue, so without them the worker would take no run at all, not even from ``default``.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from prefect.workers.base import BaseJobConfiguration, BaseVariables, BaseWorker, BaseWorkerResult

import dspex.bootstrap  # noqa: F401  (DSPex's Prefect defaults; they reach a Prefect loaded first too)
from deployments.database import SQLITE_WORKERS, server_database
from dspex.exceptions import ConfigurationError
from dspex.settings import Settings

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun
    from prefect.flows import Flow

logger = logging.getLogger(__name__)

__all__ = [
    "DSPexJobConfiguration",
    "DSPexVariables",
    "DSPexWorker",
    "DSPexWorkerResult",
    "WorkerOptions",
    "apply_worker_defaults",
    "disable_flow_heartbeats",
    "load_entrypoint",
    "worker_environment",
]

#: Poll and heartbeat intervals of a dspex worker unless the user set Prefect's own variables.
DEFAULT_QUERY_SECONDS = 0.5
DEFAULT_HEARTBEAT_SECONDS = 5
#: Flows a dspex worker imports as soon as it starts, so its first batch does not pay for importing
#: DSPy and LiteLLM (seconds): the run-step flow every pool runs.
#: Flow modules that moved when ``flows/`` was laid out by concept (issue 22): deployments made
#: before still name the old module, and a dspex worker runs them from the new one.
MOVED_ENTRYPOINTS = {
    "flows.step_runner": "flows.engine.step_runner",
    "flows.session_flows": "flows.sessions.turns",
}
PRELOAD_ENTRYPOINTS = ("flows/engine/step_runner.py:run_step",)


class DSPexJobConfiguration(BaseJobConfiguration):
    """Job configuration of a dspex pool (the base fields: env, labels, name; runs share the process)."""


class DSPexVariables(BaseVariables):
    """Job variables of a dspex pool (the base ones)."""


class DSPexWorkerResult(BaseWorkerResult):
    """The outcome of one flow run on a dspex worker (status 0 unless the engine itself crashed)."""


def load_entrypoint(entrypoint: str) -> Flow[..., Any]:
    """Import the flow an entrypoint names, as a module import so module state is shared.

    ``flows/engine/step_runner.py:run_step`` and ``flows.engine.step_runner:run_step`` both import
    ``flows.engine.step_runner`` (a path is turned into a module name), so the flow and its module's caches
    are the very objects the rest of the worker process uses.

    Raises:
        ConfigurationError: The entrypoint is malformed, cannot be imported, or is not a flow.
    """
    from prefect.flows import Flow

    module_part, sep, attr = entrypoint.partition(":")
    if not sep or not module_part or not attr:
        raise ConfigurationError(
            f"flow entrypoint {entrypoint!r} must look like 'path/to/file.py:flow_function'"
        )
    if module_part.endswith(".py"):
        module_part = Path(module_part).with_suffix("").as_posix().strip("/").replace("/", ".")
    if module_part in MOVED_ENTRYPOINTS:  # a deployment made before flows/ moved into subpackages
        moved = MOVED_ENTRYPOINTS[module_part]
        logger.warning(
            "flow entrypoint %r names a module that moved to %s: run `dspex deploy` to update it",
            entrypoint,
            moved,
        )
        module_part = moved
    try:
        module = importlib.import_module(module_part)
        found = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"cannot load flow entrypoint {entrypoint!r}: {exc}") from exc
    if not isinstance(found, Flow):
        raise ConfigurationError(f"entrypoint {entrypoint!r} is a {type(found).__name__}, not a Prefect flow")
    return found


class DSPexWorker(BaseWorker[DSPexJobConfiguration, DSPexVariables, DSPexWorkerResult]):
    """A Prefect worker that runs each flow run in a thread of its own, warm, process.

    Args:
        work_pool_name: The pool to poll.
        limit: Most flow runs at once in this worker (threads); default 8.
        **kwargs: Passed to ``prefect.workers.base.BaseWorker``.
    """

    type = "dspex"
    job_configuration = DSPexJobConfiguration
    job_configuration_variables = DSPexVariables
    _description = "Runs DSPex flow runs in threads of a warm worker process (fast dispatch)."
    _display_name = "DSPex (warm process)"
    _documentation_url = "https://github.com/dspex/dspex-prefect/blob/main/docs/deployment.md"

    def __init__(self, work_pool_name: str, limit: int | None = 8, **kwargs: Any) -> None:
        super().__init__(work_pool_name, limit=limit, **kwargs)
        if "PREFECT_WORKER_HEARTBEAT_SECONDS" not in os.environ:
            self.heartbeat_interval_seconds = DEFAULT_HEARTBEAT_SECONDS
        apply_worker_defaults(work_pool_name, self.name)
        self._flows: dict[str, Flow[..., Any]] = {}
        self._flows_lock = threading.Lock()
        # One entrypoint import at a time: the preload and a first run importing `flows` in two
        # threads at once saw a half-initialised module (ImportError) and the run failed to start.
        self._import_lock = threading.Lock()
        self._queues_ready = False
        self._database_checked = False
        self._threads = ThreadPoolExecutor(max_workers=max(limit or 8, 1), thread_name_prefix="dspex-run")
        self._active: dict[str, FlowRun] = {}  # flow run id -> run, while its thread runs it
        self._stopping = False
        self._stopped = threading.Event()
        self._main_task: asyncio.Task[Any] | None = None

    async def start(self, *args: Any, **kwargs: Any) -> None:
        """Start polling (every `DEFAULT_QUERY_SECONDS` unless ``PREFECT_WORKER_QUERY_SECONDS`` is set)."""
        from prefect.settings import PREFECT_WORKER_QUERY_SECONDS, temporary_settings

        disable_flow_heartbeats()
        threading.Thread(target=self._preload, name="dspex-preload", daemon=True).start()
        self._handle_stop_signals()
        try:
            if "PREFECT_WORKER_QUERY_SECONDS" in os.environ:
                await super().start(*args, **kwargs)
                return
            with temporary_settings(updates={PREFECT_WORKER_QUERY_SECONDS: DEFAULT_QUERY_SECONDS}):
                await super().start(*args, **kwargs)
        finally:
            self._stopped.set()

    def _handle_stop_signals(self) -> None:
        """Replace Prefect's SIGTERM/SIGINT forwarding (see the module docstring) with `_on_stop_signal`."""
        if threading.current_thread() is not threading.main_thread():
            return  # a worker started in a test's thread: signals are not ours to take
        loop = asyncio.get_running_loop()
        self._main_task = asyncio.current_task()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)

    def _on_stop_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._stopping:
            self._logger.warning("second %s: exiting now", name)
            os._exit(128 + signum)
        from dspex.settings import get_settings

        self._stopping = True
        grace = get_settings().worker_stop_seconds
        self._logger.info(
            "%s: taking no new runs; waiting up to %.0f s for %d running flow run(s), then exiting",
            name,
            grace,
            len(self._active),
        )
        threading.Thread(target=self._exit_after, args=(grace,), name="dspex-stop", daemon=True).start()
        if self._main_task is not None:
            self._main_task.cancel()

    def _exit_after(self, grace: float) -> None:
        """Wait for the running flow runs (up to ``grace``), crash the rest, and end the process."""
        deadline = time.monotonic() + grace
        while self._active and time.monotonic() < deadline:
            time.sleep(0.1)
        left = list(self._active.values())
        if left:
            _crash_runs(left, f"its dspex worker stopped (signal) before it finished; grace {grace:.0f} s")
        # The worker's own teardown (deregistering, closing clients) may finish meanwhile; threads
        # still running flows would hold the interpreter's exit forever, so the process ends here.
        self._stopped.wait(timeout=3.0)
        os._exit(1 if left else 0)

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        """Prefect's poll, skipped once the worker is stopping (no new run is taken)."""
        if self._stopping:
            return []
        return await super().get_and_submit_flow_runs()

    async def sync_with_backend(self) -> None:
        """Create the missing ``--work-queue`` queues (until that succeeds), then Prefect's own sync."""
        if not self._queues_ready:
            self._queues_ready = await self._ensure_work_queues()
        await super().sync_with_backend()
        if not self._database_checked and self._work_pool is not None:
            self._database_checked = True  # once per worker: a SQLite server cannot hold workers (issue 20)
            await self._warn_if_sqlite()

    async def _warn_if_sqlite(self) -> None:
        try:
            answer = await self.client._client.get("/admin/settings")  # no public method in 3.8.8
            admin = answer.json() if answer.status_code == 200 else None
        except Exception:  # unknown is not an error: this check never stops a worker
            admin = None
        assert self._work_pool is not None
        if server_database(admin, [self._work_pool.base_job_template]) == "sqlite":
            self._logger.warning(SQLITE_WORKERS.format(url=str(self.client.api_url).rstrip("/")))

    async def _ensure_work_queues(self) -> bool:
        """Create the queues this worker polls that its pool lacks; warn when the affinity queue is not one.

        Prefect 3.8.8's server answers a poll naming a missing queue with 404 for the whole poll, and
        its worker takes that as "no runs": ``prefect worker start --pool general --work-queue default
        --work-queue worker-a`` would register, heartbeat, and never run anything.

        Returns:
            Whether the queues are all there (False while the pool itself is missing: retried at the
            next sync, after Prefect's own sync may have created the pool).
        """
        from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

        from dspex.settings import get_settings

        affinity = get_settings().session_affinity_queue
        if affinity and self._work_queues and affinity not in self._work_queues:
            self._logger.warning(
                "DSPEX_SESSION_AFFINITY_QUEUE=%s but this worker polls only %s: session turns sent to "
                "that queue wait for a worker that polls it (add --work-queue %s)",
                affinity,
                sorted(self._work_queues),
                affinity,
            )
        for name in sorted(self._work_queues):
            try:
                await self.client.read_work_queue_by_name(name, work_pool_name=self._work_pool_name)
                continue
            except ObjectNotFound:
                pass
            try:
                await self.client.create_work_queue(name=name, work_pool_name=self._work_pool_name)
            except ObjectAlreadyExists:  # another worker created it meanwhile
                continue
            except ObjectNotFound:  # no such pool (yet)
                return False
            self._logger.info("created work queue %r in pool %r", name, self._work_pool_name)
        return True

    async def teardown(self, *exc_info: Any) -> None:
        """Stop the run threads after the base worker's own cleanup."""
        await super().teardown(*exc_info)
        self._threads.shutdown(wait=False, cancel_futures=True)

    def _preload(self) -> None:
        """Import the `PRELOAD_ENTRYPOINTS` flows in the background while the worker registers."""
        for entrypoint in PRELOAD_ENTRYPOINTS:
            try:
                self._load(entrypoint)
            except ConfigurationError as exc:  # not this project's checkout: the first run imports it
                self._logger.warning("could not preload %s: %s", entrypoint, exc)

    def _load(self, entrypoint: str) -> Flow[..., Any]:
        """The flow of ``entrypoint``, imported once (under the import lock)."""
        with self._import_lock:
            with self._flows_lock:
                cached = self._flows.get(entrypoint)
            if cached is None:
                cached = load_entrypoint(entrypoint)
                with self._flows_lock:
                    self._flows[entrypoint] = cached
            return cached

    async def _flow_for(self, flow_run: FlowRun) -> Flow[..., Any]:
        if flow_run.deployment_id is None:
            raise ConfigurationError(
                f"flow run {flow_run.id} has no deployment; a worker only runs deployments"
            )
        deployment = await self.client.read_deployment(flow_run.deployment_id)
        if not deployment.entrypoint:
            raise ConfigurationError(f"deployment {deployment.name!r} has no entrypoint")
        with self._flows_lock:
            cached = self._flows.get(deployment.entrypoint)
        if cached is None:  # in a thread: it may wait for the preload's import to finish
            cached = await anyio.to_thread.run_sync(self._load, deployment.entrypoint)
        return cached

    async def run(
        self,
        flow_run: FlowRun,
        configuration: DSPexJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> DSPexWorkerResult:
        """Run ``flow_run`` in a thread of this process and wait for it.

        The engine reports the run's states itself; a non-zero status only means the engine could not
        run at all (the worker then marks the run CRASHED).
        """
        flow = await self._flow_for(flow_run)
        if task_status is not None:
            task_status.started(os.getpid())
        loop = asyncio.get_running_loop()
        self._active[str(flow_run.id)] = flow_run
        # A fresh context: the run must not inherit the worker loop's client or settings contexts.
        status = await loop.run_in_executor(
            self._threads, contextvars.Context().run, self._run_tracked, flow, flow_run
        )
        return DSPexWorkerResult(identifier=str(flow_run.id), status_code=status)

    def _run_tracked(self, flow: Flow[..., Any], flow_run: FlowRun) -> int:
        # Active until its thread ends: a stopping worker's loop cancels `run`, not the thread.
        try:
            return _run_flow_run(flow, flow_run)
        finally:
            self._active.pop(str(flow_run.id), None)


def _crash_runs(runs: list[FlowRun], message: str) -> None:
    """Mark ``runs`` Crashed (best effort, a few seconds at most): the worker is leaving them."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    try:
        with get_client(sync_client=True) as client:
            for run in runs:
                client.set_flow_run_state(run.id, Crashed(message=message), force=True)
    except Exception:  # the process ends anyway; the dispatcher's dead-worker check covers the rest
        return


def _run_flow_run(flow: Flow[..., Any], flow_run: FlowRun) -> int:
    from prefect.flow_engine import run_flow

    try:
        run_flow(flow, flow_run=flow_run, return_type="state")
    except Exception:  # the engine failed outside the flow (it logged why): the worker crashes the run
        return 1
    return 0


def disable_flow_heartbeats() -> None:
    """Turn off flow-run heartbeats in this process (a dspex worker's runs are watched through its own).

    A sync flow joins its heartbeat thread when it ends (~1 s per run, DESIGN.md); the dispatcher
    watches the *worker's* heartbeats instead. Prefect's setting cannot be None from the environment,
    hence the root-context copy.
    """
    import prefect.context
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    root = prefect.context.GLOBAL_SETTINGS_CONTEXT
    settings = root.settings.copy_with_update(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
    prefect.context.GLOBAL_SETTINGS_CONTEXT = prefect.context.SettingsContext(
        profile=root.profile, settings=settings
    )


def apply_worker_defaults(pool: str, name: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Set, in this process, the `worker_environment` variables the user did not set (DSPy cache, GPUs).

    ``dspex worker`` sets them before the process starts; ``prefect worker start --pool NAME`` does
    not, so the worker sets the missing ones when it is built, before it imports DSPy or torch.

    Args:
        pool: The pool the worker serves.
        name: The worker's name.
        environ: The environment to update (default ``os.environ``).

    Returns:
        The variables that were set.
    """
    from dspex.settings import get_settings

    target = os.environ if environ is None else environ
    wanted = worker_environment(WorkerOptions(pool, name), get_settings(), base={})
    applied: dict[str, str] = {}
    for key in ("DSPY_CACHEDIR", "CUDA_VISIBLE_DEVICES"):
        if key in wanted and key not in target:
            target[key] = applied[key] = wanted[key]
    return applied


class WorkerOptions:
    """The environment one worker process runs with (see `worker_environment`).

    Args:
        pool: The pool it serves.
        name: The worker's name (unique per machine; used for its DSPy cache folder).
        query_seconds: How often it asks the server for runs (Prefect's default is 15 s).
        heartbeat_seconds: How often it heartbeats (a dead worker is noticed after three misses).
        gpus: ``CUDA_VISIBLE_DEVICES`` for a gpu worker; None passes the caller's value through.
    """

    def __init__(
        self,
        pool: str,
        name: str,
        *,
        query_seconds: float = 0.5,
        heartbeat_seconds: int = 5,
        gpus: str | None = None,
    ) -> None:
        self.pool = pool
        self.name = name
        self.query_seconds = query_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.gpus = gpus


def worker_environment(
    options: WorkerOptions, settings: Settings, base: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment variables a worker for ``options.pool`` sets before it starts.

    * ``DSPY_CACHEDIR``: a folder per worker under ``<DSPEX_HOME>/dspy-cache`` (DSPy's disk cache
      locks under concurrent processes and ignores ``api_base`` in its key; DESIGN.md);
    * ``CUDA_VISIBLE_DEVICES``: passed through (or ``options.gpus``) for the gpu pool, empty for the
      other pools so they never take a GPU from it;
    * ``PREFECT_WORKER_QUERY_SECONDS`` / ``PREFECT_WORKER_HEARTBEAT_SECONDS``: fast pick-up, and a dead
      worker noticed in seconds.

    ``DSPEX_MODE`` is left alone: an orchestrating flow (run-pipeline, rag-qa, ...) that a worker runs
    decides its mode itself (`flows.engine.modes`), and a run-step batch never dispatches again whatever the
    mode (it runs on the worker's own pool executor).

    Args:
        options: The worker's options.
        settings: The worker's settings.
        base: The current environment (default ``os.environ``); values in it are kept unless listed above.
    """
    env = dict(os.environ if base is None else base)
    safe_name = "".join(c if c.isalnum() or c in "-_." else "-" for c in options.name)
    cache = (settings.home / "dspy-cache" / f"{options.pool}-{safe_name}").resolve()
    env["DSPY_CACHEDIR"] = str(cache)
    if options.pool == "gpu":
        if options.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = options.gpus
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""
    env["PREFECT_WORKER_QUERY_SECONDS"] = str(options.query_seconds)
    env["PREFECT_WORKER_HEARTBEAT_SECONDS"] = str(options.heartbeat_seconds)
    return env
