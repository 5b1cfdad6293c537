"""Issue 24: what a DSPy user expects of a run, tested where the user enters.

Real flows on the session's test server; LM calls go over HTTP to the loopback OpenAI-compatible
server (tests/support/openai_server.py), which counts the requests it served, or to DSPy's DummyLM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dspy
import pytest
from support.openai_server import openai_server

from flows import PipelineSpec, run_pipeline, stream_pipeline
from flows.pools import shutdown_local_pools

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

QA = {"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}


@pytest.fixture(autouse=True)
def _fresh_pools():
    yield
    shutdown_local_pools()


def _lm(server) -> dspy.LM:
    return dspy.LM("openai/test-model", api_base=server.base_url, api_key="sk-test", cache=False)


def _questions(n: int) -> list[dict[str, str]]:
    return [{"question": f"What is item {i}?"} for i in range(n)]


# --- item 1: usage of streamed and pipelined runs --------------------------------------------------


def test_streamed_and_pipelined_runs_report_every_request():
    # Original failure: 40 rows, 40 requests served, summary.usage.requests == 8 (the first chunk's).
    spec = PipelineSpec.model_validate(QA)
    with openai_server() as server:
        stream = stream_pipeline(spec, data=_questions(40), lm=_lm(server), chunk_rows=8, resume=False)
        assert len(list(stream)) == 40
        streamed = len(server.chat_requests)
        assert streamed == 40
        assert stream.result.summary.usage.requests == streamed
        (step,) = stream.result.summary.steps
        assert step.usage.requests == streamed

        server.reset()
        pipelined = run_pipeline(
            spec, data=_questions(40), lm=_lm(server), pipelined=True, chunk_rows=8, resume=False
        )
        assert pipelined.summary.usage.requests == len(server.chat_requests) == 40
        assert pipelined.summary.usage.prompt_tokens == server.served_usage["prompt_tokens"]


# --- item 7: continue on error, with a failure budget ----------------------------------------------


def _flaky_spec(**extra):
    return PipelineSpec.model_validate(
        {
            "name": "flaky",
            "steps": [{"module": "dspy.Predict", "signature": "question -> answer", "batch_size": 4}],
            **extra,
        }
    )


def test_a_failing_row_is_recorded_and_the_others_complete_by_default():
    # Original failure: the run raised StepExecutionError and the failed row's batch-mates ended
    # NotAttempted. Now, as with dspy.Parallel / dspy.Evaluate: one failure, the rest complete.
    from support.openai_server import Fault

    with openai_server() as server:
        server.enqueue(Fault.error(400, "bad request (injected)"))  # not retryable: the row fails for good
        state = run_pipeline(
            _flaky_spec(), data=_questions(12), lm=_lm(server), resume=False, return_state=True
        )
    result = state.result()
    assert result.summary.failed == 1 and result.summary.rows_out == 11
    assert result.summary.not_attempted == 0
    assert state.is_completed() and state.message == "1 of 12 row(s) failed; 11 completed"


def test_more_than_max_errors_failures_stop_the_run():
    from support.openai_server import Fault

    from dspex.exceptions import StepExecutionError

    with openai_server() as server:
        server.enqueue(*[Fault.error(400, "bad request (injected)")] * 3)
        with pytest.raises(StepExecutionError, match="more than max_errors=2 rows failed"):
            run_pipeline(_flaky_spec(max_errors=2), data=_questions(40), lm=_lm(server), resume=False)
        served = len(server.chat_requests)
    assert served < 40  # the run stopped: later batches never started


# --- item 8: dspy.configure(lm=...) is the LM when nothing else is named -------------------------


def test_the_lm_dspy_configure_set_answers_when_none_is_given():
    # Original failure: 0 requests to the configured LM; the offline LM answered silently.
    spec = PipelineSpec.model_validate(QA)
    with openai_server() as server:
        dspy.configure(lm=_lm(server))
        result = run_pipeline(spec, data=_questions(5), resume=False)
        assert len(server.chat_requests) == 5
    assert result.summary.lm["model"] == "openai/test-model"
    assert result.summary.usage.requests == 5


def dspex_run(tmp_path: Path, spec: dict, rows: list[dict], env: dict[str, str] | None = None):
    """`dspex run SPEC DATA` as a user types it, in its own process, on the session's test server."""
    from prefect.settings import PREFECT_API_URL

    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    environ = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "COLUMNS": "200",
        **(env or {}),
    }
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from dspex.warm_runner import main; main()",
            "run",
            "spec.json",
            "data.jsonl",
        ],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_dspex_run_warns_when_the_offline_lm_answers(tmp_path):
    done = dspex_run(tmp_path, QA, _questions(2))
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout + done.stderr
    # Original failure: "INFO ... LM: dspex/offline-extractive (offline, ...; set DSPEX_LM_MODEL ...)".
    lines = [line for line in printed.splitlines() if "offline" in line and "DSPEX_LM_MODEL" in line]
    assert lines and all("WARNING" in line for line in lines), printed[-3000:]
