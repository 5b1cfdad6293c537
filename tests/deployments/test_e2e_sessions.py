"""Sessions across workers end to end (issue 15): affinity to the worker that holds the session, and
failover when it dies, set up as docs/deployment.md section 11 says.

One module-scoped cluster: PostgreSQL on loopback for the server, ``prefect server start``, ``dspex
pools create`` and only the ``session-turn`` deployment from prefect.yaml, and two general-pool workers
started the documented way, each with a queue of its own::

    DSPEX_SESSION_AFFINITY_QUEUE=worker-a prefect worker start --pool general \\
        --work-queue default --work-queue worker-a

Every process (server, workers, this test) shares one session store through ``DSPEX_SESSION_URL`` (a
SQLite file: all of them run on this machine), and the workers answer through an OpenAI-compatible
server on loopback. The test drives a session the way a user does, with
`flows.sessions.turns.dispatch_turn` (``run_deployment`` against the live server), and checks through
the API and the store: the first turn goes to the pool's default queue, the next ones to the queue of
the worker that served it (the same process); once that worker is killed and its queue stops being
polled, the next turn goes to the default queue, the surviving worker loads the session from the store
and continues it with the whole history.
"""

import socket
import time

import dspy
import pytest
from cluster import Cluster, Postgres, drain_api_workers, server_tracebacks
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.utilities.asyncutils import run_coro_as_sync

from flows.sessions.session import open_session
from flows.sessions.store import get_store
from flows.sessions.turns import dispatch_turn, preferred_queue
from tests.support.openai_server import openai_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(420)]

#: Worker name -> its own queue in the general pool (DSPEX_SESSION_AFFINITY_QUEUE).
WORKERS = {"worker-a": "worker-a", "worker-b": "worker-b"}
#: DSPEX_SESSION_AFFINITY_LIVE_SECONDS of the dispatching test (dspex workers poll every 0.5 s).
LIVE_S = 6
TURN_TIMEOUT_S = 120
TURNS = [
    {"question": "When was the Eiffel Tower finished?", "context": "The Eiffel Tower was finished in 1889."},
    {
        "question": "Where does it stand?",
        "context": "The Eiffel Tower stands in Paris, on the Champ de Mars.",
    },
    {"question": "How tall is it?", "context": "The Eiffel Tower is 330 metres tall."},
    {"question": "Who designed it?", "context": "Gustave Eiffel's company designed and built the tower."},
]


@pytest.fixture(scope="module")
def lm_server():
    with openai_server() as server:
        yield server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, lm_server):
    root = tmp_path_factory.mktemp("sessions")
    shared = {
        "DSPEX_LM_MODEL": "openai/test-model",
        "DSPEX_LM_API_BASE": lm_server.base_url,
        "OPENAI_API_KEY": "sk-test",
        "DSPEX_LM_CACHE": "false",
        "DSPEX_LM_NUM_RETRIES": "0",
        "DSPEX_SESSION_URL": f"sqlite:///{root / 'sessions.db'}",
    }
    database = Postgres()
    c = Cluster(root, extra_env=shared, database_url=database.url)
    try:
        c.start_server()
        c.setup(["session-turn"])
        for name, queue in WORKERS.items():
            c.start_prefect_worker(
                "general",
                name,
                "--work-queue",
                "default",
                "--work-queue",
                queue,
                env={"DSPEX_SESSION_AFFINITY_QUEUE": queue},
            )
        c.wait_workers(list(WORKERS))
        yield c
        drain_api_workers(c.api_url)
    finally:
        c.close()
        database.close()


@pytest.fixture
def api(cluster, monkeypatch):
    """This test process as a user's: the cluster's API, the shared session store, the affinity window."""
    monkeypatch.setenv("DSPEX_SESSION_URL", cluster.env["DSPEX_SESSION_URL"])
    monkeypatch.setenv("DSPEX_SESSION_AFFINITY_LIVE_SECONDS", str(LIVE_S))
    monkeypatch.setenv("DSPEX_DISPATCH_POLL_SECONDS", "0.2")
    with temporary_settings(updates={PREFECT_API_URL: cluster.api_url}):
        yield cluster


