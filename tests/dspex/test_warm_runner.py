"""The warm runner: `dspex run` handed to a process that already has Prefect and DSPy imported."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dspex.warm_runner import code_stamp, environment_stamp, try_warm_run
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
# `dspex` as its console script runs it (pyproject's [project.scripts] entry), by this interpreter.
DSPEX = [sys.executable, "-c", "from dspex.warm_runner import main; main()"]


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
    env.update(
        PYTHONPATH=str(ROOT),
        DSPEX_HOME=str(home),
        DSPEX_SHARED_SERVER_PORT=str(free_port()),
        DSPEX_SHARED_SERVER_IDLE_SECONDS="120",
        DSPEX_RESUME="false",
    )
    (tmp_path / "spec.json").write_text(
        json.dumps({"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]})
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

        pid = int((home / "server" / "runner.pid").read_text())
        subprocess.run([*DSPEX, "server", "stop"], env=env, cwd=tmp_path, capture_output=True, timeout=60)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # `dspex server stop` stops the runner too
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the warm runner outlived `dspex server stop`")
        assert not (home / "server" / "runner.sock").exists()
    finally:
        subprocess.run([*DSPEX, "server", "stop"], env=env, cwd=tmp_path, capture_output=True, timeout=60)
        pid_file = home / "server" / "runner.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
