"""Distributed mode end to end: a real Prefect server on loopback, the three pools, dspex workers.

One module-scoped cluster on PostgreSQL (distributed mode's documented database, on loopback):
``prefect server start`` (own PREFECT_HOME, free port), ``dspex pools create``,
``prefect --no-prompt deploy --all`` from prefect.yaml, and one ``dspex worker`` per pool (two for
general, so one can be killed). Workers answer through an OpenAI-compatible server on loopback that
this test runs, slowed down so a batch is still running when its worker is killed.
"""

import json
import threading
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
from cluster import Cluster, Postgres, drain_api_workers
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowFilter,
    FlowFilterName,
)
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows import PipelineSpec, run_pipeline
from flows.engine.pools import shutdown_local_pools
from flows.guards.resume import row_key
from flows.telemetry.artifacts import duration_key
from tests.support.openai_server import Fault, openai_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(480)]

CAPACITY = {
    "DSPEX_POOL_GENERAL_CAPACITY": "2",
    "DSPEX_POOL_OPTIMIZER_CAPACITY": "2",
    "DSPEX_POOL_GPU_CAPACITY": "2",
}
GRACE_S = 8  # DSPEX_WORKER_GRACE_SECONDS of the orchestrating test process
HEARTBEAT_S = 2  # the workers' --heartbeat-seconds
QUESTIONS = [
    "What is the capital of France?",
    "Who wrote Hamlet?",
    "What is water made of?",
    "How far away is the moon?",
    "What is DSPy?",
    "Which planet is largest?",
]


@pytest.fixture(scope="module")
def lm_server():
    with openai_server() as server:
        yield server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, lm_server):
    lm_env = {
        "DSPEX_LM_MODEL": "openai/test-model",
        "DSPEX_LM_API_BASE": lm_server.base_url,
        "OPENAI_API_KEY": "sk-test",
        "DSPEX_LM_CACHE": "false",
        "DSPEX_LM_NUM_RETRIES": "0",
    }
    database = Postgres()
    c = Cluster(tmp_path_factory.mktemp("cluster"), extra_env=CAPACITY | lm_env, database_url=database.url)
    try:
        c.start_server()
        c.setup_all()
        for pool, name in (
            ("general", "general-1"),
            ("general", "general-2"),
            ("optimizer", "optimizer-1"),
            ("gpu", "gpu-1"),
        ):
            c.start_worker(pool, name)
        c.wait_workers(["general-1", "general-2", "optimizer-1", "gpu-1"])
        yield c
        drain_api_workers(c.api_url)
    finally:
        c.close()
        database.close()


@pytest.fixture
def distributed_env(cluster, monkeypatch):
    for key, value in CAPACITY.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DSPEX_MODE", "distributed")
    monkeypatch.setenv("DSPEX_PAYLOAD_URL", str(cluster.payloads))
    monkeypatch.setenv("DSPEX_DISPATCH_POLL_SECONDS", "0.2")
    monkeypatch.setenv("DSPEX_WORKER_GRACE_SECONDS", str(GRACE_S))
    with temporary_settings(updates={PREFECT_API_URL: cluster.api_url}):
        yield cluster
    shutdown_local_pools()


def run_step_flow_runs(client):
    return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["run-step"])), limit=200)


def test_steps_land_on_all_three_pools_and_artifacts_read_back(distributed_env, lm_server):
    spec = PipelineSpec.model_validate(
        {
            "name": "three-pools",
            "steps": [
                {"module": "dspy.ChainOfThought", "signature": "question -> answer", "batch_size": 3},
                {"retrieve": "question", "k": 2},
                {
                    "name": "judge",
                    "module": "dspy.Predict",
                    "signature": "context, question, answer -> verdict",
                    "pool": "optimizer",
                    "batch_size": 6,
                },
            ],
        }
    )
    result = run_pipeline(spec, data=[{"question": q} for q in QUESTIONS])
    rows = result.rows()
    assert [r["_row"] for r in rows] == list(range(len(QUESTIONS)))
    assert all("_error" not in r and r["answer"] and len(r["context"]) == 2 and "verdict" in r for r in rows)
    assert {s.step: s.pool for s in result.summary.steps} == {
        "chain_of_thought": "general",
        "retrieve": "gpu",
        "judge": "optimizer",
    }

    with get_client(sync_client=True) as client:
        runs = run_step_flow_runs(client)
        assert {r.work_pool_name for r in runs if r.state_type.value == "COMPLETED"} == {
            "general",
            "optimizer",
            "gpu",
        }
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[duration_key("three-pools")]))
        )
    assert artifacts and "estimated ms" in str(artifacts[0].data)


def journaled_rows(payloads, resume_key):
    """The row keys the journals of one dispatched batch hold (whole lines only)."""
    step_id, batch = resume_key.split("-", 1)
    keys = set()
    for path in (payloads / "results" / step_id).glob(f"{batch}-*.rows.jsonl"):
        for line in path.read_bytes().splitlines():
            try:
                keys.add(json.loads(line)["k"])
            except ValueError:
                continue  # cut short by the kill
    return keys