def session_turn_runs(client, session_id):
    """The session's session-turn flow runs, oldest first."""
    runs = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=["session-turn"])), limit=200
    )
    return sorted((r for r in runs if r.parameters.get("session_id") == session_id), key=lambda r: r.created)


def wait_until_polled(client, queues, timeout=60):
    """Wait until every queue was polled within LIVE_S (the workers registered before they polled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        polled = {q: client.read_work_queue_by_name(q, work_pool_name="general").last_polled for q in queues}
        if all(p is not None and time.time() - p.timestamp() < LIVE_S for p in polled.values()):
            return
        time.sleep(0.5)
    raise AssertionError(f"queues not polled within {LIVE_S} s after {timeout} s: {polled}")


def test_turns_stay_on_the_sessions_worker_and_move_on_when_it_dies(api, lm_server):
    cluster = api
    host = socket.gethostname()
    pids = {name: cluster.procs[f"worker-{name}"].pid for name in WORKERS}
    with get_client(sync_client=True) as client:
        wait_until_polled(client, list(WORKERS.values()))

    # A real DSPy program, opened here; its step and state travel to the workers through the store.
    session = open_session(dspy.ChainOfThought("question, context -> answer"), ttl_seconds=600)
    store = get_store()
    served = []  # (queue recorded on the session, worker process) after each turn
    for inputs in TURNS[:3]:
        outputs = dispatch_turn(session.id, inputs, timeout_s=TURN_TIMEOUT_S)
        assert outputs.get("answer"), outputs
        record = store.load(session.id)
        served.append((record.work_queue, record.worker))

    home_queue, home_worker = served[0]
    home = next(name for name, queue in WORKERS.items() if queue == home_queue)
    other = next(name for name in WORKERS if name != home)
    assert served == [(home_queue, f"{host}:{pids[home]}")] * 3, (served, pids)
    record = store.load(session.id)
    assert [t["question"] for t in record.history] == [t["question"] for t in TURNS[:3]]
    assert all(t.get("answer") for t in record.history)
    with get_client(sync_client=True) as client:
        runs = session_turn_runs(client, session.id)
    assert [r.state_name for r in runs] == ["Completed"] * 3, [(r.name, r.state_name) for r in runs]
    # The first turn had no worker yet (default queue); the next two went to that worker's own queue.
    assert [r.work_queue_name for r in runs] == ["default", home_queue, home_queue]
    assert {(r.labels or {}).get("prefect.worker.name") for r in runs} == {home}

    # The worker holding the session dies: once its queue has not been polled for LIVE_S, the next
    # turn goes to the default queue, and the other worker continues the session from the store.
    cluster.kill(f"worker-{home}")
    killed = time.monotonic()
    while run_coro_as_sync(preferred_queue(session.id, "general")) is not None:
        assert time.monotonic() - killed < LIVE_S + 30, "the dead worker's queue still counts as live"
        time.sleep(0.5)
    failover_s = time.monotonic() - killed
    outputs = dispatch_turn(session.id, TURNS[3], timeout_s=TURN_TIMEOUT_S)
    assert outputs.get("answer"), outputs

    record = store.load(session.id)
    assert (record.work_queue, record.worker) == (WORKERS[other], f"{host}:{pids[other]}")
    assert [t["question"] for t in record.history] == [t["question"] for t in TURNS]  # nothing lost
    assert record.version == 4 and record.live
    # The surviving worker's program saw the three turns the dead one served.
    prompt = "\n".join(text for _, text in lm_server.chat_requests[-1].messages)
    assert all(t["question"] in prompt for t in TURNS), prompt[-3000:]
    with get_client(sync_client=True) as client:
        runs = session_turn_runs(client, session.id)
    assert len(runs) == 4 and runs[-1].state_name == "Completed", [(r.name, r.state_name) for r in runs]
    assert runs[-1].work_queue_name == "default"
    assert (runs[-1].labels or {}).get("prefect.worker.name") == other
    print(
        f"affinity dropped {failover_s:.1f} s after the kill (DSPEX_SESSION_AFFINITY_LIVE_SECONDS={LIVE_S})"
    )


def test_the_server_log_has_no_traceback(api):
    assert api.procs["server"].poll() is None, "the server exited"
    found = server_tracebacks(api.log("server", tail=10**8))
    assert not found, "\n---\n".join(found[:5])
