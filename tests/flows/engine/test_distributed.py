"""The remote dispatcher's decisions, against a fake Prefect client (no server)."""

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from prefect.exceptions import ObjectNotFound

from dspex.settings import get_settings
from flows.engine import distributed
from flows.engine.distributed import RemoteDispatcher, pool_status, worker_is_live
from flows.engine.spec import PipelineSpec
from flows.engine.step_runner import write_batch_result
from tasks.batch import BatchResult


def worker(name, age_s, interval=5):
    return SimpleNamespace(
        name=name,
        last_heartbeat_time=datetime.now(UTC) - timedelta(seconds=age_s),
        heartbeat_interval_seconds=interval,
    )


def test_a_worker_is_live_within_three_heartbeats_and_the_minimum_silence():
    assert worker_is_live(worker("w", 14, interval=5))
    assert not worker_is_live(worker("w", 16, interval=5))
    assert worker_is_live(worker("w", 16, interval=5), min_silence_s=20)
    assert not worker_is_live(SimpleNamespace(last_heartbeat_time=None, heartbeat_interval_seconds=5))


class FakeClient:
    def __init__(self, pools, deployments, workers):
        self.pools, self.deployments, self.workers = pools, deployments, workers

    def read_work_pool(self, name):
        if name not in self.pools:
            raise ObjectNotFound(http_exc=Exception("missing"))
        return SimpleNamespace(name=name, is_paused=self.pools[name])

    def read_deployment_by_name(self, name):
        if name not in self.deployments:
            raise ObjectNotFound(http_exc=Exception("missing"))
        return SimpleNamespace(name=name)

    def read_workers_for_work_pool(self, pool):
        return self.workers.get(pool, [])


def test_pool_status_names_what_is_missing():
    client = FakeClient(
        pools={"general": False, "gpu": True, "optimizer": False},
        deployments={"run-step/run-step-general", "run-step/run-step-optimizer"},
        workers={"general": [worker("g1", 1)], "optimizer": [worker("o1", 600)]},
    )
    assert pool_status(client, "general").ok
    assert pool_status(client, "general").live_workers == ("g1",)
    assert "paused" in pool_status(client, "gpu").reason
    assert "no live worker" in pool_status(client, "optimizer").reason
    client.pools.pop("gpu")
    assert "does not exist" in pool_status(client, "gpu").reason
    client.pools["gpu"] = False
    assert "dspex deploy" in pool_status(client, "gpu").reason


def test_a_batch_with_a_stored_result_is_not_dispatched_again(monkeypatch):
    step = PipelineSpec.model_validate(
        {"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}
    ).steps[0]
    write_batch_result(
        BatchResult(outputs=[{"answer": "x"}], errors=[None], latencies_ms=[1.0], wall_ms=1.0), "done-key"
    )
    dispatcher = RemoteDispatcher(get_settings())

    def no_dispatch(*args, **kwargs):
        raise AssertionError("dispatched a batch whose result exists")

    monkeypatch.setattr(dispatcher, "_run_once", no_dispatch)
    result = dispatcher(step, [{"question": "q"}], SimpleNamespace(pool="general"), "done-key")
    assert result.outputs == [{"answer": "x"}] and result.reused == 1


@pytest.mark.filterwarnings(
    "ignore:Logger 'dspex.distributed' attempted to send logs:UserWarning"
)  # logged outside a flow run here
def test_no_live_worker_reroutes_to_general_or_fails_by_policy(monkeypatch, caplog):
    step = PipelineSpec.model_validate(
        {"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}
    ).steps[0]
    calls = []

    def fake_run_once(self, step, pool, parameters, batch_key, attempt):
        calls.append(pool)
        if pool == "gpu":
            return "no-worker", "never picked up"
        write_batch_result(
            BatchResult(outputs=[{"answer": "y"}], errors=[None], latencies_ms=[1.0], wall_ms=1.0), batch_key
        )
        return "completed", ""

    monkeypatch.setattr(RemoteDispatcher, "_run_once", fake_run_once)
    monkeypatch.setattr(RemoteDispatcher, "availability", lambda self, pool: (True, "ok"))
    dispatcher = RemoteDispatcher(get_settings(fallback_policy="general"))
    with caplog.at_level("WARNING", logger="dspex.distributed"):
        result = dispatcher(step, [{"question": "q"}], SimpleNamespace(pool="gpu"), "reroute-key")
    assert calls == ["gpu", "general"] and result.outputs == [{"answer": "y"}]
    assert "fallback policy 'general'" in caplog.text

    failing = RemoteDispatcher(get_settings(fallback_policy="fail"))
    with pytest.raises(distributed.PoolUnavailableError, match="no live worker"):
        failing(step, [{"question": "q"}], SimpleNamespace(pool="gpu"), "fail-key")


@pytest.mark.filterwarnings(
    "ignore:Logger 'dspex.distributed' attempted to send logs:UserWarning"
)  # logged outside a flow run here
def test_failed_attempts_are_bounded_and_reported(monkeypatch):
    step = PipelineSpec.model_validate(
        {"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}
    ).steps[0]
    monkeypatch.setattr(RemoteDispatcher, "_run_once", lambda *a: ("failed", "run ended CRASHED"))
    dispatcher = RemoteDispatcher(get_settings(task_retries=1))
    with pytest.raises(distributed.DispatchError, match="after 2 attempt"):
        dispatcher(step, [{"question": "q"}], SimpleNamespace(pool="general"), "crash-key")
