"""A warm runner: `dspex run` executed by a process that has already imported Prefect and DSPy.

With the shared local server (`deployments.local.server`) a CLI run no longer starts a Prefect server, but
every ``dspex run`` process still imports Prefect, DSPy, LiteLLM and pyarrow first: ~4 s of its
first row on two cores, against well under a second for the run itself. So the command that starts
the shared server also starts a runner next to it (``python -m deployments.console``, which hands
`serve` the CLI to run), which imports all that once and listens on a Unix socket in
``<DSPEX_HOME>/server/`` (a folder only its owner can enter). The ``dspex`` console script
(`deployments.console.main`) hands ``dspex run ...`` to it through `try_warm_run` when it is up, and
passes its stdout and stderr through as they come; Ctrl+C is passed on as SIGINT to the run. This
module never imports the CLI: it serves the entry it is handed.

A runner takes a command only when nothing could make it run differently from a fresh process:

* the client's environment (but for the terminal's own variables) and working directory are those
  the runner started with, and the project's code has not changed since (the newest ``.py`` file
  of its packages, and ``pyproject.toml``); a runner with older code exits, and so does one
  whose earlier commands imported a user's module (``pkg.mod:Program``) that has since been edited
  (a fresh process imports the new code; the resume key hashes the file on disk);
* it is not running another command (one at a time: the others run as usual, in their own process);
* the shared server is still up, and neither a user's ``PREFECT_API_URL`` nor pytest is in play.

Only its owner reaches it (issue 20): the socket is 0600 in the 0700 server folder, and both ends
check the other's uid with ``SO_PEERCRED`` on every connection (another account's connection is
closed unread, with one line in the runner's log). A stale socket or a dead or stuck runner costs a
command at most ``_ANSWER_WITHIN_S``, after which it runs in its own process. The runner starts with
``python -P`` and checks, before it imports them, that ``dspex``, ``flows``, ``tasks``, ``registry``
and ``deployments`` resolve to the installed packages, never to a folder of that name where the user
typed the command (issue 23).

Otherwise the command runs in its own process exactly as before. ``DSPEX_WARM_RUNNER=false`` turns
it off. The runner exits after ``DSPEX_SHARED_SERVER_IDLE_SECONDS`` without a command, or with
``dspex server stop``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from deployments.local.server import private_folder, server_status, shared_server_wanted, socket_path
from dspex.redact import redact
from dspex.settings import get_settings

__all__ = [
    "announce_exit",
    "code_stamp",
    "edited_modules",
    "environment_stamp",
    "foreign_packages",
    "module_files",
    "peer_uid",
    "serve",
    "try_warm_run",
]

#: Commands a runner executes (those that run flows and print as they go).
WARM_COMMANDS = frozenset({"run"})
#: The terminal's own variables: they never change what a run does.
_VOLATILE = frozenset(
    {
        "PWD",
        "OLDPWD",
        "SHLVL",
        "_",
        "COLUMNS",
        "LINES",
        "TERM",
        "TERM_PROGRAM",
        "TERM_PROGRAM_VERSION",
        "TERM_SESSION_ID",
        "SSH_TTY",
        "SSH_CLIENT",
        "SSH_CONNECTION",
        "WINDOWID",
        "PS1",
        "PYTEST_CURRENT_TEST",
    }
)
_PACKAGES = ("dspex", "flows", "tasks", "registry", "deployments")
#: How long a client waits for the runner's answer (a busy runner answers late: the client runs the
#: command itself, and the runner drops the stale request).
_ANSWER_WITHIN_S = 2.0
_ROOT = Path(__file__).resolve().parents[2]  # the checkout: deployments/local/warm_runner.py


def peer_uid(conn: socket.socket) -> int | None:
    """The user id of the process at the other end of a Unix socket (``SO_PEERCRED``), or None
    where the platform cannot tell (then nothing is trusted)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        _pid, uid, _gid = struct.unpack(
            "3i", conn.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
        )
    except OSError:
        return None
    return int(uid)


