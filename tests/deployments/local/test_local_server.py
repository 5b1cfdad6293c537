"""The shared local Prefect server: never under pytest or over a user's URL; started once, reused, stopped when idle."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deployments.local.server import private_folder, server_dir, server_status, use_shared_server
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[3]

_CLIENT = """
import json
from deployments.local.server import server_status, use_shared_server
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


_AUTHED_CLIENT = """
import json
from deployments.local.server import server_status, use_shared_server
url = use_shared_server(force=True)
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as client:
    pools = client.read_work_pools()  # an authenticated call: the server answers 401 without the secret
print(json.dumps({"url": url, "state": server_status(), "pools": len(pools)}))
"""

# What another local account can do without the secret: plain HTTP (it cannot run this venv's Python).
_PROBE = """
import json, sys, urllib.error, urllib.request
base = sys.argv[1]
out = {}
for path, body in (("/health", None), ("/flow_runs/filter", b"{}"), ("/work_pools/", b'{"name": "general"}')):
    request = urllib.request.Request(base + path, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            out[path] = answer.status
    except urllib.error.HTTPError as exc:
        out[path] = exc.code
print(json.dumps(out))
"""


def _as_nobody() -> list[str]:
    if os.getuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser to act as another local account")
    return ["runuser", "-u", "nobody", "--"]


@pytest.mark.e2e
@pytest.mark.slow
def test_the_shared_server_answers_only_its_owner(tmp_path):
    """Issue 20: another account on the machine gets 401 from the shared server's API; the owner's
    clients send the secret kept in an owner-only file, which appears in no state file or log."""
    nobody = _as_nobody()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(
        PYTHONPATH=str(ROOT),
        DSPEX_HOME=str(tmp_path / "home"),
        PREFECT_HOME=str(tmp_path / "prefect"),
        DSPEX_SHARED_SERVER_IDLE_SECONDS="5",
        DSPEX_SHARED_SERVER_PORT=str(free_port()),
        DSPEX_WARM_RUNNER="false",
    )
    done = subprocess.run(
        [sys.executable, "-c", _AUTHED_CLIENT],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    first = json.loads(done.stdout.strip().splitlines()[-1])
    state = first["state"]
    try:
        folder = tmp_path / "home" / "server"
        secret = (folder / "auth").read_text().strip()
        assert oct((folder / "auth").stat().st_mode & 0o777) == "0o600"
        assert oct(folder.stat().st_mode & 0o777) == "0o700"
        assert secret.startswith("dspex:") and len(secret) > 30
        for name in ("server.json", "server.log"):
            assert secret.split(":", 1)[1] not in (folder / name).read_text(errors="replace")
        assert secret not in done.stdout + done.stderr

        probe = subprocess.run(
            [*nobody, "/usr/bin/python3", "-c", _PROBE, state["url"]],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
        assert probe.returncode == 0, probe.stderr
        answers = json.loads(probe.stdout)
        assert answers["/health"] == 200  # it reached the server...
        assert answers["/flow_runs/filter"] == 401  # ...and may not read runs
        assert answers["/work_pools/"] == 401  # ...nor create a pool
        denied = subprocess.run(
            [*nobody, "cat", str(folder / "auth")], capture_output=True, text=True, timeout=30
        )
        assert denied.returncode != 0 and secret not in denied.stdout
    finally:
        for pid in (state["supervisor"], state["pid"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


def test_the_server_folder_and_a_new_home_above_it_are_owner_only_whatever_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        folder = private_folder(tmp_path / "project" / ".dspex" / "server")
    finally:
        os.umask(old)
    for path in (folder, folder.parent):
        assert oct(path.stat().st_mode & 0o777) == "0o700", path
