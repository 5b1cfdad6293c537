"""One local Prefect server shared by CLI runs and ``dspex ui``, started on first use, stopped when idle.

Without it every ``dspex run`` process starts Prefect's embedded server (15-20 s on two cores) and
its runs are visible only after the fact. With it (``DSPEX_SHARED_SERVER``, on by default) the first
CLI command starts ``prefect server start`` on ``127.0.0.1`` under a small supervisor process
(``python -m dspex.local_server``) in the project's ``<DSPEX_HOME>/server/``, on the project's own
Prefect database; later commands find it through ``server.json``, check ``/api/health``, and point
``PREFECT_API_URL`` at it, so a warm run starts in about the time Python takes to import, and shows
up live in the UI (``dspex ui`` opens the same server).

When it is *not* used: the user set ``PREFECT_API_URL`` (their server always wins), under pytest
(``PYTEST_CURRENT_TEST``, inherited by subprocesses too) unless a test passes ``force=True``, or
``DSPEX_SHARED_SERVER=false``. It stops itself: each client process leaves its pid under
``clients/`` while it runs, and the supervisor stops the server once no client is alive and none
has started for ``DSPEX_SHARED_SERVER_IDLE_SECONDS`` (so a fresh CI clone never leaves one behind
for long, and no test run starts one at all). ``dspex server stop`` stops it at once.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from dspex.exceptions import ConfigurationError
from dspex.settings import Settings, get_settings

__all__ = ["server_dir", "server_status", "shared_server_wanted", "stop_shared_server", "use_shared_server"]

_STARTUP_TIMEOUT_S = 120.0
_CHECK_EVERY_S = 2.0


def server_dir(settings: Settings | None = None) -> Path:
    """Where the shared server keeps its state: ``<DSPEX_HOME>/server``."""
    return (settings or get_settings()).home.resolve() / "server"


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:  # noqa: S310 (loopback)
            return bool(response.status == 200)
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def server_status(settings: Settings | None = None) -> dict[str, Any] | None:
    """The running shared server's state (``url``, ``pid``, ``port``, ``started_at``), or None."""
    state_file = server_dir(settings) / "server.json"
    try:
        state: dict[str, Any] = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not _pid_alive(int(state.get("pid", 0))) or not _healthy(str(state.get("url"))):
        return None
    return state


def shared_server_wanted(settings: Settings, force: bool = False) -> bool:
    """Whether this process should use the shared server (see the module docstring)."""
    if os.environ.get("PREFECT_API_URL"):
        return False  # the user's own server always wins
    if force:
        return True
    return settings.shared_server and "PYTEST_CURRENT_TEST" not in os.environ


def use_shared_server(*, force: bool = False, settings: Settings | None = None) -> str | None:
    """Point this process's Prefect client at the shared local server, starting it when needed.

    Call it before the first flow run (the CLI does). This process counts as a client until it exits.

    Args:
        force: Use it even under pytest or with ``DSPEX_SHARED_SERVER=false`` (never over a
            user's ``PREFECT_API_URL``).
        settings: Effective settings.

    Returns:
        The API URL in use, or None when the shared server is not used (see the module docstring).

    Raises:
        ConfigurationError: The server did not come up (its log is named).
    """
    settings = settings or get_settings()
    if not shared_server_wanted(settings, force):
        return None
    folder = server_dir(settings)
    (folder / "clients").mkdir(parents=True, exist_ok=True)
    _register_client(folder)
    with _start_lock(folder):
        state = server_status(settings) or _start(settings, folder)
        if settings.warm_runner and "PYTEST_CURRENT_TEST" not in os.environ:
            _ensure_runner(settings, folder)
    url = str(state["url"])
    os.environ["PREFECT_API_URL"] = url
    import prefect.context

    prefect.context.refresh_global_settings_context()
    return url