def test_a_killed_worker_leaves_its_batch_retried_and_every_row_exactly_once(distributed_env, lm_server):
    cluster = distributed_env
    lm_server.reset()
    lm_server.enqueue(*[Fault.slow(1.0) for _ in range(200)])  # every LM call takes ~1 s
    spec = PipelineSpec.model_validate(
        {
            "name": "kill",
            "steps": [{"module": "dspy.Predict", "signature": "question -> answer", "batch_size": 4}],
        }
    )
    data = [{"question": f"{QUESTIONS[i % len(QUESTIONS)]} ({i})"} for i in range(16)]
    outcome = {}

    def orchestrate():
        try:  # settings contexts do not cross threads: point this one at the cluster too
            with temporary_settings(updates={PREFECT_API_URL: cluster.api_url}):
                outcome["result"] = run_pipeline(spec, data=data)
        except BaseException as exc:
            outcome["error"] = exc

    with get_client(sync_client=True) as client:
        before = {r.id for r in run_step_flow_runs(client)}
    thread = threading.Thread(target=orchestrate)
    thread.start()
    victim = None
    seen = []
    deadline = time.monotonic() + 120
    with get_client(sync_client=True) as client:
        while victim is None and time.monotonic() < deadline:
            for run in run_step_flow_runs(client):
                seen.append(
                    (run.name, run.state_type.value, dict(run.labels or {}).get("prefect.worker.name"))
                )
                name = (run.labels or {}).get("prefect.worker.name")
                if (
                    run.id not in before
                    and run.state_type.value == "RUNNING"
                    and name in ("general-1", "general-2")
                    # Killed once it has journaled a row of its batch (issue 26): that row must not run again.
                    and journaled_rows(cluster.payloads, run.parameters.get("resume_key", "x-x"))
                ):
                    victim = name
                    break
            time.sleep(0.2)
    assert victim is not None, (
        f"no run-step run on a general worker ever journaled a row: {outcome} {sorted(set(seen))[-12:]}"
    )
    killed_at = datetime.now(UTC)
    cluster.kill(f"worker-{victim}")
    with get_client(sync_client=True) as client:  # the rows its batches had finished when it died
        victim_runs = [
            r
            for r in run_step_flow_runs(client)
            if r.id not in before and (r.labels or {}).get("prefect.worker.name") == victim
        ]
    finished = set().union(
        *(journaled_rows(cluster.payloads, r.parameters["resume_key"]) for r in victim_runs)
    )
    thread.join(timeout=300)
    assert not thread.is_alive(), "the pipeline did not finish after a worker was killed"
    assert "error" not in outcome, outcome.get("error")
    rows = outcome["result"].rows()
    assert Counter(r["_row"] for r in rows) == Counter(range(len(data)))  # every row exactly once
    assert all("_error" not in r and r["answer"] for r in rows)
    with get_client(sync_client=True) as client:
        runs = [r for r in run_step_flow_runs(client) if r.id not in before]
    states = Counter(r.state_type.value for r in runs)
    assert states["CRASHED"] >= 1, states  # the killed worker's run was marked crashed...
    assert states["COMPLETED"] == 4, states  # ...and each of the 4 batches completed exactly once
    # Detection time: from the kill to the run marked CRASHED. The dispatcher trusts a worker record
    # for the grace period, then needs the silence to last the grace again (docs/deployment.md):
    # at most 2 x grace + one heartbeat, plus polling.
    crashed = [r for r in runs if r.state_type.value == "CRASHED" and r.state is not None]
    detected_s = min((r.state.timestamp - killed_at).total_seconds() for r in crashed)
    print(
        f"dead worker detected {detected_s:.1f} s after the kill (grace {GRACE_S} s, heartbeat {HEARTBEAT_S} s)"
    )
    assert 0 < detected_s <= 2 * GRACE_S + HEARTBEAT_S + 4, detected_s
    # The rows the killed worker had finished were kept: the LM answered each of them once, and the
    # re-dispatched batches reused them (only its rows in flight, at most its capacity, ran twice).
    question_of = {row_key(spec.steps[0], row): row["question"] for row in data}
    asked = Counter(q for r in lm_server.chat_requests for q in question_of.values() if q in str(r.messages))
    assert finished and all(asked[question_of[k]] == 1 for k in finished), (finished, asked)
    assert outcome["result"].summary.reused_rows >= len(finished)
    assert len(data) <= sum(asked.values()) <= len(data) + int(CAPACITY["DSPEX_POOL_GENERAL_CAPACITY"])
    print(f"{len(finished)} row(s) the killed worker had finished were reused, not run again")


def test_usage_is_accounted_and_a_rerun_reuses_completed_rows_on_the_pools(distributed_env, lm_server):
    """Issue 12 in distributed mode: tokens as the server served them, and resume by the same store."""
    spec = PipelineSpec.model_validate(
        {
            "name": "resume-remote",
            "steps": [{"module": "dspy.Predict", "signature": "question -> answer", "batch_size": 2}],
        }
    )
    data = [{"question": f"Where is parcel {i}? Parcel {i} is in Oslo."} for i in range(6)]
    from flows.engine.distributed import pool_status

    with get_client(sync_client=True) as client:  # heartbeats lag on a loaded machine: wait for one
        deadline = time.monotonic() + 90
        while not pool_status(client, "general", 8).ok and time.monotonic() < deadline:
            time.sleep(1)
    lm_server.reset()
    first = run_pipeline(spec, data=data)
    served = lm_server.served_usage
    assert first.summary.mode == "distributed" and first.summary.failed == 0
    assert first.summary.usage.requests == served["requests"] == 6
    assert first.summary.usage.prompt_tokens == served["prompt_tokens"]
    # Same rows plus one, batched differently: only the new row reaches a worker's LM.
    again = run_pipeline(
        spec.model_copy(update={"steps": [spec.steps[0].model_copy(update={"batch_size": 3})]}),
        data=[*data, {"question": "Where is parcel 99? Parcel 99 is in Rome."}],
    )
    assert lm_server.served_usage["requests"] == 7
    assert again.summary.reused_rows == 6 and again.summary.usage.requests == 1
    assert [r["answer"] for r in again.rows()][:6] == [r["answer"] for r in first.rows()]
