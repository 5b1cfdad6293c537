"""Issue 12: Ctrl-C (a real SIGINT) to a real ``dspex run`` process on the embedded Prefect server.

Before: the remaining LM calls all still ran, the output was discarded, the flow run stayed RUNNING
in the database and the process hung for minutes. Now: dispatching stops at once, rows already
running finish within the grace period, the partial output is written and readable, the flow run is
CANCELLED in the project-local database, the process exits 130 promptly, and no server process is
left behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from cluster import BIN, REPO
from support.openai_server import FakeOpenAIServer, openai_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SPEC = "name: interrupt-me\nsteps:\n  - module: dspy.Predict\n    signature: 'question -> answer'\n    batch_size: 4\n"
ROWS = 200


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with openai_server() as running:
        running.latency_s = 0.4  # a slow provider: the run is surely mid-way when the signal comes
        yield running


def _env(home: Path, server: FakeOpenAIServer) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DSPEX_"))} | {
        "DSPEX_HOME": str(home),
        "DSPEX_LM_MODEL": "openai/test-model",
        "DSPEX_LM_API_BASE": server.base_url,
        "DSPEX_LM_CACHE": "false",
        "DSPEX_INTERRUPT_GRACE_SECONDS": "10",
        "DSPEX_MODE": "local",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "LITELLM_LOCAL_MODEL_COST_MAP": "true",
        "PYTHONPATH": str(REPO),
        "COLUMNS": "400",
    }


def _servers_of(prefect_home: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("PREFECT_HOME") == str(prefect_home) and "uvicorn" in " ".join(
                proc.cmdline()
            ):
                found.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def test_sigint_stops_a_cli_run_keeps_its_output_and_cancels_its_flow_run(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC, encoding="utf-8")
    data = tmp_path / "q.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"Where is box {i}? Box {i} is in Paris."}) + "\n" for i in range(ROWS)
        ),
        encoding="utf-8",
    )
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603 (our own venv's dspex)
            [str(BIN / "dspex"), "run", str(spec), str(data)],
            cwd=tmp_path,
            env=_env(home, server),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240  # the embedded server takes a while to start on 2 busy cores
        while server.served_usage["requests"] < 8:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the run never reached the LM"
            time.sleep(0.1)
        signalled = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=120)
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    text = log.read_text(errors="replace")
    assert code == 130, text[-3000:]
    assert took < 60, f"exit took {took:.0f} s after SIGINT"
    paid = server.served_usage["requests"]
    assert paid < ROWS, "dispatching did not stop"
    time.sleep(1.0)
    assert server.served_usage["requests"] == paid, "LM calls went on after the process exited"
    assert "interrupted" in text and "SIGINT" in text
    assert "Traceback" not in text, text[-3000:]

    # The partial output is there and readable: completed rows have answers, the rest say why not.
    squashed = "".join(text.split())  # the console wraps long paths
    match = re.search(r"partialoutput:(/\S+?\.(?:msgpack|arrow))", squashed)
    assert match, text[-3000:]
    from flows.pipeline import load_rows

    rows = load_rows(match[1])
    assert len(rows) == ROWS
    done = [r for r in rows if "_error" not in r]
    assert 0 < len(done) <= paid and all(r.get("answer") for r in done)
    assert any(r["_error"].get("not_attempted") for r in rows if "_error" in r)

    # The flow run is CANCELLED in the project-local embedded server's database.
    prefect_home = home / "prefect"
    with sqlite3.connect(prefect_home / "prefect.db") as db:
        states = db.execute(
            "SELECT fr.state_type, fr.state_name FROM flow_run fr JOIN flow f ON f.id = fr.flow_id "
            "WHERE f.name = 'run-pipeline'"
        ).fetchall()
    assert states == [("CANCELLED", "Cancelled")], states
    # ...and the embedded server is not left running.
    assert _servers_of(prefect_home) == []
