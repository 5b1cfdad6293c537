"""The session-turn and cleanup-sessions flows on the test server, and the affinity queue choice."""

import time

import pytest
from dspy.utils.dummies import DummyLM
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.utilities.asyncutils import run_coro_as_sync

from dspex.exceptions import SessionExpiredError, SessionNotFoundError
from flows.sessions.session import get_session, open_session, run_turn
from flows.sessions.turns import cleanup_sessions, history_artifact_key, preferred_queue, session_turn

pytestmark = pytest.mark.integration
QA = {"module": "dspy.Predict", "signature": "question -> answer"}


def test_session_turn_runs_with_its_defaults_then_continues_with_history_artifact():
    first = session_turn()
    assert first.turns == 1 and first.outputs["answer"]
    second = session_turn(
        inputs={"question": "And where is it?", "context": "It is in Paris."}, session_id=first.session_id
    )
    assert (second.session_id, second.turns) == (first.session_id, 2)
    history = get_session(first.session_id).history
    assert [t["question"] for t in history] == ["When was the Eiffel Tower finished?", "And where is it?"]

    async def read():
        async with get_client() as client:
            key = history_artifact_key(first.session_id)
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
            )

    artifacts = run_coro_as_sync(read())
    latest = max(artifacts, key=lambda a: a.created)
    assert "And where is it?" in str(latest.data) and "When was the Eiffel Tower finished?" in str(
        latest.data
    )


def test_session_turn_with_a_live_lm_and_an_expired_session_fails_clearly():
    session = open_session(QA, ttl_seconds=0.3)
    time.sleep(0.4)
    with pytest.raises(SessionExpiredError):
        session_turn(inputs={"question": "q?"}, session_id=session.id, lm=DummyLM([{"answer": "a"}]))


def test_cleanup_sessions_flow_removes_expired_and_closed_only():
    expired = open_session(QA, ttl_seconds=0.3)
    closed = open_session(QA)
    closed.close()
    live = open_session(QA)
    time.sleep(0.4)
    removed = cleanup_sessions()
    assert set(removed) >= {expired.id, closed.id} and live.id not in removed
    for gone in (expired.id, closed.id):
        with pytest.raises(SessionNotFoundError):
            get_session(gone)
    assert get_session(live.id).id == live.id


def test_preferred_queue_only_while_the_workers_queue_is_polled(monkeypatch):
    session = open_session(QA)

    def preferred(**kwargs):
        return run_coro_as_sync(preferred_queue(session.id, "affinity-pool", **kwargs))

    async def client_call(method, *args, **kwargs):
        async with get_client() as client:
            return await getattr(client, method)(*args, **kwargs)

    assert preferred() is None  # no turn served yet
    run_turn(session.id, {"question": "q?"}, lm=DummyLM([{"answer": "a"}]), work_queue="worker-a")
    run_coro_as_sync(
        client_call("create_work_pool", WorkPoolCreate(name="affinity-pool", type="process"), overwrite=True)
    )
    assert preferred() is None  # no such queue yet
    run_coro_as_sync(client_call("create_work_queue", name="worker-a", work_pool_name="affinity-pool"))
    assert preferred() is None  # nobody polls it
    run_coro_as_sync(
        client_call("get_scheduled_flow_runs_for_work_pool", "affinity-pool", work_queue_names=["worker-a"])
    )
    assert preferred() == "worker-a"  # its worker is live
    assert preferred(affinity_live_seconds=0) is None
    monkeypatch.setenv("DSPEX_SESSION_AFFINITY_LIVE_SECONDS", "0.001")  # what dispatch_turn uses
    assert preferred() is None
    monkeypatch.delenv("DSPEX_SESSION_AFFINITY_LIVE_SECONDS")
    session.close()
    assert preferred() is None  # closed: no affinity
