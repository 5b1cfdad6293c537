"""Automations end to end: a real ``prefect server start``, the automations ``dspex automations create``
makes, a notification block that posts to a webhook on loopback; the trigger events are emitted the way
DSPex emits them, and the test watches the server act (deployment paused, notification delivered,
``prefect.automation.action.executed`` recorded)."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cluster import Cluster, drain_api_workers
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.events.worker import EventsWorker
from prefect.settings import PREFECT_API_URL, temporary_settings
from typer.testing import CliRunner

from deployments.automations import AUTOMATION_NAMES, ensure_automations
from deployments.cli import app
from flows.telemetry import events

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]


class _Hook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        length = int(self.headers.get("Content-Length") or 0)
        type(self).received.append(json.loads(self.rfile.read(length) or b"{}"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture(scope="module")
def webhook():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Hook.received
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("automations"))
    try:
        cluster.start_server()
        with temporary_settings(updates={PREFECT_API_URL: cluster.api_url}):
            yield cluster
            drain_api_workers(cluster.api_url)
    finally:
        cluster.close()


def _wait(predicate, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _emit_until(emit, predicate, what, timeout=150.0, every=10.0):
    """Emit the trigger event until the server acts on it.

    The triggers service only sees events that arrive after it loaded the automation, and on a
    loaded 2-core machine loading can take longer than any fixed sleep: a repeated event (each a
    new one) makes the test wait for the service instead of guessing how long it needs.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert emit() is not None
        EventsWorker.drain_all()
        try:
            return _wait(predicate, what, timeout=min(every, max(deadline - time.monotonic(), 0.5)))
        except AssertionError:
            continue
    raise AssertionError(f"timed out waiting for {what}")


def test_breaker_pauses_the_deployment_and_drift_notifies(server, webhook, monkeypatch):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    url, received = webhook
    CustomWebhookNotificationBlock(
        name="dspex-test", url=url, json_data={"subject": "{{subject}}", "body": "{{body}}"}
    ).save("dspex-test", overwrite=True)

    # Created through the CLI, then again: idempotent (updated, never duplicated).
    monkeypatch.setenv("PREFECT_API_URL", server.api_url)
    first = CliRunner().invoke(app, ["automations", "create", "--notify-block", "custom-webhook/dspex-test"])
    assert first.exit_code == 0, first.output
    assert first.output.count("created") == 3
    again = ensure_automations("custom-webhook/dspex-test")
    assert [r.action for r in again] == ["updated"] * 3
    bad = CliRunner().invoke(app, ["automations", "create", "--notify-block", "custom-webhook/nope"])
    assert bad.exit_code == 1 and "no notification block" in bad.output

    with get_client(sync_client=True) as client:
        automations = {a.name: a for a in client.read_automations()}
        assert set(AUTOMATION_NAMES) <= set(automations) and len(automations) == 3
        breaker = automations["dspex: breaker opened"]
        # After the update the actions are still what was asked (Prefect's update drops unset fields).
        assert [a.type for a in breaker.actions] == ["pause-deployment", "send-notification"]
        flow_id = client.create_flow_from_name("nightly-eval")
        deployment_id = client.create_deployment(flow_id=flow_id, name="nightly")
        assert client.read_deployment(deployment_id).paused is False
        # The automations service loads new automations periodically; give it the time to see them.
        time.sleep(5)

        # The breaker event as a run of that deployment emits it (the events worker adds the
        # deployment from the run context; outside a run the test names it).
        def breaker_opened():
            return events.emit(
                "dspex.breaker.opened",
                {
                    "prefect.resource.id": "dspex.endpoint.openai/test-model",
                    "prefect.resource.name": "openai/test-model",
                },
                related=[
                    {
                        "prefect.resource.id": f"prefect.deployment.{deployment_id}",
                        "prefect.resource.role": "deployment",
                    }
                ],
                payload={
                    "endpoint": "openai/test-model",
                    "failures": 5,
                    "reset_seconds": 30,
                    "reason": "HTTP 500",
                },
            )

        _emit_until(
            breaker_opened,
            lambda: client.read_deployment(deployment_id).paused,
            "the deployment to be paused",
        )

        executed = _wait(
            lambda: (
                client.read_events(
                    filter=EventFilter(
                        event=EventNameFilter(name=["prefect.automation.action.executed"]),
                        resource=EventResourceFilter(id=[f"prefect.automation.{breaker.id}"]),
                    ),
                    limit=50,
                ).events
            ),
            "the pause action to be recorded",
        )
        assert any(e.payload.get("action_type") == "pause-deployment" for e in executed), executed
        _wait(
            lambda: any("breaker opened" in m.get("subject", "") for m in received),
            "the breaker notification",
        )
        note = next(m for m in received if "breaker opened" in m["subject"])
        assert "endpoint openai/test-model" in note["body"] and "after 5 consecutive" in note["body"]

        def drifted():
            with events.run_scope("nightly", "openai/test-model"):
                return events.estimate_drift(
                    "answer",
                    module="dspy.ChainOfThought",
                    pool="general",
                    estimated_ms=100.0,
                    actual_ms=450.0,
                )

        _emit_until(
            drifted, lambda: any("drift" in m.get("subject", "") for m in received), "the drift notification"
        )
        body = next(m for m in received if "drift" in m["subject"])["body"]
        assert "answer" in body and "4.5x" in body
