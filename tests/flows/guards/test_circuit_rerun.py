"""Issue 20: after an outage opened the breaker, a new run in the same process (the warm runner, a
notebook calling ``run_pipeline`` twice) waits out the cool-down, probes, and runs every row left.

The breaker lives in the process only (a new process starts with it closed), so the re-run here is a
second ``run_pipeline`` in this process, through real flows against the loopback provider.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import dspy
import pytest
from support.openai_server import FakeOpenAIServer, openai_server

from dspex.exceptions import DSPexError
from flows import PipelineSpec, run_pipeline
from flows.engine.pools import shutdown_local_pools
from flows.guards import circuit

pytestmark = pytest.mark.integration

ROWS = 40
HEALTHY = 8  # requests answered before the outage starts
RESET_S = 4.0
ANSWER = "[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]"


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with openai_server() as running:
        yield running


@pytest.fixture(autouse=True)
def _settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key, value in {
        "BREAKER_RESET_SECONDS": RESET_S,
        "BREAKER_FAILURE_THRESHOLD": 3,
        "LM_NUM_RETRIES": 0,
        "TASK_RETRY_DELAY_SECONDS": 0.01,
        "POOL_GENERAL_CAPACITY": 4,
        "MAX_ERRORS": ROWS,  # the outage run keeps its accounting to the end
    }.items():
        monkeypatch.setenv(f"DSPEX_{key}", str(value))
    circuit.reset_breakers()
    yield
    circuit.reset_breakers()
    shutdown_local_pools()


def _spec() -> PipelineSpec:
    step = {"module": "dspy.Predict", "signature": "question -> answer", "batch_size": 4}
    return PipelineSpec.model_validate({"name": "qa-breaker", "steps": [step], "continue_on_error": True})


def _rows() -> list[dict[str, str]]:
    return [{"question": f"Where is city {i}? Context: City {i} is in country {i}."} for i in range(ROWS)]


def test_a_rerun_after_an_outage_waits_for_the_cool_down_probes_and_completes(
    server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    lm = dspy.LM("openai/test-model", api_base=server.base_url, api_key="sk-test", cache=False)
    answered = {"n": 0}
    lock = threading.Lock()

    def responder(messages: object) -> str:  # the provider goes down after HEALTHY answers
        with lock:
            answered["n"] += 1
            if answered["n"] >= HEALTHY:
                server.outage_status = 500
        return ANSWER

    server.responder = responder
    try:
        first = run_pipeline(_spec(), data=_rows(), lm=lm, mode="local")
        completed_first = first.summary.rows_out
    except DSPexError:  # however the outage run ends, its completed rows are kept for the re-run
        completed_first = -1
    assert circuit.breaker_for(f"openai/test-model@{server.base_url}").state == "open"
    requests_first = len(server.chat_requests)
    assert requests_first < ROWS  # the breaker stopped the outage run early

    server.outage_status = None  # the provider recovered
    server.responder = lambda messages: ANSWER
    caplog.set_level(logging.WARNING, logger="dspex.circuit")
    start = time.monotonic()
    second = run_pipeline(_spec(), data=_rows(), lm=lm, mode="local")
    took = time.monotonic() - start

    summary = second.summary
    assert summary.failed == 0 and summary.not_attempted == 0
    assert summary.rows_out == ROWS
    assert all(row.get("answer") for row in second.rows())
    paid = len(server.chat_requests) - requests_first
    assert summary.reused_rows >= 1
    if completed_first >= 0:
        assert summary.reused_rows == completed_first
    assert paid == ROWS - summary.reused_rows  # only the rows left, the probe among them
    waits = [r.getMessage() for r in caplog.records if "waiting" in r.getMessage()]
    assert len(waits) == 1, waits  # said once, with the time
    assert "for its cool-down, then sending one probe batch" in waits[0]
    assert took >= 1.0  # it did wait (most of RESET_S is left right after the outage run)
