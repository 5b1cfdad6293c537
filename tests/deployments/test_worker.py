"""The dspex worker type, its environment, and pool setup (unit level; e2e covers real runs)."""

from types import SimpleNamespace

import pytest
from prefect.workers.base import BaseWorker

from deployments.pools import base_job_template, ensure_pools
from deployments.worker import DSPexWorker, WorkerOptions, load_entrypoint, worker_environment
from dspex.exceptions import ConfigurationError
from dspex.settings import get_settings
from flows.engine.step_runner import run_step


def test_the_dspex_worker_type_is_registered_with_prefect():
    assert BaseWorker.get_worker_class_from_type("dspex") is DSPexWorker
    assert "job_configuration" in base_job_template("dspex") and "job_configuration" in base_job_template(
        "process"
    )


def test_entrypoints_load_as_the_shared_module_flow():
    assert load_entrypoint("flows/engine/step_runner.py:run_step") is run_step
    assert load_entrypoint("flows.engine.step_runner:run_step") is run_step
    with pytest.raises(ConfigurationError, match="must look like"):
        load_entrypoint("flows/engine/step_runner.py")
    with pytest.raises(ConfigurationError, match="cannot load"):
        load_entrypoint("flows/nope.py:x")
    with pytest.raises(ConfigurationError, match="not a Prefect flow"):
        load_entrypoint("flows.engine.step_runner:parse_step")


def test_a_deployment_made_before_the_move_still_runs_its_flow(caplog):
    """Deployments created before flows/ moved into subpackages name the old files (issue 22)."""
    with caplog.at_level("WARNING", logger="deployments.worker"):
        assert load_entrypoint("flows/step_runner.py:run_step") is run_step
    assert "dspex deploy" in caplog.text
    from flows.sessions.turns import session_turn

    assert load_entrypoint("flows/session_flows.py:session_turn") is session_turn


def test_worker_environment_per_pool(tmp_path):
    settings = get_settings(home=tmp_path)
    base = {"CUDA_VISIBLE_DEVICES": "0,1", "KEEP": "1"}
    gpu = worker_environment(
        WorkerOptions("gpu", "gpu-a", query_seconds=0.5, heartbeat_seconds=3), settings, base
    )
    general = worker_environment(WorkerOptions("general", "gen a/1"), settings, base)
    assert gpu["CUDA_VISIBLE_DEVICES"] == "0,1" and general["CUDA_VISIBLE_DEVICES"] == ""
    assert gpu["DSPY_CACHEDIR"] != general["DSPY_CACHEDIR"]
    assert (
        general["DSPY_CACHEDIR"].startswith(str(tmp_path.resolve()))
        and "/" not in general["DSPY_CACHEDIR"].rsplit("/", 1)[1]
    )
    assert gpu["PREFECT_WORKER_QUERY_SECONDS"] == "0.5" and gpu["PREFECT_WORKER_HEARTBEAT_SECONDS"] == "3"
    # The mode is left to each flow (flows.engine.modes): a run-pipeline run on a worker may still dispatch.
    assert "DSPEX_MODE" not in gpu and gpu["KEEP"] == "1"
    assert (
        worker_environment(WorkerOptions("gpu", "g", gpus="3"), settings, base)["CUDA_VISIBLE_DEVICES"] == "3"
    )


class FakePoolsClient:
    def __init__(self):
        self.pools = {}

    def read_work_pool(self, name):
        from prefect.exceptions import ObjectNotFound

        if name not in self.pools:
            raise ObjectNotFound(http_exc=Exception(name))
        return self.pools[name]

    def create_work_pool(self, create):  # returns the new pool, as Prefect's client does
        self.pools[create.name] = SimpleNamespace(
            id=f"id-{create.name}",
            name=create.name,
            type=create.type,
            concurrency_limit=create.concurrency_limit,
        )
        return self.pools[create.name]

    def update_work_pool(self, name, update):
        self.pools[name].concurrency_limit = update.concurrency_limit


