"""The remote dispatcher's decisions, against a fake Prefect client (no server); one test runs the
worker's run-step flow in process in place of a worker."""

import threading
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from dspy.utils.dummies import DummyLM
from prefect.exceptions import ObjectNotFound

import tasks.lm
from dspex.exceptions import InputValidationError
from dspex.settings import get_settings
from flows.engine import distributed, step_runner
from flows.engine.distributed import RemoteDispatcher, pool_status, worker_is_live
from flows.engine.executors import BatchRequest, RemoteExecutor
from flows.engine.pools import shutdown_local_pools
from flows.engine.spec import PipelineSpec
from flows.engine.step_runner import run_step, write_batch_result
from flows.guards import circuit
from flows.guards.resume import ResumeStore
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


class _LM(DummyLM):
    """Answers ``a<i>`` for ``<<q<i>>>`` and records each call's question; with ``answer_first``,
    only that many calls are answered and the rest fail (the worker is dying)."""

    def __init__(self, n, answer_first=None):
        super().__init__({f"<<q{i}>>": {"answer": f"a{i}"} for i in range(n)})
        self.answer_first = answer_first
        self.calls: list[str | None] = []
        self.lock = threading.Lock()

    def __call__(self, prompt=None, messages=None, **kwargs):
        key = next((k for k in self.answers if k in str(messages)), None)
        with self.lock:
            self.calls.append(key)
            calls = len(self.calls)
        if self.answer_first is not None and calls > self.answer_first:
            raise InputValidationError("the worker is dying")
        return super().__call__(prompt=prompt, messages=messages, **kwargs)


@pytest.mark.integration
@pytest.mark.filterwarnings(
    "ignore:Logger 'dspex.distributed' attempted to send logs:UserWarning"
)  # logged outside a flow run here
def test_a_batch_re_dispatched_after_its_worker_died_runs_only_the_rows_not_journaled(monkeypatch, tmp_path):
    """Issue 26: the worker journals each row; the next attempt at the batch runs only the rest."""
    monkeypatch.setenv("DSPEX_POOL_GENERAL_CAPACITY", "1")  # the worker's rows in order
    monkeypatch.setenv("DSPEX_PAYLOAD_URL", str(tmp_path / "payloads"))
    step = PipelineSpec.model_validate(
        {"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}
    ).steps[0]
    rows = [{"question": f"<<q{i}>>"} for i in range(5)]
    lms = [_LM(5, answer_first=2), _LM(5)]  # attempt 1 completes 2 rows, then its worker dies
    attempt_lms = iter(lms)
    monkeypatch.setattr(tasks.lm, "build_lm", lambda settings: next(attempt_lms))
    stores = {"n": 0}

    def store_unless_dead(result, key):
        stores["n"] += 1
        if stores["n"] == 1:
            raise RuntimeError("SIGKILL")  # the first worker dies before it stores the result
        return write_batch_result(result, key)

    monkeypatch.setattr(step_runner, "write_batch_result", store_unless_dead)
    sent = []

    def run_on_a_worker(self, step_, pool, parameters, batch_key, attempt):  # run-step, in process
        sent.append(dict(parameters))
        try:
            run_step(**parameters, pool=pool)
        except RuntimeError:
            return "failed", "worker 'general-1' stopped heartbeating"
        return "completed", ""

    monkeypatch.setattr(RemoteDispatcher, "_run_once", run_on_a_worker)
    settings = get_settings(task_retries=1)
    store = ResumeStore("openai/test-model")
    executor = RemoteExecutor(settings, store=store, dispatcher=RemoteDispatcher(settings))
    try:
        result = executor.run(BatchRequest(step=step, rows=rows, pool="general", batch_key="dispatch-1"))
    finally:
        shutdown_local_pools()
        circuit.reset_breakers()
    assert len(sent) == 2 and sent[0]["resume_key"] == sent[1]["resume_key"]  # the same batch, twice
    assert lms[0].calls[:2] == ["<<q0>>", "<<q1>>"]
    assert sorted(lms[1].calls) == ["<<q2>>", "<<q3>>", "<<q4>>"]  # not the 2 rows already journaled
    assert [o["answer"] for o in result.outputs] == [f"a{i}" for i in range(5)]  # each once, in order
    assert result.errors == [None] * 5 and result.reused == 2
    # The orchestrator kept the result, then removed the batch's journals: a later run reuses the rows.
    assert not list((tmp_path / "payloads" / "results").rglob("*.rows.jsonl"))
    reused, remaining = ResumeStore("openai/test-model").split(step, rows, list(range(5)))
    assert remaining == [] and [reused[i]["answer"] for i in range(5)] == [f"a{i}" for i in range(5)]


def test_the_resume_key_is_sent_only_when_given(monkeypatch):
    step = PipelineSpec.model_validate(
        {"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}
    ).steps[0]
    sent = []

    def completed(self, step_, pool, parameters, batch_key, attempt):
        sent.append(parameters)
        write_batch_result(
            BatchResult(outputs=[{"answer": "y"}], errors=[None], latencies_ms=[1.0], wall_ms=1.0), batch_key
        )
        return "completed", ""

    monkeypatch.setattr(RemoteDispatcher, "_run_once", completed)
    dispatcher = RemoteDispatcher(get_settings())
    dispatcher.dispatch(step, [{"question": "q"}], "general", "old-params")
    dispatcher.dispatch(step, [{"question": "q"}], "general", "new-params", resume_key="0" * 32 + "-ab")
    assert "resume_key" not in sent[0] and sent[1]["resume_key"] == "0" * 32 + "-ab"