def _owned_socket(path: Path) -> bool:
    """Whether ``path`` is a socket this user owns, in a folder this user owns and no one else enters."""
    try:
        folder, info = path.parent.lstat(), path.lstat()
    except OSError:
        return False
    uid = os.getuid()
    return (
        folder.st_uid == uid
        and not folder.st_mode & 0o077
        and info.st_uid == uid
        and (info.st_mode & 0o170000) == 0o140000  # S_IFSOCK: not a link someone planted
    )


def environment_stamp(environ: dict[str, str] | None = None, cwd: str | None = None) -> str:
    """A digest of what a process's environment and working directory can change about a run."""
    environ = dict(os.environ if environ is None else environ)
    items = sorted((k, v) for k, v in environ.items() if k not in _VOLATILE)
    payload = json.dumps([cwd or os.getcwd(), items])
    return hashlib.sha256(payload.encode()).hexdigest()


def code_stamp(root: Path = _ROOT) -> str:
    """The project's code version as seen on disk: newest mtime and count of its ``.py`` files."""
    newest, count = 0, 0
    for package in _PACKAGES:
        for folder, _dirs, files in os.walk(root / package):
            for name in files:
                if name.endswith(".py"):
                    with contextlib.suppress(OSError):
                        newest = max(newest, os.stat(os.path.join(folder, name)).st_mtime_ns)
                        count += 1
    with contextlib.suppress(OSError):
        newest = max(newest, (root / "pyproject.toml").stat().st_mtime_ns)
    return f"{newest}:{count}"


def _library_roots() -> tuple[str, ...]:
    """Folders whose modules only change with the environment (the stdlib, site-packages)."""
    import sysconfig

    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    return tuple(os.path.realpath(r) + os.sep for r in roots)


def module_files(modules: dict[str, Any] | None = None) -> dict[str, int]:
    """``file -> mtime_ns`` of the imported modules that a user may edit (outside the stdlib and
    site-packages): what a long-lived runner must not keep serving once changed."""
    libraries = _library_roots()
    files: dict[str, int] = {}
    for module in list((sys.modules if modules is None else modules).values()):
        origin = getattr(module, "__file__", None)
        if not isinstance(origin, str) or not origin.endswith(".py"):
            continue
        real = os.path.realpath(origin)
        if real.startswith(libraries):
            continue
        with contextlib.suppress(OSError):
            files[real] = os.stat(real).st_mtime_ns
    return files


def edited_modules(seen: dict[str, int]) -> list[str]:
    """The files of ``seen`` (from `module_files`) whose mtime changed or that are gone."""
    edited: list[str] = []
    for path, mtime in seen.items():
        try:
            if os.stat(path).st_mtime_ns != mtime:
                edited.append(path)
        except OSError:
            edited.append(path)
    return edited


# --- the client (the `dspex` console script, `deployments.console`) ---------------------------------


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    conn.sendall((json.dumps(message) + "\n").encode())