def test_ensure_pools_creates_then_updates_idempotently():
    client = FakePoolsClient()
    first = ensure_pools(get_settings(), "dspex", client=client)
    assert [(r.name, r.action, r.concurrency_limit) for r in first] == [
        ("general", "created", 8),
        ("optimizer", "created", 2),
        ("gpu", "created", 4),
    ]
    second = ensure_pools(get_settings(pool_gpu_capacity=1), "dspex", client=client)
    assert [r.action for r in second] == ["updated"] * 3 and client.pools["gpu"].concurrency_limit == 1
    from flows.engine.ownership import load_owned

    assert load_owned().pools == {"id-general": "general", "id-optimizer": "optimizer", "id-gpu": "gpu"}
    with pytest.raises(ConfigurationError, match="cannot change"):
        ensure_pools(get_settings(), "process", client=client)
    with pytest.raises(ConfigurationError, match="unknown pool"):
        ensure_pools(get_settings(), "dspex", pools=("tpu",), client=client)


def test_prefect_worker_start_finds_the_dspex_type_through_the_collections_entry_point():
    # A fresh interpreter that never imported deployments.worker: exactly what
    # `prefect worker start --pool general` does to find the pool's worker type.
    import subprocess
    import sys

    code = (
        "import sys; from prefect.cli._worker_utils import _load_worker_class; "
        "assert 'deployments.worker' not in sys.modules; "
        "cls = _load_worker_class('dspex'); print(cls.__module__, cls.__name__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "deployments.worker DSPexWorker"


def test_a_worker_started_by_prefect_sets_only_the_variables_the_user_left_unset(tmp_path, monkeypatch):
    from deployments.worker import apply_worker_defaults

    monkeypatch.setenv("DSPEX_HOME", str(tmp_path))
    env = {"CUDA_VISIBLE_DEVICES": "0"}
    applied = apply_worker_defaults("general", "w/1", env)
    assert env["CUDA_VISIBLE_DEVICES"] == "0" and "CUDA_VISIBLE_DEVICES" not in applied  # the user's wins
    assert env["DSPY_CACHEDIR"].startswith(str(tmp_path.resolve())) and env["DSPY_CACHEDIR"].endswith(
        "general-w-1"
    )
    gpu_env: dict[str, str] = {}
    apply_worker_defaults("gpu", "g", gpu_env)
    assert "CUDA_VISIBLE_DEVICES" not in gpu_env  # the gpu pool inherits whatever devices it has
    cpu_env: dict[str, str] = {}
    apply_worker_defaults("optimizer", "o", cpu_env)
    assert cpu_env["CUDA_VISIBLE_DEVICES"] == ""


def test_a_dspex_worker_preloads_the_run_step_flow_so_a_fresh_worker_is_fast(monkeypatch):
    import os

    # Building a worker sets missing worker variables in this process: keep the test's own.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    worker = DSPexWorker("general", name="preload-test")
    assert worker.heartbeat_interval_seconds == 5  # Prefect's 30 s default would notice a dead worker late
    worker._preload()
    assert worker._flows["flows/engine/step_runner.py:run_step"] is run_step


@pytest.mark.integration
def test_a_dspex_worker_creates_the_queues_it_polls_that_its_pool_lacks(monkeypatch):
    """``--work-queue worker-a`` on a pool without that queue: Prefect's server refuses every poll that
    names it, so the worker would take no run at all (docs/deployment.md section 11)."""
    import os

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.utilities.asyncutils import run_coro_as_sync

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    for key in ("PREFECT__WORKER_NAME", "PREFECT__WORKER_ID"):  # a started worker sets them: undo after
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)

    async def scenario():
        async with get_client() as client:
            await client.create_work_pool(WorkPoolCreate(name="queues-test", type="dspex"), overwrite=True)
            with pytest.raises(ObjectNotFound):
                await client.read_work_queue_by_name("worker-q", work_pool_name="queues-test")
            worker = DSPexWorker("queues-test", name="queues-test", work_queues=["default", "worker-q"])
            async with worker:  # setup syncs with the server once
                runs = await worker.get_and_submit_flow_runs()
            queue = await client.read_work_queue_by_name("worker-q", work_pool_name="queues-test")
            missing_pool = DSPexWorker("no-such-pool", name="queues-test-2", work_queues=["worker-q"])
            missing_pool._client = client
            return runs, queue, await missing_pool._ensure_work_queues()

    runs, queue, missing_pool_ready = run_coro_as_sync(scenario())
    assert runs == [] and queue.name == "worker-q" and queue.work_pool_name == "queues-test"
    assert missing_pool_ready is False  # retried at the next sync
