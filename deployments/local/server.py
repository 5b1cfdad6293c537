"""One local Prefect server shared by CLI runs and ``dspex ui``, started on first use, stopped when idle.

Without it every ``dspex run`` process starts Prefect's embedded server (15-20 s on two cores) and
its runs are visible only after the fact. With it (``DSPEX_SHARED_SERVER``, on by default) the first
CLI command starts ``prefect server start`` on ``127.0.0.1`` under a small supervisor process
(``python -m deployments.local.server``) in the project's ``<DSPEX_HOME>/server/``, on the project's own
Prefect database; later commands find it through ``server.json``, check ``/api/health``, and point
``PREFECT_API_URL`` at it, so a warm run starts in about the time Python takes to import, and shows
up live in the UI (``dspex ui`` opens the same server).

When it is *not* used: the user set ``PREFECT_API_URL`` (their server always wins), under pytest
(``PYTEST_CURRENT_TEST``, inherited by subprocesses too) unless a test passes ``force=True``, or
``DSPEX_SHARED_SERVER=false``. It stops itself: each client process leaves its pid under
``clients/`` while it runs, and the supervisor stops the server once no client is alive and none
has started for ``DSPEX_SHARED_SERVER_IDLE_SECONDS`` (so a fresh CI clone never leaves one behind
for long, and no test run starts one at all). ``dspex server stop`` stops it at once.

Only its owner can use it (issue 20): the server folder is 0700, and the server starts with basic
auth (Prefect's ``PREFECT_SERVER_API_AUTH_STRING``) on a random secret kept in ``<folder>/auth``
(0600, made once, reused by later starts so a browser login stays valid). Every client of it (CLI
runs, the warm runner, ``dspex worker``/``pools``/``deploy`` pointed at its URL) sends it as
``PREFECT_API_AUTH_STRING`` (`use_shared_server`, `authenticate_for_shared_server`); any other local
account gets ``401`` from every endpoint but ``/api/health``. The helper processes it starts run with
``python -P``: the folder the user typed the command in is never on their ``sys.path`` (issue 23).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from dspex.exceptions import ConfigurationError
from dspex.private import make_private_dirs
from dspex.settings import Settings, get_settings

__all__ = [
    "AUTH_USER",
    "RUNNER_MODULE",
    "auth_file",
    "authenticate_for_shared_server",
    "private_folder",
    "runner_alive",
    "server_dir",
    "server_status",
    "shared_server_wanted",
    "socket_path",
    "stop_shared_server",
    "use_shared_server",
]

#: The user part of the shared server's ``user:password`` auth string.
AUTH_USER = "dspex"
#: What ``python -m`` runs to start the warm runner next to the server: the CLI's side of it, which
#: hands the runner the CLI to serve (`deployments.local.warm_runner` never imports the CLI).
RUNNER_MODULE = "deployments.console"

_STARTUP_TIMEOUT_S = 120.0
_CHECK_EVERY_S = 2.0


def server_dir(settings: Settings | None = None) -> Path:
    """Where the shared server keeps its state: ``<DSPEX_HOME>/server``."""
    return (settings or get_settings()).home.resolve() / "server"


def auth_file(settings: Settings | None = None) -> Path:
    """The owner-only file holding the shared server's auth string (``user:password``)."""
    return server_dir(settings) / "auth"


def socket_path(home: Path) -> Path:
    """The warm runner's socket under a project's ``DSPEX_HOME`` (in the server folder)."""
    return home.resolve() / "server" / "runner.sock"


def runner_alive(home: Path) -> bool:
    """Whether a warm runner is up for the project under ``home``."""
    pid_file = socket_path(home).parent / "runner.pid"
    try:
        pid = int(pid_file.read_text(encoding="utf-8"))
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    with contextlib.suppress(OSError, IndexError):
        # A killed runner whose parent is gone can stay a zombie where nothing reaps orphans (a
        # container's init): it still "exists" for kill(0) but will never answer; start another.
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return socket_path(home).exists()


def private_folder(folder: Path) -> Path:
    """Create ``folder`` owner-only (0700), or make it so; refuse one another account owns.

    Raises:
        ConfigurationError: The folder belongs to another user (it could swap the files in it).
    """
    make_private_dirs(folder)  # missing parents too (a new .dspex), whatever the umask
    info = folder.stat()
    if info.st_uid != os.getuid():
        raise ConfigurationError(
            f"{folder} belongs to user id {info.st_uid}, not to this user ({os.getuid()}): "
            "DSPex keeps its server's secret there and will not use it"
        )
    if info.st_mode & 0o077:
        folder.chmod(0o700)
    return folder