def try_warm_run(argv: list[str]) -> int | None:
    """Run ``dspex <argv>`` on the warm runner; its exit status, or None when no runner took it
    (then the caller runs the command itself)."""
    if not argv or argv[0] not in WARM_COMMANDS or "--help" in argv:
        return None
    if os.environ.get("PREFECT_API_URL") or "PYTEST_CURRENT_TEST" in os.environ:
        return None  # decided before the settings are even loaded
    try:
        settings = get_settings()
    except ValueError:
        return None  # invalid settings: the command itself reports them
    if not (settings.warm_runner and shared_server_wanted(settings)):
        return None
    path = socket_path(settings.home)
    if not _owned_socket(path):
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(_ANSWER_WITHIN_S)  # connect, send and the answer: a stuck runner costs 2 s
        conn.connect(str(path))
        if peer_uid(conn) != os.getuid():
            conn.close()
            return None  # not our runner: never hand it a command
        _send(conn, {"argv": argv, "env": environment_stamp(), "code": code_stamp(), "sent_at": time.time()})
        reader = conn.makefile("r", encoding="utf-8")
        answer = json.loads(reader.readline() or "{}")
        if not answer.get("accepted"):
            return None
        conn.settimeout(None)
    except (OSError, ValueError):
        conn.close()
        return None
    return _relay(conn, reader)


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _relay(conn: socket.socket, reader: TextIO) -> int:
    interrupted = 0
    # SIGTERM stops the run as it does in a process of its own (passed on as INT), instead of
    # killing only this client and leaving the run to notice the closed socket.
    signal.signal(signal.SIGTERM, _interrupt)
    with conn:
        while True:
            try:
                line = reader.readline()
                if not line:
                    print("dspex: the warm runner stopped in the middle of the command", file=sys.stderr)
                    return 1
                message = json.loads(line)
                if "out" in message:
                    try:
                        sys.stdout.write(message["out"])
                        sys.stdout.flush()
                    except BrokenPipeError:  # the reader went away (`| head`): stop the run, quietly
                        with contextlib.suppress(OSError):
                            _send(conn, {"signal": "INT"})
                        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (nothing more is written)
                        return 141
                elif "err" in message:
                    sys.stderr.write(message["err"])
                    sys.stderr.flush()
                elif "exit" in message:
                    return int(message["exit"])
            except KeyboardInterrupt:
                interrupted += 1
                if interrupted > 1:
                    return 130  # a second Ctrl+C: leave; the runner still winds the run down
                with contextlib.suppress(OSError):
                    _send(conn, {"signal": "INT"})


# --- the runner (python -m deployments.console IDLE_SECONDS) -------------------------------------


class _Stream:
    """A text stream whose writes go to the client as ``{"out"|"err": text}`` messages."""

    def __init__(self, conn: socket.socket, key: str, lock: threading.Lock) -> None:
        self._conn, self._key, self._lock = conn, key, lock
        self.encoding = "utf-8"
        self.errors = "replace"

    def write(self, text: str) -> int:
        if text:
            with self._lock, contextlib.suppress(OSError):  # a client gone: the run goes on
                _send(self._conn, {self._key: text})
        return len(text)

    def flush(self) -> None:
        """Nothing is buffered."""

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise OSError("the warm runner's streams have no file descriptor")

    def writable(self) -> bool:
        return True


@contextlib.contextmanager
def _redirected(conn: socket.socket) -> Any:
    """sys.stdout/sys.stderr, and logging handlers writing to them, go to the client."""
    lock = threading.Lock()
    out, err = _Stream(conn, "out", lock), _Stream(conn, "err", lock)
    saved = sys.stdout, sys.stderr
    handlers: list[tuple[logging.StreamHandler[Any], Any]] = []
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]
    for handler in {id(h): h for logger in loggers for h in getattr(logger, "handlers", [])}.values():
        if isinstance(handler, logging.StreamHandler) and handler.stream in saved:
            handlers.append((handler, handler.stream))
            _point(handler, err if handler.stream is saved[1] else out)
    sys.stdout, sys.stderr = out, err
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
        for handler, stream in handlers:
            _point(handler, stream)


def _point(handler: logging.StreamHandler[Any], stream: Any) -> None:
    """Point a stream handler at ``stream`` (Prefect's console handler prints through a rich
    Console holding the stream too)."""
    handler.setStream(stream)
    console = getattr(handler, "console", None)
    if console is not None and hasattr(console, "file"):
        console.file = stream


#: The command being served (its connection, what the log calls it, its socket), for `announce_exit`.
_serving: dict[str, Any] = {}


