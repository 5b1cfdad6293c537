"""The batch-predict deployment in batch mode (issue 21), end to end, with a live server and a worker.

One module-scoped cluster: a Prefect server on PostgreSQL, the ``batch-predict`` and ``run-pipeline``
deployments from prefect.yaml, and one ``prefect worker start --pool general`` (one flow run at a
time), answering through a loopback OpenAI-compatible server with the batch API, whose batches take
``BATCH_DELAY_S`` to be answered. Checks, through the API:

* the first batch-predict run submits the batch and ends ``AwaitingBatch``; while the provider works
  the worker is free and completes a run-pipeline run; scheduled re-checks finish the job, and the
  rows the job completed are the rows an online run gives on the same server answers;
* with the worker killed while the batch is pending (and another started later), the job still
  completes, and no request was ever submitted twice.
"""

import time

import pytest
from cluster import Cluster, Postgres, drain_api_workers
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from dspex.settings import get_settings
from flows import PipelineSpec, run_pipeline
from flows.engine.pools import shutdown_local_pools
from tasks.lm import build_lm
from tasks.retrieval import load_demo_questions
from tests.support.openai_server import openai_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

BATCH_DELAY_S = 40
ENV = {
    "DSPEX_LM_MODEL": "openai/gpt-4o-mini",
    "OPENAI_API_KEY": "sk-test",
    "DSPEX_LM_CACHE": "false",
    "DSPEX_LM_BATCH_POLL_SECONDS": "3",
    "DSPEX_LM_BATCH_POLL_MAX_SECONDS": "5",
    "PREFECT_WORKER_QUERY_SECONDS": "1",
    "PREFECT_WORKER_PREFETCH_SECONDS": "1",
}
KILLED = "Answer in a few words."
TERMINAL = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}


def spec_of(name, module="dspy.Predict", instructions=None):
    # Steps differ between tests (the job id and resumed rows follow the step, not the pipeline name).
    step = {"module": module, "signature": "question -> answer", "instructions": instructions}
    return {"name": name, "steps": [step]}


@pytest.fixture(scope="module")
def provider():
    with openai_server() as server:
        yield server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, provider):
    database = Postgres()
    env = ENV | {"DSPEX_LM_API_BASE": provider.base_url}
    c = Cluster(tmp_path_factory.mktemp("batch-api"), extra_env=env, database_url=database.url)
    try:
        c.start_server()
        c.setup(["batch-predict", "run-pipeline"])
        c.start_prefect_worker("general", "general-1", "--limit", "1")
        c.wait_workers(["general-1"])
        yield c
        drain_api_workers(c.api_url)
    finally:
        c.close()
        database.close()


@pytest.fixture
def api(cluster, provider, monkeypatch):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DSPEX_LM_API_BASE", provider.base_url)
    monkeypatch.setenv("DSPEX_PAYLOAD_URL", str(cluster.payloads))
    with temporary_settings(updates={PREFECT_API_URL: cluster.api_url}):
        yield cluster
    shutdown_local_pools()


def wait_terminal(client, run_id, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.read_flow_run(run_id)
        if run.state_type in TERMINAL:
            return run
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} not finished in {timeout} s: {run.state_name}")


def batch_predict_runs(client):
    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["batch-predict"])), limit=200
    )


def wait_job_done(client, first, timeout):
    """Follow the re-check chain until a batch-predict run ends Completed (not AwaitingBatch)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [
            r
            for r in batch_predict_runs(client)
            if r.id != first.id and r.created > first.created and r.state_type in TERMINAL
        ]
        done = [r for r in runs if r.state_name == "Completed"]
        broken = [r for r in runs if r.state_type != StateType.COMPLETED]
        assert not broken, [(r.name, r.state_name, r.state.message) for r in broken]
        if done:
            return done[0], runs
        time.sleep(1)
    raise AssertionError("the re-check chain did not complete the job")


def rows_the_job_completed(spec_json):
    """The job's rows, read back through the resume store (a local run reusing them; no LM call)."""
    spec = PipelineSpec.model_validate(spec_json)
    rows = load_demo_questions("all")
    lm = build_lm(get_settings())  # the LM the worker built: same model, API base and options
    reused = run_pipeline(spec, data=[dict(r) for r in rows], lm=lm, mode="local")
    online = run_pipeline(spec, data=[dict(r) for r in rows], lm=lm, mode="local", resume=False)
    return reused, online


def test_a_pending_batch_holds_no_worker_and_the_job_completes_with_the_online_rows(api, provider):
    provider.batch.delay_s = BATCH_DELAY_S
    with get_client(sync_client=True) as client:
        first = run_deployment(
            "batch-predict/batch-predict",
            parameters={"spec": spec_of("nightly"), "dataset": "demo", "batch_api": True},
            timeout=0,
        )
        first_run = wait_terminal(client, first.id, 180)
        assert first_run.state_name == "AwaitingBatch", (first_run.state, api.log("worker-general-1"))
        (batch,) = provider.batch.batches.values()
        submitted = time.monotonic()
        # The worker (one run at a time) is free while the provider works: another deployment runs.
        other = run_deployment(
            "run-pipeline/run-pipeline",
            parameters={"spec": spec_of("meanwhile", "dspy.ChainOfThought"), "data": "demo"},
            timeout=0,
        )
        other_run = wait_terminal(client, other.id, 180)
        assert other_run.state_name == "Completed", api.log("worker-general-1")
        assert time.monotonic() - submitted < BATCH_DELAY_S and batch["status"] != "completed"
        done, chain = wait_job_done(client, first_run, 300)
    assert len(provider.batch.batches) == 1 and provider.batch.duplicates == []
    held = sum((r.end_time - r.start_time).total_seconds() for r in [first_run, *chain] if r.start_time)
    print(f"batch-predict: {len(chain)} re-check run(s), {held:.1f} worker-seconds in all")
    reused, online = rows_the_job_completed(spec_of("nightly"))
    assert reused.summary.reused_rows == 40 and reused.rows() == online.rows()


def test_a_worker_killed_while_the_batch_is_pending_loses_nothing(api, provider):
    provider.batch.delay_s = 12
    batches_before = len(provider.batch.batches)
    with get_client(sync_client=True) as client:
        first = run_deployment(
            "batch-predict/batch-predict",
            parameters={"spec": spec_of("killed", instructions=KILLED), "dataset": "demo", "batch_api": True},
            timeout=0,
        )
        first_run = wait_terminal(client, first.id, 180)
        assert first_run.state_name == "AwaitingBatch", api.log("worker-general-1")
        api.kill("worker-general-1")  # the re-check is scheduled; nothing runs it for a while
        time.sleep(8)
        api.start_prefect_worker("general", "general-2", "--limit", "1")
        _done, _chain = wait_job_done(client, first_run, 300)
    assert len(provider.batch.batches) == batches_before + 1 and provider.batch.duplicates == []
    reused, online = rows_the_job_completed(spec_of("killed", instructions=KILLED))
    assert reused.summary.reused_rows == 40 and reused.rows() == online.rows()
