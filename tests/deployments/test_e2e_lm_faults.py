"""Distributed mode against a rate-limited, then failing, provider (issue 12), end to end.

One module-scoped cluster: a Prefect server on PostgreSQL, the ``run-step-general`` deployment and
two warm ``dspex`` workers on the general pool, answering through a loopback OpenAI-compatible
server that this test runs. The workers are told ``DSPEX_LM_REQUESTS_PER_MINUTE=600``: the limit is
shared through a Prefect global concurrency limit, so two workers together stay at 10 requests/s.
Then the provider goes down mid-run: the run stops dispatching and ends with every row accounted.
"""

import threading
import time

import pytest
from cluster import Cluster, Postgres, drain_api_workers
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows import PipelineSpec, run_pipeline
from flows.engine.pools import shutdown_local_pools
from flows.guards import circuit
from tests.support.openai_server import openai_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(420)]

ANSWER = "[[ ## answer ## ]]\nforty-two\n\n[[ ## completed ## ]]"
RATE_PER_S = 10
WORKER_ENV = {
    "DSPEX_POOL_GENERAL_CAPACITY": "4",
    "DSPEX_LM_MODEL": "openai/test-model",
    "OPENAI_API_KEY": "sk-test",
    "DSPEX_LM_CACHE": "false",
    "DSPEX_LM_NUM_RETRIES": "1",
    "DSPEX_TASK_RETRY_DELAY_SECONDS": "0.1",
    "DSPEX_LM_REQUESTS_PER_MINUTE": str(RATE_PER_S * 60),
    "DSPEX_BREAKER_FAILURE_THRESHOLD": "5",
}


class Provider:
    """Stamps every answered request; can go down after a number of requests."""

    def __init__(self, server):
        self.server = server
        self.stamps: list[float] = []
        self.down_after: int | None = None
        self.down_at_request: int | None = None
        self.lock = threading.Lock()
        server.responder = self.respond

    def respond(self, messages):
        with self.lock:
            self.stamps.append(time.monotonic())
            if (
                self.down_after is not None
                and len(self.stamps) >= self.down_after
                and self.down_at_request is None
            ):
                self.server.outage_status = 500
                self.down_at_request = len(self.server.chat_requests)
        return ANSWER


@pytest.fixture(scope="module")
def provider():
    with openai_server() as server:
        server.rate_limit_per_s = RATE_PER_S * 1.5  # the provider's own limit, above the one we set
        yield Provider(server)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, provider):
    database = Postgres()
    env = WORKER_ENV | {"DSPEX_LM_API_BASE": provider.server.base_url}
    c = Cluster(tmp_path_factory.mktemp("faults"), extra_env=env, database_url=database.url)
    try:
        c.start_server()
        c.setup(["run-step-general"])
        # One flow run at a time per worker, so both take batches (and share the limit).
        c.start_worker("general", "general-a", "--limit", "1")
        c.start_worker("general", "general-b", "--limit", "1")
        c.wait_workers(["general-a", "general-b"])
        yield c
        drain_api_workers(c.api_url)
    finally:
        c.close()
        database.close()


@pytest.fixture
def orchestrator(cluster, provider, monkeypatch):
    for key, value in WORKER_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DSPEX_LM_API_BASE", provider.server.base_url)
    monkeypatch.setenv("DSPEX_MODE", "distributed")
    monkeypatch.setenv("DSPEX_PAYLOAD_URL", str(cluster.payloads))
    monkeypatch.setenv("DSPEX_DISPATCH_POLL_SECONDS", "0.2")
    monkeypatch.setenv("DSPEX_WORKER_GRACE_SECONDS", "8")
    circuit.reset_breakers()
    with temporary_settings(updates={PREFECT_API_URL: cluster.api_url}):
        yield cluster
    circuit.reset_breakers()
    shutdown_local_pools()


def qa_spec(name, batch_size):
    step = {"module": "dspy.Predict", "signature": "question -> answer", "batch_size": batch_size}
    return PipelineSpec.model_validate({"name": name, "steps": [step]})


def workers_that_ran(client, after):
    runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["run-step"])), limit=200)
    return {
        (r.labels or {}).get("prefect.worker.name")
        for r in runs
        if r.state_type.value == "COMPLETED" and r.created and r.created.timestamp() >= after
    }


def test_two_workers_share_one_rate_limit(orchestrator, provider):
    started = time.time()
    n = 80  # four batches of 20: long enough that the rate, not dispatching, sets the pace
    result = run_pipeline(qa_spec("shared-rate", 20), data=[{"question": f"rate {i}?"} for i in range(n)])
    assert result.summary.failed == 0 and result.summary.rows_out == n
    with get_client(sync_client=True) as client:
        assert workers_that_ran(client, started) == {"general-a", "general-b"}
    stamps = sorted(provider.stamps[-n:])
    span = stamps[-1] - stamps[0]
    # Each worker alone may go at 10/s; together they must too (a burst of the limit's slots aside).
    print(f"shared rate: {n} requests from two workers in {span:.1f} s (limit {RATE_PER_S}/s)")
    assert (n - 2 * RATE_PER_S) / span <= RATE_PER_S * 1.15, (n, span)
    assert n / span >= RATE_PER_S * 0.3, (n, span)  # and sharing does not starve them either
    assert provider.server.throttled <= 0.02 * len(provider.stamps)


def test_an_outage_mid_run_stops_dispatching_and_accounts_for_every_row(orchestrator, provider):
    n = 120
    provider.down_after = len(provider.stamps) + 20  # the provider fails from its 20th answer on
    start = time.monotonic()
    result = run_pipeline(
        qa_spec("outage", 4), data=[{"question": f"outage {i}?"} for i in range(n)], continue_on_error=True
    )
    elapsed = time.monotonic() - start
    summary = result.summary
    (record,) = summary.steps
    assert provider.down_at_request is not None
    after_outage = len(provider.server.chat_requests) - provider.down_at_request
    print(
        f"outage: run ended {elapsed:.1f} s after it started, {after_outage} requests after the provider went "
        f"down; {summary.rows_out} completed, {record.not_attempted} not attempted of {n}"
    )
    assert summary.rows_out >= 19 and summary.rows_out + summary.failed == n  # every row accounted
    assert record.not_attempted > 0  # the run stopped dispatching instead of failing every row
    assert after_outage <= 50, after_outage
    assert elapsed < 120, elapsed
    failed = [r for r in result.rows() if "_error" in r]
    assert all(r["_error"]["retryable"] for r in failed)  # a re-run picks them up
