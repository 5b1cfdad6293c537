"""The warm runner: `dspex run` handed to a process that already has Prefect and DSPy imported."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from deployments.local.warm_runner import code_stamp, environment_stamp, try_warm_run
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[3]
# `dspex` as its console script runs it (pyproject's [project.scripts] entry), by this interpreter.
DSPEX = [sys.executable, "-c", "from deployments.console import main; main()"]


def test_the_environment_stamp_ignores_the_terminal_and_sees_everything_else():
    base = environment_stamp({"DSPEX_LM_MODEL": "a", "PWD": "/x"}, cwd="/project")
    assert base == environment_stamp({"DSPEX_LM_MODEL": "a", "PWD": "/y", "COLUMNS": "80"}, cwd="/project")
    assert base != environment_stamp({"DSPEX_LM_MODEL": "b", "PWD": "/x"}, cwd="/project")
    assert base != environment_stamp({"DSPEX_LM_MODEL": "a", "OPENAI_API_KEY": "k"}, cwd="/project")
    assert base != environment_stamp({"DSPEX_LM_MODEL": "a"}, cwd="/elsewhere")


def test_the_code_stamp_changes_when_a_module_changes(tmp_path):
    (tmp_path / "flows").mkdir()
    module = tmp_path / "flows" / "a.py"
    module.write_text("x = 1\n")
    before = code_stamp(tmp_path)
    os.utime(module, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert code_stamp(tmp_path) != before
    touched = code_stamp(tmp_path)
    (tmp_path / "flows" / "b.py").write_text("")
    os.utime(tmp_path / "flows" / "b.py", ns=(0, 0))  # an older file added still counts
    assert code_stamp(tmp_path) != touched


def test_commands_run_here_when_no_runner_can_take_them(tmp_path, monkeypatch):
    assert try_warm_run(["run", "spec.yaml"]) is None  # under pytest: never
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    monkeypatch.setenv("DSPEX_HOME", str(tmp_path))
    assert try_warm_run(["run", "spec.yaml"]) is None  # no runner listening
    assert try_warm_run(["pools", "create"]) is None  # not a command a runner takes
    assert try_warm_run(["run", "--help"]) is None
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    assert try_warm_run(["run", "spec.yaml"]) is None  # the user's own server: runs here


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_warm_dspex_run_goes_through_the_runner_and_another_environment_does_not(tmp_path):
    home = tmp_path / ".dspex"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "PYTEST_CURRENT_TEST"}
    lib = tmp_path / "lib" / "warmprog"
    lib.mkdir(parents=True)
    program = lib / "__init__.py"
    program.write_text(_USER_PROGRAM.format(tag="v1"))
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path / "lib")]),
        DSPEX_HOME=str(home),
        DSPEX_SHARED_SERVER_PORT=str(free_port()),
        DSPEX_SHARED_SERVER_IDLE_SECONDS="120",
        DSPEX_RESUME="false",
        DSPEX_TRUSTED_IMPORT_ROOTS='["warmprog"]',
    )
    (tmp_path / "spec.json").write_text(
        json.dumps({"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]})
    )
    (tmp_path / "user.json").write_text(
        json.dumps({"name": "user", "steps": [{"module": "warmprog:Tagged"}]})
    )
    (tmp_path / "data.jsonl").write_text(
        "".join(json.dumps({"question": f"What is {i}?"}) + "\n" for i in range(10))
    )

    def dspex(*args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*DSPEX, *args],
            env={**env, **(extra or {})},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    def rows(done: subprocess.CompletedProcess[str]) -> list[dict]:
        return sorted((json.loads(line) for line in done.stdout.splitlines()), key=lambda r: r["_row"])

    log = home / "server" / "runner.log"
    try:
        dspex("registry", "register", "warmprog:Tagged")  # a user program, as a user adds one
        cold = dspex("run", "--stream", "spec.json", "data.jsonl")  # starts the server and the runner
        assert len(rows(cold)) == 10
        deadline = time.monotonic() + 120
        while "listening" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert (home / "server" / "runner.sock").exists(), (
            log.read_text() if log.exists() else "no runner log"
        )
        assert oct((home / "server").stat().st_mode & 0o777) == "0o700"

        warm = dspex("run", "--stream", "spec.json", "data.jsonl")
        assert rows(warm) == rows(cold)
        assert "served dspex run --stream spec.json data.jsonl: exit 0" in log.read_text()
        assert "10 rows in, 10 completed" in warm.stderr  # the run's own log lines reach this terminal

        other = dspex("run", "--stream", "spec.json", "data.jsonl", extra={"DSPEX_SOMETHING_ELSE": "1"})
        assert rows(other) == rows(cold)  # ran here, in its own process
        assert (
            "refused dspex run --stream spec.json data.jsonl: another environment or folder"
            in log.read_text()
        )
        assert log.read_text().count("served ") == 1

        # A user program the runner imported, then edited: the runner must not serve the old code.
        first = dspex("run", "--stream", "user.json", "data.jsonl")
        assert {r["answer"] for r in rows(first)} == {f"v1:What is {i}?" for i in range(10)}
        assert log.read_text().count("served ") == 2
        pid = int((home / "server" / "runner.pid").read_text())
        program.write_text(_USER_PROGRAM.format(tag="edited"))  # another size: no stale .pyc either
        edited = dspex("run", "--stream", "user.json", "data.jsonl")
        assert {r["answer"] for r in rows(edited)} == {f"edited:What is {i}?" for i in range(10)}
        assert "imported file(s) edited" in log.read_text()
        assert log.read_text().count("served ") == 2  # it ran in its own process
        _wait_for(lambda: _gone(pid), 20, "the stale runner to exit")

        subprocess.run([*DSPEX, "server", "stop"], env=env, cwd=tmp_path, capture_output=True, timeout=60)
        _wait_for(  # `dspex server stop` stops a runner started since, too
            lambda: not (home / "server" / "runner.sock").exists(), 20, "the runner to stop with the server"
        )
    finally:
        subprocess.run([*DSPEX, "server", "stop"], env=env, cwd=tmp_path, capture_output=True, timeout=60)
        pid_file = home / "server" / "runner.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


_USER_PROGRAM = """
import dspy


