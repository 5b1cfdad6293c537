"""Issues 25.4 and 26.1: a ``dspex run`` killed with SIGKILL mid-batch.

Before: results were kept only at batch end, so the killed batch's paid rows were lost (the re-run
paid for all of them again), and the killed flow run stayed Running forever. Now each row is
journaled as it completes, the re-run pays only for the rows left (counted at the LM server), and
the re-run marks the dead process's flow run Crashed.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import BIN, REPO
from support.openai_server import FakeOpenAIServer, openai_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROWS = 60
CAPACITY = 4
# One batch of every row: what the old code lost whole.
SPEC = (
    "name: kill-me\nsteps:\n  - module: dspy.Predict\n    signature: 'question -> answer'\n"
    f"    batch_size: {ROWS}\n"
)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with openai_server() as running:
        running.latency_s = 0.3
        yield running


def _env(home: Path, server: FakeOpenAIServer) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DSPEX_"))} | {
        "DSPEX_HOME": str(home),
        "DSPEX_LM_MODEL": "openai/test-model",
        "DSPEX_LM_API_BASE": server.base_url,
        "DSPEX_LM_CACHE": "false",
        "DSPEX_MODE": "local",
        "DSPEX_POOL_GENERAL_CAPACITY": str(CAPACITY),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "LITELLM_LOCAL_MODEL_COST_MAP": "true",
        "PYTHONPATH": str(REPO),
        "COLUMNS": "400",
    }


def _states(home: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(home / "prefect" / "prefect.db") as db:
        return db.execute(
            "SELECT fr.state_type, fr.state_name FROM flow_run fr JOIN flow f ON f.id = fr.flow_id "
            "WHERE f.name = 'run-pipeline' ORDER BY fr.created"
        ).fetchall()


def test_sigkill_mid_batch_keeps_paid_rows_and_the_dead_run_is_marked_crashed(
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
    env = _env(home, server)
    command = [str(BIN / "dspex"), "run", str(spec), str(data), "-o", str(tmp_path / "out.jsonl")]
    log = tmp_path / "killed.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603 (our own venv's dspex)
            command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 240  # the embedded server takes a while to start on 2 busy cores
        while server.served_usage["requests"] < 16:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the run never reached the LM"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the process and the embedded server it started
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    time.sleep(1.0)  # requests in flight at the kill are answered to a closed socket
    first = server.served_usage["requests"]
    assert first < ROWS, "the run finished before it was killed: nothing was tested"
    assert _states(home) == [("RUNNING", "Running")]

    rerun = subprocess.run(  # noqa: S603
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    second = server.served_usage["requests"] - first
    # Only the rows in flight at the kill (at most the pool's capacity) are paid twice.
    assert second <= ROWS - first + CAPACITY, (first, second)
    assert second >= ROWS - first, (first, second)
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(written) == ROWS and all(r.get("answer") and "_error" not in r for r in written)
    assert f"{ROWS - second} row(s) reused" in " ".join(rerun.stdout.split())
    # The killed run is Crashed now; the re-run completed.
    assert _states(home) == [("CRASHED", "Crashed"), ("COMPLETED", "Completed")]
