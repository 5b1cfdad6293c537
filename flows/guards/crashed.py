"""Flow runs whose process died: recorded when they start, marked Crashed when the next one starts.

A process killed outright (SIGKILL, an OOM kill, a closed laptop) runs no Prefect hook: its flow runs
stay Running in the database forever (issue 25). So every pipeline run records its flow run ids
(its own, and its parent's and root's when it is a subflow) in its process's file
``<home>/runs/<pid>-<start time>.json`` (the newest `KEEP_RUNS` of a long-lived process: a warm
runner, a worker); the next pipeline run started on this machine (``dspex run``,
``run_pipeline``, a deployment on the same host) looks at those files first, and each one whose
process is gone while its flow runs are still Pending/Running gets a Crashed state (message: the
process id and that it died). Finished runs' files are simply removed.

A process is matched by its id *and* its start time (Linux ``/proc``), so a recycled pid is not
taken for the old process. Marking is best effort: a failure is logged, never raised.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

from dspex.settings import Settings

__all__ = ["KEEP_RUNS", "mark_dead_runs_crashed", "process_alive", "record_run"]

logger = logging.getLogger("dspex.crashed")

_FOLDER = "runs"
#: Flow run ids a process's record keeps (the newest): older runs of a long-lived process have ended.
KEEP_RUNS = 200
_LOCK = threading.Lock()  # runs of one process record in parallel threads


def _started(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' where /proc is not there)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # Field 22 (starttime), counted after the command name, which may contain spaces.
    return stat.rsplit(")", 1)[-1].split()[19]


def process_alive(pid: int, started: str = "") -> bool:
    """Whether process ``pid`` still runs (and, when ``started`` is given, is the same process)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    return not started or _started(pid) in ("", started)


def _api() -> str:
    """Which Prefect database this process's runs are in: its API URL, or the embedded server's home."""
    return os.environ.get("PREFECT_API_URL") or f"home:{os.environ.get('PREFECT_HOME', '')}"


def _folder(settings: Settings) -> Path:
    return (settings.home / _FOLDER).resolve()


def record_run(settings: Settings, run_ids: list[str]) -> Path | None:
    """Record that this process runs the flow runs ``run_ids`` (added to its process's file).

    Returns:
        The file written, or None when there was nothing to record or it could not be written.
    """
    ids = [i for i in dict.fromkeys(run_ids) if i]
    if not ids:
        return None
    folder = _folder(settings)
    pid = os.getpid()
    started = _started(pid)
    path = folder / f"{pid}-{started or 'x'}.json"
    with _LOCK:
        try:
            known = json.loads(path.read_text()).get("runs") or []
        except (OSError, ValueError, AttributeError):
            known = []
        record = {
            "pid": pid,
            "started": started,
            "host": socket.gethostname(),
            "api": _api(),
            "runs": list(dict.fromkeys([*known, *ids]))[-KEEP_RUNS:],
        }
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = folder / f".{uuid.uuid4().hex}.tmp"
            # Owner-only like everything under the home (issue 25).
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
                json.dump(record, handle)
            os.replace(tmp, path)
        except OSError as exc:
            logger.warning("could not record flow run %s for crash detection: %s", ids[0], exc)
            return None
    return path


def _dead_records(settings: Settings) -> list[tuple[Path, dict[str, Any]]]:
    folder = _folder(settings)
    if not folder.is_dir():
        return []
    host, api = socket.gethostname(), _api()
    dead = []
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text())
            pid = int(record["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            with contextlib.suppress(OSError):
                path.unlink()  # unreadable: nothing to act on
            continue
        if record.get("host") != host or record.get("api") != api:
            continue  # another machine's process, or another server's runs: not ours to judge
        if not process_alive(pid, str(record.get("started") or "")):
            dead.append((path, record))
    return dead


def mark_dead_runs_crashed(settings: Settings) -> list[str]:
    """Mark the unfinished flow runs of processes that died as Crashed; remove their records.

    Returns:
        The ids of the flow runs marked Crashed.
    """
    dead = _dead_records(settings)
    if not dead:
        return []
    # Imported here: only a run that finds a dead process's record needs a Prefect client.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.states import Crashed

    marked: list[str] = []
    try:
        with get_client(sync_client=True) as client:
            for path, record in dead:
                ids = [uuid.UUID(i) for i in record.get("runs") or []]
                runs = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=len(ids)
                )
                for run in runs:
                    if run.state is not None and not run.state.is_final():
                        message = f"its process (pid {record['pid']}) died without ending it"
                        client.set_flow_run_state(run.id, Crashed(message=message), force=True)
                        marked.append(str(run.id))
                        logger.warning("flow run %s (%s) marked Crashed: %s", run.name, run.id, message)
                with contextlib.suppress(OSError):
                    path.unlink()
    except Exception as exc:  # best effort: the new run must not fail because of an old one
        logger.warning("could not mark dead flow runs Crashed: %s", exc)
    return marked
