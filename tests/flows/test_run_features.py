"""Issue 12 through real flows and real HTTP: usage totals, resume, a budget stop, an in-process signal.

The LM is a plain ``dspy.LM`` against the loopback OpenAI-compatible server (one per module), with
DSPy's response cache off, so every request the pipeline pays for reaches the server and is counted.
Each test has its own DSPEX_HOME (conftest), hence its own resume store.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import dspy
import pytest
from support.openai_server import FakeOpenAIServer, openai_server

from dspex.exceptions import BudgetExceededError, RunInterruptedError
from flows import PipelineSpec, run_pipeline
from flows.engine.pools import shutdown_local_pools
from flows.telemetry.artifacts import duration_rows
from tasks.payloads import PayloadRef, read_rows
from tasks.usage import price

pytestmark = pytest.mark.integration

MODEL = "openai/gpt-4o-mini"  # priced by the cost map


def _spec(batch_size: int | None = None) -> PipelineSpec:
    step: dict[str, object] = {"module": "dspy.Predict", "signature": "question -> answer"}
    if batch_size:
        step["batch_size"] = batch_size
    return PipelineSpec.model_validate({"name": "qa-usage", "steps": [step]})


def _rows(n: int, start: int = 0) -> list[dict[str, str]]:
    return [
        {"question": f"Where is city {i}? Context: City {i} is in country {i}."}
        for i in range(start, start + n)
    ]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAIServer]:
    with openai_server() as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "true")
    server.reset()
    yield
    shutdown_local_pools()


def _lm(server: FakeOpenAIServer) -> dspy.LM:
    return dspy.LM(MODEL, api_base=server.base_url, api_key="sk-test", cache=False)


def test_usage_totals_match_what_the_server_served(server: FakeOpenAIServer) -> None:
    result = run_pipeline(_spec(batch_size=3), data=_rows(7), lm=_lm(server), mode="local")
    served = server.served_usage
    usage = result.summary.usage
    assert usage.requests == served["requests"] == 7
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        served["prompt_tokens"],
        served["completion_tokens"],
    )
    assert usage.cost_usd == pytest.approx(price(MODEL, usage.prompt_tokens, usage.completion_tokens))
    assert usage.cost_known
    (record,) = result.summary.steps
    assert record.usage == usage  # the step's own figures; one step, so the same as the run's
    assert "sk-test" not in result.summary.model_dump_json()
    # The next run's step estimates tokens and cost from what this one taught the registry.
    second = run_pipeline(_spec(batch_size=3), data=_rows(3, start=100), lm=_lm(server), mode="local")
    (learned,) = second.summary.steps
    assert learned.estimated_tokens == pytest.approx(learned.usage.total_tokens, rel=0.2)
    assert learned.estimated_cost_usd == pytest.approx(learned.usage.cost_usd, rel=0.2)
    (table_row,) = duration_rows(second.summary.steps)
    assert table_row["actual tokens"] == learned.usage.total_tokens
    assert table_row["estimated cost USD"] != "-" and table_row["actual cost USD"] != "-"


def test_a_rerun_reuses_every_completed_row_with_the_cache_off(server: FakeOpenAIServer) -> None:
    first = run_pipeline(_spec(batch_size=2), data=_rows(6), lm=_lm(server), mode="local")
    assert server.served_usage["requests"] == 6
    # Same data, different batching: nothing is paid again.
    again = run_pipeline(_spec(batch_size=4), data=_rows(6), lm=_lm(server), mode="local")
    assert server.served_usage["requests"] == 6
    assert again.summary.reused_rows == 6 and again.summary.usage.requests == 0
    assert [r["answer"] for r in again.rows()] == [r["answer"] for r in first.rows()]
    # Half new data: only the new half is paid for.
    run_pipeline(_spec(), data=_rows(6, start=3), lm=_lm(server), mode="local")
    assert server.served_usage["requests"] == 9
    # resume=False computes everything again.
    fresh = run_pipeline(_spec(), data=_rows(2), lm=_lm(server), mode="local", resume=False)
    assert fresh.summary.reused_rows == 0 and server.served_usage["requests"] == 11


def test_a_budget_stops_dispatching_keeps_what_is_done_and_resumes(server: FakeOpenAIServer) -> None:
    per_row = price(MODEL, 100, 11) or 0.0  # about one row's cost: the first batch of 2 rows fits
    with pytest.raises(BudgetExceededError) as info:
        run_pipeline(
            _spec(batch_size=2), data=_rows(10), lm=_lm(server), mode="local", max_cost_usd=2.5 * per_row
        )
    error = info.value
    paid = server.served_usage["requests"]
    assert 2 <= paid < 10 and error.completed == paid
    assert error.not_attempted == 10 - paid
    assert error.spent_usd <= error.max_cost_usd * 2  # at most the one unprojectable first batch over
    kept = read_rows(PayloadRef.model_validate(error.partial_ref))
    done = [r for r in kept if "_error" not in r]
    assert len(done) == paid and all(r["answer"] for r in done)
    assert all(r["_error"]["not_attempted"] for r in kept if "_error" in r)
    assert error.summary is not None and error.summary["stopped"].startswith("cost budget")
    # Resuming without the budget pays only for the rows not attempted.
    result = run_pipeline(_spec(batch_size=2), data=_rows(10), lm=_lm(server), mode="local")
    assert server.served_usage["requests"] == 10 and result.summary.reused_rows == paid


def test_a_signal_mid_run_stops_dispatch_and_ends_the_flow_run_cancelled(server: FakeOpenAIServer) -> None:
    from prefect.client.orchestration import get_client

    server.latency_s = 0.3
    fired = threading.Event()

    def interrupt_after_first_answers() -> None:
        while server.served_usage["requests"] < 2:
            if fired.wait(0.02):
                return
        fired.set()
        os.kill(os.getpid(), signal.SIGINT)  # a real signal, handled in the main thread

    watcher = threading.Thread(target=interrupt_after_first_answers, daemon=True)
    watcher.start()
    try:
        with pytest.raises(RunInterruptedError) as info:
            run_pipeline(_spec(batch_size=2), data=_rows(40), lm=_lm(server), mode="local")
    finally:
        fired.set()
        server.latency_s = 0.0
    error = info.value
    assert error.signal == "SIGINT" and error.not_attempted > 0
    assert server.served_usage["requests"] < 40  # dispatching stopped
    kept = read_rows(PayloadRef.model_validate(error.partial_ref))
    assert len(kept) == 40 and sum("_error" not in r for r in kept) == error.completed
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(limit=5, sort="START_TIME_DESC")  # type: ignore[arg-type]
    latest = next(r for r in runs if r.flow_id and r.state and r.state.name == "Cancelled")
    assert latest.state is not None and "SIGINT" in (latest.state.message or "")
