"""Issue 23 (also found): SIGINT or SIGTERM to ``dspex run``, then the same command again, pays each
row once: the re-run sends requests only for the rows the stopped run did not keep.

Entered where the user enters: the ``dspex`` console script as a subprocess, on the shared local
server, in its own process (``direct``) and handed to the warm runner (``warm``). Requests are
counted at the loopback OpenAI-compatible server. SIGKILL is covered with the per-row journal.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.openai_server import FakeOpenAIServer, openai_server

from tests.deployments.cluster import BIN
from tests.support.ports import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SPEC = (
    "name: {name}\nsteps:\n  - module: dspy.Predict\n    signature: 'question -> answer'\n    batch_size: 4\n"
)
ROWS = 120


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with openai_server() as running:
        running.latency_s = 0.4  # the run is surely mid-way when the signal comes
        yield running


def _env(home: Path, server: FakeOpenAIServer, warm: bool) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DSPEX_"))}
    keep.pop("PYTEST_CURRENT_TEST", None)  # the shared server (and the runner) as a user gets them
    keep.pop("PYTHONPATH", None)
    return keep | {
        "DSPEX_HOME": str(home),
        "DSPEX_LM_MODEL": "openai/test-model",
        "DSPEX_LM_API_BASE": server.base_url,
        "DSPEX_LM_CACHE": "false",
        "DSPEX_LM_NUM_RETRIES": "0",
        "DSPEX_INTERRUPT_GRACE_SECONDS": "20",
        "DSPEX_MODE": "local",
        "DSPEX_SHARED_SERVER_PORT": str(free_port()),
        "DSPEX_SHARED_SERVER_IDLE_SECONDS": "60",
        "DSPEX_WARM_RUNNER": "true" if warm else "false",
        "OPENAI_API_KEY": "sk-test",
        "COLUMNS": "400",
    }


@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", ["direct", "warm"])
def test_a_stopped_run_then_a_rerun_pays_each_row_once(
    server: FakeOpenAIServer, tmp_path: Path, path: str
) -> None:
    home = tmp_path / "home"
    env = _env(home, server, warm=path == "warm")
    runner_log = home / "server" / "runner.log"
    dspex = str(BIN / "dspex")

    def start(spec: Path, data: Path, log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(  # noqa: S603 (our own venv's dspex)
                [dspex, "run", str(spec), str(data)],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def served() -> int:
        return runner_log.read_text().count("served dspex run") if runner_log.exists() else 0

    try:
        # The first command starts the shared server (and, for `warm`, the runner).
        (tmp_path / "warmup.yaml").write_text(SPEC.format(name="warmup"))
        (tmp_path / "warmup.jsonl").write_text(json.dumps({"question": "warm up?"}) + "\n")
        first = start(tmp_path / "warmup.yaml", tmp_path / "warmup.jsonl", tmp_path / "warmup.log")
        assert first.wait(timeout=300) == 0, (tmp_path / "warmup.log").read_text()[-3000:]
        if path == "warm":
            deadline = time.monotonic() + 120
            while "listening" not in (runner_log.read_text() if runner_log.exists() else ""):
                assert time.monotonic() < deadline, "the warm runner did not start"
                time.sleep(0.3)

        for signum in (signal.SIGINT, signal.SIGTERM):
            name = f"stop-{signum.name.lower()}"
            spec, data = tmp_path / f"{name}.yaml", tmp_path / f"{name}.jsonl"
            spec.write_text(SPEC.format(name=name))
            data.write_text(
                "".join(json.dumps({"question": f"{name}: where is box {i}?"}) + "\n" for i in range(ROWS))
            )
            before, was_served = server.served_usage.get("requests", 0), served()
            log = tmp_path / f"{name}.log"
            proc = start(spec, data, log)
            try:
                deadline = time.monotonic() + 240
                while server.served_usage.get("requests", 0) - before < 16:
                    assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
                    assert time.monotonic() < deadline, "the run never reached the LM"
                    time.sleep(0.05)
                os.kill(proc.pid, signum)
                code = proc.wait(timeout=120)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
            assert code == 130, log.read_text(errors="replace")[-3000:]  # interrupted, as the shell says
            if path == "warm":
                deadline = time.monotonic() + 120  # the runner winds the run down after its client left
                while served() <= was_served:
                    assert time.monotonic() < deadline, runner_log.read_text()[-3000:]
                    time.sleep(0.2)
            else:
                time.sleep(1.0)
            paid_first = server.served_usage.get("requests", 0) - before
            assert 0 < paid_first < ROWS, "the signal did not stop the run"

            rerun = start(spec, data, tmp_path / f"{name}-again.log")
            assert rerun.wait(timeout=300) == 0, (tmp_path / f"{name}-again.log").read_text()[-3000:]
            paid_again = server.served_usage.get("requests", 0) - before - paid_first
            assert paid_first + paid_again == ROWS, (
                f"{signum.name} ({path}): the stopped run paid {paid_first} requests and the re-run "
                f"{paid_again}, for {ROWS} rows"
            )
    finally:
        subprocess.run([dspex, "server", "stop"], env=env, cwd=tmp_path, capture_output=True, timeout=60)
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((home / "server" / "runner.pid").read_text()), signal.SIGKILL)