def announce_exit(code: int) -> None:
    """Before a served command ends the whole process (``os._exit`` after an interrupted run, which
    must not wait for abandoned LM calls): give the client its exit status, and leave no socket
    behind, so the next command runs in its own process and starts a fresh runner. Outside a
    runner it does nothing."""
    conn = _serving.get("conn")
    if conn is None:
        return
    running = _serving.get("running")
    if running is not None:
        running.clear()  # the client leaving now is no Ctrl+C: nothing may interrupt the exit
    with contextlib.suppress(OSError):
        _send(conn, {"exit": code})
    _note(f"served {_serving.get('shown')}: exit {code}; the runner ends with the interrupted run")
    path: Path = _serving["path"]
    with contextlib.suppress(OSError):
        path.unlink()
        (path.parent / "runner.pid").unlink()


def _execute(conn: socket.socket, argv: list[str], entry: Callable[[], object]) -> int:
    running = threading.Event()
    running.set()
    _serving["running"] = running

    def listen() -> None:  # Ctrl+C at the client (or the client gone) stops the run
        with contextlib.suppress(OSError, ValueError):
            for line in conn.makefile("r", encoding="utf-8"):
                if json.loads(line).get("signal") == "INT" and running.is_set():
                    signal.raise_signal(signal.SIGINT)
            if running.is_set():
                signal.raise_signal(signal.SIGINT)

    threading.Thread(target=listen, name="dspex-warm-listen", daemon=True).start()
    saved_argv = sys.argv
    sys.argv = ["dspex", *argv]
    code = 0
    try:
        with _redirected(conn):
            try:
                entry()
            except SystemExit as exc:
                if isinstance(exc.code, int) or exc.code is None:
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
                    code = 1
            except KeyboardInterrupt:
                code = 130
            except BaseException:  # the client sees what a process of its own would have printed
                import traceback

                traceback.print_exc()
                code = 1
    finally:
        running.clear()
        sys.argv = saved_argv
    return code


def _refusal(request: dict[str, Any], env: str, code: str) -> str | None:
    sent_at = request.get("sent_at")
    if not isinstance(sent_at, int | float) or time.time() - sent_at > _ANSWER_WITHIN_S * 0.75:
        return "the client stopped waiting (the runner was busy)"  # it ran the command itself
    if request.get("code") != code:
        return "the project's code changed"
    if request.get("env") != env:
        return "another environment or folder"
    argv = request.get("argv")
    if not isinstance(argv, list) or not argv or argv[0] not in WARM_COMMANDS:
        return "not a command the runner takes"
    return None


def _shown(request: dict[str, Any]) -> str:
    argv = request.get("argv")
    return (
        redact("dspex " + " ".join(str(a) for a in argv)) if isinstance(argv, list) else "a malformed request"
    )


def _note(line: str) -> None:
    """One line in the runner's own log (``<DSPEX_HOME>/server/runner.log``)."""
    print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.__stderr__, flush=True)


def foreign_packages(root: Path = _ROOT) -> dict[str, str]:
    """The project packages that would import from somewhere other than the installed ``root``.

    Checked before they are imported (`importlib.util.find_spec` runs no package code): a
    ``tasks/`` or ``flows/`` in the folder where the user typed ``dspex run`` must never be what a
    warm runner runs (issue 23).

    Returns:
        Package name -> where it would come from, for each one outside ``root``.
    """
    foreign: dict[str, str] = {}
    for name in _PACKAGES:
        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None) if module is not None else None
        if origin is None:
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                spec = None
            origin = spec.origin if spec is not None else None
        if origin is None or not Path(origin).resolve().is_relative_to(root / name):
            foreign[name] = str(origin)
    return foreign


def _accept(listener: socket.socket) -> socket.socket | None:
    """The next connection of this runner's own user; another user's is closed unread."""
    try:
        conn, _ = listener.accept()
    except TimeoutError:
        return None
    uid = peer_uid(conn)
    if uid != os.getuid():
        _note(f"refused a connection from uid {uid}: only uid {os.getuid()} may use this runner")
        conn.close()
        return None
    return conn