class Tagged(dspy.Module):
    def forward(self, question: str) -> dspy.Prediction:
        return dspy.Prediction(answer="{tag}:" + question)
"""

_PLANTED = "open({marker!r}, 'a').write('{name} imported from the working folder\\n')\n"

# Another local account's client (it cannot run this venv's Python: the standard library only).
_KNOCK = """
import json, socket, sys
conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
conn.settimeout(10)
try:
    conn.connect(sys.argv[1])
except OSError as exc:
    print(json.dumps({"connect": type(exc).__name__}))
    raise SystemExit
try:
    conn.sendall(b'{"argv": ["run", "spec.json", "data.jsonl"], "env": "", "code": "", "sent_at": 0}\\n')
    answer = conn.recv(65536).decode()
except OSError as exc:
    answer = ""
print(json.dumps({"connect": "ok", "answer": answer}))
"""


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie no one reaped counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.3)


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_runner_serves_only_its_owner_never_imports_the_working_folder_and_never_blocks_a_run(tmp_path):
    """Issues 20 and 23 at the user's entry point (the `dspex` console script, as typed).

    A folder with planted tasks/, flows/, registry/, deployments/ and dspex/ packages: neither the
    cold run, nor the server and runner it starts, nor the warm run imports them. Another account
    (`nobody`) cannot reach the socket, and when the folder and socket are opened to it on purpose,
    the runner still closes its connection unread (SO_PEERCRED). A stuck (SIGSTOP) or killed
    (SIGKILL, stale socket left behind) runner costs the next `dspex run` nothing but its warm start.
    """
    if os.getuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser to act as another local account")
    base = Path(tempfile.mkdtemp(prefix="dspex-peer-", dir="/tmp"))  # nobody may traverse /tmp/<this>
    base.chmod(0o711)
    home = base / "home"
    marker = tmp_path / "planted-code-ran.txt"
    for name in ("tasks", "flows", "registry", "deployments", "dspex"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(_PLANTED.format(marker=str(marker), name=name))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "PYTEST_CURRENT_TEST"}
    env.pop("PYTHONPATH", None)  # as a user's shell: the installed (editable) packages only
    env.update(
        DSPEX_HOME=str(home),
        DSPEX_SHARED_SERVER_PORT=str(free_port()),
        DSPEX_SHARED_SERVER_IDLE_SECONDS="120",
        DSPEX_RESUME="false",
    )
    (tmp_path / "spec.json").write_text(
        json.dumps({"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]})
    )
    (tmp_path / "data.jsonl").write_text(
        "".join(json.dumps({"question": f"What is {i}?"}) + "\n" for i in range(5))
    )
    folder = home / "server"
    log = folder / "runner.log"
    sock = folder / "runner.sock"
    dspex = [str(Path(sys.executable).with_name("dspex"))]  # the console script the user types

    def run() -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*dspex, "run", "--stream", "spec.json", "data.jsonl"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert len(done.stdout.splitlines()) == 5
        return done

    def runner_pid() -> int:
        return int((folder / "runner.pid").read_text())

    def listening() -> bool:
        return log.exists() and log.read_text().count("listening") > listening.seen  # type: ignore[attr-defined]

    def knock() -> dict:
        done = subprocess.run(
            ["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", _KNOCK, str(sock)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def warm() -> None:
        """A run the runner serves (other edits to the checkout make a runner stale: then again)."""
        for _ in range(4):
            before = log.read_text()
            listening.seen = before.count("listening")  # type: ignore[attr-defined]
            run()
            after = log.read_text()[len(before) :]
            if "served dspex run" in after:
                return
            assert "the project's code changed" in after, log.read_text()
            _wait_for(listening, 120, "a runner with the current code")
        pytest.fail(f"no run was served: {log.read_text()}")

    listening.seen = 0  # type: ignore[attr-defined]
    try:
        run()  # cold: starts the shared server and the runner
        _wait_for(listening, 120, "the warm runner")
        warm()
        assert not marker.exists(), marker.read_text()

        assert knock() == {"connect": "PermissionError"}  # the 0700 folder keeps nobody out
        home_mode = home.stat().st_mode & 0o777
        for opened in (home, folder):  # opened on purpose: the runner's own check must still refuse
            opened.chmod(0o711)
        sock.chmod(0o666)
        try:
            assert knock() == {"connect": "ok", "answer": ""}
        finally:
            home.chmod(home_mode)
            folder.chmod(0o700)
            sock.chmod(0o600)
        assert "refused a connection from uid 65534" in log.read_text()

        pid = runner_pid()
        served = log.read_text().count("served dspex run")
        os.kill(pid, signal.SIGSTOP)  # stuck: the client gives up after its answer timeout
        try:
            run()
        finally:
            os.kill(pid, signal.SIGCONT)
        assert log.read_text().count("served dspex run") == served

        os.kill(pid, signal.SIGKILL)  # killed: its socket file stays behind
        _wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", 30, "kill")
        assert sock.exists()
        listening.seen = log.read_text().count("listening")  # type: ignore[attr-defined]
        run()  # runs in its own process, and starts a fresh runner
        _wait_for(listening, 120, "a fresh warm runner")
        assert runner_pid() != pid
        warm()
        assert not marker.exists(), marker.read_text()
    finally:
        subprocess.run([*dspex, "server", "stop"], env=env, cwd=base, capture_output=True, timeout=60)
        with contextlib.suppress(OSError, ValueError):
            os.kill(runner_pid(), signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)