def _auth_string(folder: Path, create: bool = False) -> str | None:
    """The server's auth string from ``<folder>/auth``; made (0600, random) when ``create``."""
    path = folder / "auth"
    if create:
        private_folder(folder)
        secret = f"{AUTH_USER}:{secrets.token_urlsafe(32)}"
        with contextlib.suppress(FileExistsError):  # made once; later starts reuse it
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(secret)
    try:
        info = path.stat()
        if info.st_uid != os.getuid():
            return None  # not ours: never send a secret someone else chose
        if info.st_mode & 0o077:
            path.chmod(0o600)
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _authenticate(folder: Path) -> None:
    """Send the shared server's auth string from this process (its Prefect clients)."""
    secret = _auth_string(folder)
    if secret is None:
        raise ConfigurationError(f"the shared Prefect server's auth file {folder / 'auth'} is unreadable")
    os.environ["PREFECT_API_AUTH_STRING"] = secret


def authenticate_for_shared_server(settings: Settings | None = None) -> bool:
    """Send the shared server's auth string when ``PREFECT_API_URL`` names the shared server.

    A user who points ``dspex worker``, ``dspex pools create`` or ``dspex deploy`` at the shared
    server's URL (``dspex server status``) gets its secret without copying it anywhere. A
    ``PREFECT_API_AUTH_STRING`` the user set is kept.

    Returns:
        True when this process now sends the shared server's auth string.
    """
    url = os.environ.get("PREFECT_API_URL", "").rstrip("/")
    if not url or os.environ.get("PREFECT_API_AUTH_STRING"):
        return False
    folder = server_dir(settings)
    try:
        state = json.loads((folder / "server.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if str(state.get("url", "")).rstrip("/") != url:
        return False
    secret = _auth_string(folder)
    if secret is None:
        return False
    os.environ["PREFECT_API_AUTH_STRING"] = secret
    if "prefect.context" in sys.modules:  # Prefect read its settings at import: re-read them
        import prefect.context

        prefect.context.refresh_global_settings_context()
    return True


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
    if not state.get("auth"):
        return None  # started by a DSPex before issue 20, without auth: a fresh one replaces it
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
    folder = private_folder(server_dir(settings))
    (folder / "clients").mkdir(parents=True, exist_ok=True)
    _register_client(folder)
    with _start_lock(folder):
        state = server_status(settings) or _start(settings, folder)
        if settings.warm_runner and "PYTEST_CURRENT_TEST" not in os.environ:
            _ensure_runner(settings, folder)
    url = str(state["url"])
    _authenticate(folder)
    os.environ["PREFECT_API_URL"] = url
    # Lazy for start-up time: the console script imports this module and must not load Prefect.
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
    _auth_string(folder, create=True)
    command = [
        sys.executable,
        "-P",  # the user's working folder stays off sys.path (a planted dspex/ there is not imported)
        "-m",
        "deployments.local.server",
        str(port),
        str(settings.shared_server_idle_seconds),
    ]
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    # Absolute: the server runs in the server folder, not here (see _supervise).
    env["PREFECT_HOME"] = str(
        Path(os.environ.get("PREFECT_HOME") or settings.resolved_prefect_home).resolve()
    )
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
    """Start the warm runner (`deployments.local.warm_runner`, through `RUNNER_MODULE`) next to the
    server unless one is up; it gets the environment this process started with, so it takes the
    commands of this shell."""
    # Lazy: importing the bootstrap defaults Prefect's variables in os.environ and loads Prefect,
    # and the `dspex` console script imports this module (`shared_server_wanted`) before it hands
    # its command to the warm runner, which must see the environment as typed (and a fast start).
    from dspex.bootstrap import original_environment

    if runner_alive(settings.home):
        return
    env = {k: v for k, v in original_environment().items() if k != "PYTEST_CURRENT_TEST"}
    with (folder / "runner.log").open("ab") as out:
        subprocess.Popen(  # noqa: S603 (this interpreter, our own module)
            # -P: `python -m` would put the working folder first on sys.path, and a tasks/ or flows/
            # there would shadow the installed packages inside the runner (issue 23)
            [sys.executable, "-P", "-m", RUNNER_MODULE, str(settings.shared_server_idle_seconds)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            cwd=str(Path.cwd()),
        )


# --- the supervisor (python -m deployments.local.server PORT IDLE) ---------------------------


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
    folder = private_folder(server_dir(settings))
    (folder / "clients").mkdir(exist_ok=True)
    secret = _auth_string(folder, create=True)
    if secret is None:
        raise ConfigurationError(f"cannot read the shared server's auth file {folder / 'auth'}")
    env = dict(os.environ)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    env.pop("PREFECT_API_URL", None)
    # The UI calls PREFECT_UI_API_URL, which defaults to port 4200 whatever --port says (issue 26.4).
    env["PREFECT_UI_API_URL"] = f"http://127.0.0.1:{port}/api"
    # Basic auth on every endpoint but /api/health (issue 20); the server's own clients send it too.
    env["PREFECT_SERVER_API_AUTH_STRING"] = secret
    env["PREFECT_API_AUTH_STRING"] = secret
    prefect = str(Path(sys.executable).with_name("prefect"))
    server = subprocess.Popen(  # noqa: S603 (our own venv's prefect)
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        # Not the user's working folder: the server puts "." on its sys.path and imports this
        # project's Prefect plugin (deployments.worker), so a deployments/ there would run in it.
        cwd=str(folder),
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
                    "auth": "basic",  # clients read the secret from the auth file, never from here
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
