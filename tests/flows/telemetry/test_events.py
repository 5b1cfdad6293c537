"""dspex.* Prefect events: a pipeline run leaves them on the test server, related to its flow run."""

import time

import pytest
from dspy.utils.dummies import DummyLM
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter
from prefect.events.worker import EventsWorker

from flows import PipelineSpec, run_pipeline
from flows.engine.pools import shutdown_local_pools
from flows.telemetry import events

SPEC = {
    "name": "events-qa",
    "steps": [
        {"name": "answer", "module": "dspy.Predict", "signature": "question -> answer"},
        {"name": "shout", "native": "template", "template": "{{ answer }}!", "output": "loud"},
    ],
}


def _read_events(flow_run_id: str, names: list[str], expected: int, timeout: float = 30.0) -> list:
    """Events named ``names`` related to the flow run, polled until ``expected`` arrived."""
    EventsWorker.drain_all()
    deadline = time.monotonic() + timeout
    found: list = []
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            page = client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(name=names),
                    related=EventRelatedFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
                ),
                limit=50,
            )
            found = page.events
            if len(found) >= expected:
                return found
            time.sleep(0.5)
    return found


@pytest.mark.integration
def test_pipeline_run_leaves_routed_and_summary_events_related_to_its_flow_run():
    lm = DummyLM({f"<<q{i}>>": {"answer": f"a{i}"} for i in range(6)})
    state = run_pipeline(
        PipelineSpec.model_validate(SPEC),
        data=[{"question": f"<<q{i}>>"} for i in range(6)],
        lm=lm,
        return_state=True,
    )
    shutdown_local_pools()
    result = state.result()
    assert result.summary.rows_out == 6
    flow_run_id = str(state.state_details.flow_run_id)

    found = _read_events(flow_run_id, ["dspex.step.routed", "dspex.run.summary"], expected=2)
    by_name = {e.event: e for e in found}
    assert set(by_name) == {"dspex.step.routed", "dspex.run.summary"}, [e.event for e in found]

    routed = by_name["dspex.step.routed"]
    assert routed.resource.id == "dspex.step.answer"
    assert routed.payload["pool"] == "general" and routed.payload["rows"] == 6
    assert routed.payload["batches"] >= 1 and routed.payload["module"] == "dspy.Predict"
    related = {r.id: r.role for r in routed.related}
    assert related[f"prefect.flow-run.{flow_run_id}"] == "flow-run"
    assert related["dspex.pool.general"] == "pool"
    assert related["dspex.pipeline.events-qa"] == "pipeline"
    assert related["dspex.lm.dummy"] == "lm"  # DummyLM's model name

    summary = by_name["dspex.run.summary"]
    assert summary.resource.id == "dspex.pipeline.events-qa"
    assert summary.payload["rows_in"] == 6 and summary.payload["failed"] == 0
    assert summary.payload["rows_per_s"] > 0 and summary.payload["peak_rss_mb"] > 0
    # Per step, never per row: one routed event for the one routed step.
    assert sum(e.event == "dspex.step.routed" for e in found) == 1


def test_events_are_a_no_op_without_an_api():
    # No flow run and no PREFECT_API_URL: nothing is built, and no server is started to take it.
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert events.events_active() is False
        assert events.breaker_opened("general", failures=5, reset_seconds=30) is None


def test_events_off_by_setting_build_nothing(monkeypatch):
    monkeypatch.setenv("DSPEX_EVENTS_ENABLED", "false")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    with events.run_scope("p", "m"):
        assert events.events_active() is False
        assert events.run_summary(object()) is None


def test_event_names_must_be_under_dspex():
    with pytest.raises(ValueError, match="dspex."):
        events.emit("prefect.flow-run.Completed", {"prefect.resource.id": "x"})


