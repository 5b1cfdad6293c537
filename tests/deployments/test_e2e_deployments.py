"""Deployments as users run them: the documented cluster, schedules that fire, Quick runs that route.

One module-scoped cluster set up exactly as docs/deployment.md says: PostgreSQL on loopback (the
documented database of distributed mode), ``prefect server start`` with its scheduler on (its loop
shortened to a few seconds), ``dspex pools create``, ``prefect --no-prompt deploy --all`` from
prefect.yaml, and one ``prefect worker start --pool NAME`` per pool: the command Prefect prints after
a deploy, which finds the ``dspex`` worker type through the project's ``prefect.collections`` entry
point. Every check goes through the API:

* every active schedule produced scheduled runs within two scheduler loops (this is what fails when
  SQLAlchemy 2.1 breaks Prefect 3.8.8's scheduler insert), and the paused one produced none;
* a run of every user-facing deployment with its defaults completes (offline LM, bundled data);
* a run-pipeline run started with no mode lands each step on the pool the registry names (the
  run-step flow runs' work pools), and says why in its log;
* the server log has no traceback.
"""

import time

import pytest
from cluster import REPO, Cluster, Postgres, drain_api_workers, server_tracebacks
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.serve import load_project
from dspex.settings import get_settings
from flows.engine.router import route_step
from flows.engine.spec import PipelineSpec

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

SCHEDULER_LOOP_S = 5
POOLS = ("general", "optimizer", "gpu")
USER_FACING = {
    "rag-qa": "rag-qa/rag-qa",
    "run-pipeline": "run-pipeline/run-pipeline",
    "batch-predict": "batch-predict/batch-predict",
    "evaluate": "evaluate/evaluate",
    "optimize": "optimize/optimize",
}
PROJECT = load_project(REPO / "prefect.yaml")
ACTIVE_IN_YAML = sorted(
    d["name"] for d in PROJECT["deployments"] if any(s.get("active", True) for s in d.get("schedules") or [])
)
TERMINAL = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}
ROUTED_SPEC = {
    "name": "routed",
    "steps": [
        {"kind": "retrieve", "retrieve": "question", "k": 2},
        {"kind": "module", "module": "dspy.ChainOfThought", "signature": "context, question -> answer"},
    ],
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    database = Postgres()
    c = Cluster(
        tmp_path_factory.mktemp("deployments"),
        extra_env={
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "true",
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": str(SCHEDULER_LOOP_S),
            "PREFECT_LOGGING_LEVEL": "INFO",  # flow-run logs (the mode decision) reach the API
        },
        database_url=database.url,
    )
    try:
        c.start_server()
        c.setup_all()
        for pool in POOLS:
            c.start_prefect_worker(pool, f"{pool}-1")
        c.wait_workers([f"{pool}-1" for pool in POOLS])
        yield c
        drain_api_workers(c.api_url)
    finally:
        c.close()
        database.close()


@pytest.fixture
def api(cluster):
    """Point this test's Prefect client at the cluster (settings contexts are per test, after the harness)."""
    with temporary_settings(updates={PREFECT_API_URL: cluster.api_url}):
        yield cluster


def wait_for_runs(client, run_ids, timeout):
    deadline = time.monotonic() + timeout
    runs = {}
    while time.monotonic() < deadline:
        runs = {run_id: client.read_flow_run(run_id) for run_id in run_ids}
        if all(r.state_type in TERMINAL for r in runs.values()):
            return runs
        time.sleep(1)
    raise AssertionError(
        f"runs not finished in {timeout} s: {[(r.name, r.state_name) for r in runs.values()]}"
    )


def run_step_runs(client):
    return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["run-step"])), limit=200)


def test_every_active_schedule_produces_scheduled_runs_within_two_scheduler_loops(api):
    deadline = time.monotonic() + 2 * SCHEDULER_LOOP_S + 10
    with get_client(sync_client=True) as client:
        deployments = client.read_deployments()
        scheduled = {d.name: [s for s in d.schedules if s.active] for d in deployments}
        active = sorted(name for name, schedules in scheduled.items() if schedules)
        assert active == ACTIVE_IN_YAML, scheduled  # batch-predict's interval ships paused
        assert {"evaluate", "optimize"} <= set(active)
        found: dict[str, list] = {}
        while time.monotonic() < deadline:
            for d in deployments:
                found[d.name] = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[d.id])),
                    flow_run_filter=FlowRunFilter(
                        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
                    ),
                )
            if all(found[name] for name in active):
                break
            time.sleep(1)
    for name in active:
        assert found[name], f"schedule of {name} produced no run:\n{api.log('server')}"
        deployment = next(d for d in deployments if d.name == name)
        first = min(r.created for r in found[name])
        assert (first - deployment.created).total_seconds() <= 2 * SCHEDULER_LOOP_S + 2, (name, first)
        assert all(r.auto_scheduled for r in found[name])
    assert not found["batch-predict"]  # a paused schedule never fires


def test_every_user_facing_deployment_completes_with_its_defaults(api):
    with get_client(sync_client=True) as client:
        started = {name: run_deployment(full, timeout=0).id for name, full in USER_FACING.items()}
        runs = wait_for_runs(client, list(started.values()), timeout=420)
    states = {name: runs[run_id].state_name for name, run_id in started.items()}
    assert set(states.values()) == {"Completed"}, (states, api.log("worker-general-1"))


def test_a_run_pipeline_run_with_no_mode_lands_each_step_on_its_registry_pool(api):
    spec = PipelineSpec.model_validate(ROUTED_SPEC)
    settings = get_settings()
    expected = {
        step.name: route_step(step, 1, settings, lambda _pool: (True, "")).requested_pool
        for step in spec.steps
    }
    assert set(expected.values()) == {"gpu", "general"}
    with get_client(sync_client=True) as client:
        before = {r.id for r in run_step_runs(client)}
        run = run_deployment(
            "run-pipeline/run-pipeline", parameters={"spec": ROUTED_SPEC, "data": "demo"}, timeout=0
        )
        finished = wait_for_runs(client, [run.id], timeout=300)[run.id]
        assert finished.state_name == "Completed", api.log("worker-general-1")
        assert "mode" not in finished.parameters or finished.parameters["mode"] == "auto"
        steps = [r for r in run_step_runs(client) if r.id not in before]
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    landed = {(r.parameters["step"]["name"], r.work_pool_name) for r in steps}
    assert landed == set(expected.items()), landed
    assert all(r.state_name == "Completed" for r in steps)
    messages = "\n".join(entry.message for entry in logs)
    assert "mode auto" in messages and "distributed" in messages, messages[-3000:]


def test_the_server_log_has_no_traceback(api):
    assert api.procs["server"].poll() is None, "the server exited"
    log = api.log("server", tail=10**8)
    found = server_tracebacks(log)
    assert not found, "\n---\n".join(found[:5])