def serve(idle_seconds: float, load_entry: Callable[[], Callable[[], object]]) -> int:
    """Listen for commands until idle for ``idle_seconds``, the code changes, or SIGTERM.

    Args:
        idle_seconds: How long the runner waits for a command before it exits.
        load_entry: Imports the CLI and returns its entry (``deployments.cli.main``), which runs a
            command from ``sys.argv``. Called once, after the project's packages are known to be
            the installed ones and the environment this runner serves is recorded (the CLI's
            imports default Prefect's variables): everything it imports, it imports for every
            command.

    Returns:
        The process's exit status: 2 when it may not serve (`foreign_packages`, no ``SO_PEERCRED``).
    """
    env, code = environment_stamp(), code_stamp()  # as started, before any command touches them
    foreign = foreign_packages()
    if foreign:
        _note(
            "not serving: "
            + ", ".join(f"{name} would import from {where}" for name, where in foreign.items())
            + f", not from the installed {_ROOT}"
        )
        return 2
    if getattr(socket, "SO_PEERCRED", None) is None:
        _note("not serving: this platform cannot tell who connects (no SO_PEERCRED)")
        return 2
    entry = load_entry()  # the point of the runner: the CLI imported once
    # Imported here, not at the top: only once `foreign_packages` has found it to be the installed
    # one (issue 23); the flows are what a run needs and the CLI imports only inside its commands.
    import flows  # noqa: F401

    settings = get_settings()
    path = socket_path(settings.home)
    private_folder(path.parent)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # between commands only the client's INT matters
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket of a runner that was killed
    umask = os.umask(0o177)  # the socket is born 0600: no moment where another account may connect
    try:
        listener.bind(str(path))
    finally:
        os.umask(umask)
    os.chmod(path, 0o600)
    listener.listen(8)
    listener.settimeout(1.0)
    (path.parent / "runner.pid").write_text(str(os.getpid()), encoding="utf-8")
    last = time.monotonic()
    imported = module_files()  # as served so far: a user's edited module makes the runner stale
    _note(f"warm runner {os.getpid()} listening on {path}")
    try:
        while not stopping.is_set() and time.monotonic() - last < idle_seconds:
            accepted = _accept(listener)
            if accepted is None:
                continue
            with accepted as conn:
                conn.settimeout(5.0)
                try:
                    request = json.loads(conn.makefile("r", encoding="utf-8").readline() or "{}")
                except (OSError, ValueError):
                    continue
                reason = _refusal(request, env, code)
                edited = edited_modules(imported) if reason is None else []
                if edited:
                    reason = f"the project's code changed ({len(edited)} imported file(s) edited, e.g. {edited[0]})"
                if reason is None and server_status(settings) is None:
                    reason = "the shared server is not running"
                if reason is not None:
                    _note(f"refused {_shown(request)}: {reason}")
                    with contextlib.suppress(OSError):
                        _send(conn, {"accepted": False, "reason": reason})
                    if reason.startswith(("the project's code", "the shared server")):
                        break  # stale: the next cold command starts a fresh runner
                    continue
                conn.settimeout(None)
                try:
                    _send(conn, {"accepted": True})
                except OSError:
                    continue  # the client is gone
                signal.signal(signal.SIGINT, signal.default_int_handler)
                started = time.monotonic()
                _serving.update(conn=conn, shown=_shown(request), path=path)
                try:
                    status = _execute(conn, list(request["argv"]), entry)
                finally:
                    _serving.clear()
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
                _note(f"served {_shown(request)}: exit {status} in {time.monotonic() - started:.2f} s")
                imported = {**module_files(), **imported}  # new imports at their mtime now
                with contextlib.suppress(OSError):
                    _send(conn, {"exit": status})
                last = time.monotonic()
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            if (path.parent / "runner.pid").read_text(encoding="utf-8") == str(os.getpid()):
                path.unlink()
                (path.parent / "runner.pid").unlink()
    return 0
