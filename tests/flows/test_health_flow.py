"""The ``health`` flow: a failed check ends the run Failed and leaves ``dspex.health.failed``."""

import time

import pytest
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter
from prefect.events.worker import EventsWorker

from flows.health import health

pytestmark = pytest.mark.integration


def test_failed_checks_fail_the_run_and_emit_an_event(monkeypatch, tmp_path):
    # The session's test server has no dspex pools: the pool checks fail (payloads and registry pass).
    monkeypatch.setenv("DSPEX_PAYLOAD_URL", str(tmp_path / "payloads"))
    state = health(no_lm=True, return_state=True)
    assert state.is_failed()
    assert "pool:general" in state.message and "payloads" not in state.message
    flow_run_id = state.state_details.flow_run_id

    EventsWorker.drain_all()
    deadline = time.monotonic() + 30
    found = []
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline and not found:
            found = client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(name=["dspex.health.failed"]),
                    related=EventRelatedFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
                ),
                limit=10,
            ).events
            time.sleep(0.5)
    (event,) = found
    failed = {c["name"] for c in event.payload["failed"]}
    assert {"pool:general", "workers:gpu"} <= failed and "payloads" not in failed
    assert event.resource.id == "dspex.health" and "pool:general" in event.resource["dspex.failed"]