def stop_shared_server(settings: Settings | None = None, timeout: float = 20.0) -> bool:
    """Stop the shared server now; True when one was running."""
    folder = server_dir(settings)
    try:
        state = json.loads((folder / "server.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    with contextlib.suppress(OSError, ValueError):  # the warm runner goes with the server
        os.kill(int((folder / "runner.pid").read_text(encoding="utf-8")), signal.SIGTERM)
    supervisor = int(state.get("supervisor", 0))
    if not supervisor or not _pid_alive(supervisor):
        return False
    os.kill(supervisor, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(supervisor) and time.monotonic() < deadline:
        time.sleep(0.1)
    return True


# --- clients and start ------------------------------------------------------------------------


def _register_client(folder: Path) -> None:
    marker = folder / "clients" / str(os.getpid())
    marker.touch()
    (folder / "last_used").touch()

    def release() -> None:
        with contextlib.suppress(OSError):
            marker.unlink()
        with contextlib.suppress(OSError):
            (folder / "last_used").touch()

    atexit.register(release)


@contextlib.contextmanager
def _start_lock(folder: Path) -> Any:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "start.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # one process starts it; the others wait, then reuse it
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise ConfigurationError("no free port for the shared Prefect server")


def _start(settings: Settings, folder: Path) -> dict[str, Any]:
    port = _free_port(settings.shared_server_port)
    log = folder / "server.log"
    command = [
        sys.executable,
        "-m",
        "dspex.local_server",
        str(port),
        str(settings.shared_server_idle_seconds),
    ]
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    env["PREFECT_HOME"] = os.environ.get("PREFECT_HOME") or str(settings.resolved_prefect_home)
    with log.open("ab") as out:
        subprocess.Popen(  # noqa: S603 (this interpreter, our own module)
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,  # outlives this command; Ctrl+C here does not reach it
            cwd=str(Path.cwd()),
        )
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        state = server_status(settings)
        if state is not None:
            return state
        time.sleep(0.2)
    raise ConfigurationError(
        f"the shared Prefect server did not start within {_STARTUP_TIMEOUT_S:.0f} s; see {log}"
    )


def _ensure_runner(settings: Settings, folder: Path) -> None:
    """Start the warm runner (`dspex.warm_runner`) next to the server unless one is up; it gets
    the environment this process started with, so it takes the commands of this shell."""
    from dspex.bootstrap import original_environment
    from dspex.warm_runner import runner_alive

    if runner_alive(settings.home):
        return
    env = {k: v for k, v in original_environment().items() if k != "PYTEST_CURRENT_TEST"}
    with (folder / "runner.log").open("ab") as out:
        subprocess.Popen(  # noqa: S603 (this interpreter, our own module)
            [sys.executable, "-m", "dspex.warm_runner", str(settings.shared_server_idle_seconds)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            cwd=str(Path.cwd()),
        )


# --- the supervisor (python -m dspex.local_server PORT IDLE) ----------------------------------


def _live_clients(folder: Path) -> int:
    alive = 0
    for marker in (folder / "clients").glob("*"):
        if marker.name.isdigit() and _pid_alive(int(marker.name)):
            alive += 1
        else:
            with contextlib.suppress(OSError):
                marker.unlink()
    return alive


def _supervise(port: int, idle_s: float) -> int:
    """Run ``prefect server start`` and stop it once no client is alive and none came for ``idle_s``."""
    settings = get_settings()
    folder = server_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "clients").mkdir(exist_ok=True)
    env = dict(os.environ)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    env.pop("PREFECT_API_URL", None)
    prefect = str(Path(sys.executable).with_name("prefect"))
    server = subprocess.Popen(  # noqa: S603 (our own venv's prefect)
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env
    )
    stopping = False

    def stop(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    url = f"http://127.0.0.1:{port}/api"
    state_file = folder / "server.json"
    published = False
    try:
        while not stopping and server.poll() is None:
            if not published and _healthy(url):
                state = {
                    "url": url,
                    "port": port,
                    "pid": server.pid,
                    "supervisor": os.getpid(),
                    "started_at": time.time(),
                }
                tmp = state_file.with_suffix(".tmp")
                tmp.write_text(json.dumps(state), encoding="utf-8")
                tmp.replace(state_file)  # readers never see half a file
                published = True
            if published and _live_clients(folder) == 0:
                try:
                    idle = time.time() - (folder / "last_used").stat().st_mtime
                except OSError:
                    idle = idle_s + 1
                if idle > idle_s:
                    break
            time.sleep(_CHECK_EVERY_S)
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(state_file.read_text(encoding="utf-8")).get("supervisor") == os.getpid():
                state_file.unlink()
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(_supervise(int(sys.argv[1]), float(sys.argv[2])))
