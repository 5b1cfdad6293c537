"""Issue 26.4: `prefect server start --port P` without PREFECT_API_URL serves a UI that calls
127.0.0.1:4200 (someone else's server, or none). `dspex ui --port P` sets PREFECT_UI_API_URL, so
the UI it serves calls its own API: the UI's settings endpoint says so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from cluster import BIN, REPO
from support.ports import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_dspex_ui_off_port_4200_serves_a_ui_that_calls_its_own_api(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DSPEX_"))} | {
        "DSPEX_HOME": str(tmp_path / "home"),
        "DSPEX_SHARED_SERVER": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONPATH": str(REPO),
    }
    log = tmp_path / "ui.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603 (our own venv's dspex)
            [str(BIN / "dspex"), "ui", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        settings = None
        while settings is None:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui-settings", timeout=2) as answer:  # noqa: S310
                    settings = json.loads(answer.read())
            except OSError:
                time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert settings["api_url"] == f"http://127.0.0.1:{port}/api"
    assert f"http://127.0.0.1:{port}" in log.read_text(errors="replace")