def test_estimate_drift_only_above_the_factor(monkeypatch):
    sent = []
    monkeypatch.setattr(events, "events_active", lambda: True)
    monkeypatch.setattr(
        events, "emit", lambda name, resource, **kw: sent.append((name, resource, kw)) or name
    )
    with events.run_scope("p", "m"):
        assert (
            events.estimate_drift("s", module="dspy.Predict", pool="general", estimated_ms=100, actual_ms=199)
            is None
        )
        assert events.estimate_drift(
            "s", module="dspy.Predict", pool="general", estimated_ms=100, actual_ms=250
        )
        assert (
            events.estimate_drift(
                "s", module="dspy.Predict", pool="general", estimated_ms=None, actual_ms=250
            )
            is None
        )
    ((name, resource, kw),) = sent
    assert name == "dspex.estimate.drift" and resource["prefect.resource.id"] == "dspex.step.s"
    assert kw["payload"]["ratio"] == 2.5 and kw["pool"] == "general"


def test_breaker_state_changes_become_events(monkeypatch):
    from flows.guards.circuit import breaker_for, remove_listener, reset_breakers

    sent = []
    monkeypatch.setattr(events, "events_active", lambda: True)
    monkeypatch.setattr(
        events, "emit", lambda name, resource, **kw: sent.append((name, resource, kw)) or name
    )
    reset_breakers()
    breaker = breaker_for(
        "openai/test-model@http://user:pw@127.0.0.1:1/v1", failure_threshold=2, reset_seconds=0.05
    )
    try:
        with events.run_scope("p", "openai/test-model"):
            breaker.record_failure()
            assert sent == []  # one failure is not enough
            breaker.record_failure()
            time.sleep(0.1)  # past reset_seconds: half-open, one probe batch
            assert breaker.admit_batch() == "probe"
            breaker.record_success()
    finally:
        remove_listener(events.breaker_listener)
        reset_breakers()
    names = [name for name, _, _ in sent]
    assert names == ["dspex.breaker.opened", "dspex.breaker.closed"]
    opened = sent[0][2]["payload"]
    assert opened["failures"] == 2 and "pw" not in opened["endpoint"]  # credentials masked


def test_an_exhausted_cost_budget_emits_budget_exceeded(monkeypatch):
    from flows.guards.budget import CostBudget
    from tasks.usage import Usage

    sent = []
    monkeypatch.setattr(events, "events_active", lambda: True)
    monkeypatch.setattr(
        events, "emit", lambda name, resource, **kw: sent.append((name, resource, kw)) or name
    )
    budget = CostBudget(max_cost_usd=0.01, per_row_usd=0.001)
    with events.run_scope("costly", "openai/gpt-4o-mini"):
        assert budget.admit(5)
        budget.settle(5, Usage(prompt_tokens=10, completion_tokens=5, requests=5, cost_usd=0.006))
        assert not budget.admit(10)  # 0.006 + 10 x 0.0012 > 0.01
    ((name, resource, kw),) = sent
    assert name == "dspex.budget.exceeded" and resource["prefect.resource.id"] == "dspex.pipeline.costly"
    assert kw["payload"]["budget"] == "cost_usd" and kw["payload"]["limit"] == 0.01
    assert kw["payload"]["used"] == 0.006 and "projected" in kw["payload"]["action"]


def test_batches_whose_rows_were_retried_emit_one_event_each(monkeypatch):
    from tasks.batch import BatchResult, RowError

    sent = []
    monkeypatch.setattr(events, "events_active", lambda: True)
    monkeypatch.setattr(
        events, "emit", lambda name, resource, **kw: sent.append((name, resource, kw)) or name
    )
    once = BatchResult(
        outputs=[{}], errors=[None], latencies_ms=[1.0], wall_ms=1.0, attempts=1, pool="general"
    )
    error = RowError(type="RateLimitError", message="429", retryable=True)
    thrice = BatchResult(
        outputs=[{}, None],
        errors=[None, error],
        latencies_ms=[1.0, 0.0],
        wall_ms=9.0,
        attempts=3,
        pool="general",
    )
    with events.run_scope("p", "m"):
        events.batches_retried("answer", [once, thrice, RuntimeError("lost")])
    ((name, resource, kw),) = sent
    assert name == "dspex.batch.retried" and resource["prefect.resource.id"] == "dspex.step.answer"
    assert kw["pool"] == "general"
    assert kw["payload"]["batch"] == 1 and kw["payload"]["attempt"] == 3
    assert (
        kw["payload"]["error_type"] == "RateLimitError"
        and "1 row(s) still failed" in kw["payload"]["message"]
    )
