"""The shared local Prefect server: never under pytest or over a user's URL; started once, reused, stopped when idle."""

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dspex.local_server import server_dir, server_status, use_shared_server
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]

_CLIENT = """
import json
from dspex.local_server import server_status, use_shared_server
url = use_shared_server(force=True)
print(json.dumps({"url": url, "state": server_status()}))
"""


def test_not_used_under_pytest_nor_over_a_users_server(monkeypatch):
    assert use_shared_server() is None  # PYTEST_CURRENT_TEST: tests never start one by accident
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    assert use_shared_server(force=True) is None  # the user's server always wins
    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    monkeypatch.setenv("DSPEX_SHARED_SERVER", "false")
    assert use_shared_server() is None
    assert server_status() is None and not server_dir().exists()


@pytest.mark.e2e
@pytest.mark.slow
def test_started_once_reused_by_the_next_process_and_stopped_when_idle(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(
        PYTHONPATH=str(ROOT),
        DSPEX_HOME=str(tmp_path / "home"),
        PREFECT_HOME=str(tmp_path / "prefect"),
        DSPEX_SHARED_SERVER_IDLE_SECONDS="3",
        DSPEX_SHARED_SERVER_PORT=str(free_port()),
    )

    def client() -> dict:
        done = subprocess.run(
            [sys.executable, "-c", _CLIENT],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    first = client()
    state = first["state"]
    try:
        assert first["url"] == state["url"] == f"http://127.0.0.1:{env['DSPEX_SHARED_SERVER_PORT']}/api"
        second = client()
        assert second["state"]["supervisor"] == state["supervisor"]  # reused, not restarted
        state_file = tmp_path / "home" / "server" / "server.json"
        deadline = time.monotonic() + 60
        while state_file.exists() and time.monotonic() < deadline:  # idle: no client alive, 3 s passed
            time.sleep(0.5)
        assert not state_file.exists()
        for pid in (state["pid"], state["supervisor"]):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.2)
            else:
                pytest.fail(f"process {pid} still running after the idle stop")
    finally:
        for pid in (state["supervisor"], state["pid"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
