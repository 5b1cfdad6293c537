"""The batch executors: one interface, the same semantics locally and remotely."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import dspy
import pytest
from dspy.utils.dummies import DummyLM
from dspy.utils.exceptions import LMAuthError, LMServerError

from dspex.settings import get_settings
from flows.engine.context import EngineContext
from flows.engine.core import run_steps
from flows.engine.executors import BatchRequest, LocalExecutor, RemoteExecutor
from flows.engine.pools import shutdown_local_pools
from flows.engine.spec import PipelineSpec
from flows.guards import circuit
from tasks.batch import BatchResult, RowError, execute_module_batch
from tasks.retry import RetryPolicy


@pytest.fixture(autouse=True)
def _fresh():
    circuit.reset_breakers()
    yield
    circuit.reset_breakers()
    shutdown_local_pools()


def qa_step(**extra):
    spec = {"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "question -> answer", **extra}]}
    return PipelineSpec.model_validate(spec).steps[0]


class CountingLM(DummyLM):
    """Answers ``a<i>`` for ``<<q<i>>>``, fails ``fail_on`` with ``error``, waits ``delay`` per call."""

    def __init__(self, n, fail_on=None, error=None, delay=0.0):
        super().__init__({f"<<q{i}>>": {"answer": f"a{i}"} for i in range(n)})
        self.fail_on, self.error, self.delay = fail_on, error, delay
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, prompt=None, messages=None, **kwargs):
        text = str(messages)
        key = next((k for k in self.answers if k in text), None)
        with self.lock:
            self.calls[key] = self.calls.get(key, 0) + 1
            first = sum(self.calls.values()) == 1
        time.sleep(self.delay)
        if key == self.fail_on or (self.fail_on == "first" and first):
            raise self.error
        return super().__call__(prompt=prompt, messages=messages, **kwargs)


def rows(n):
    return [{"question": f"<<q{i}>>", "_row": i} for i in range(n)]


@pytest.mark.integration
def test_continue_on_error_false_stops_the_other_batches():
    lm = CountingLM(40, fail_on="first", error=LMAuthError("bad key"), delay=0.02)
    settings = get_settings(batch_size=4, pool_general_capacity=2)
    ctx = EngineContext(settings=settings, lm=lm, lm_key="counting", continue_on_error=False)
    out = run_steps([qa_step()], rows(40), ctx)
    assert [r["_error"]["type"] for r in out if r.get("_error", {}).get("type") == "LMAuthError"] == [
        "LMAuthError"
    ]
    done = [r for r in out if "_error" not in r]
    skipped = [r for r in out if r.get("_error", {}).get("not_attempted")]
    assert len(done) + len(skipped) == 39  # every row accounted for: completed, failed, not attempted
    assert len(skipped) >= 20 and sum(lm.calls.values()) <= 20  # most of the run never reached the LM
    assert all(r["answer"] == f"a{r['_row']}" for r in done)
    (record,) = ctx.records
    assert record.not_attempted == len(skipped) and record.actual_pool == ["general"]


@pytest.mark.integration
def test_continue_on_error_true_runs_everything():
    lm = CountingLM(12, fail_on="<<q0>>", error=LMAuthError("bad key"))
    ctx = EngineContext(
        settings=get_settings(batch_size=4), lm=lm, lm_key="counting-2", continue_on_error=True
    )
    out = run_steps([qa_step()], rows(12), ctx)
    assert [r.get("answer") for r in out[1:]] == [f"a{i}" for i in range(1, 12)]
    assert out[0]["_error"] == {
        "step": "predict",
        "type": "LMAuthError",
        "message": "bad key",
        "retryable": False,
    }


def test_a_timed_out_row_is_not_called_again_and_rows_not_started_are_not_attempted():
    slow = CountingLM(4, fail_on=None, delay=1.5)
    with ThreadPoolExecutor(1) as pool:  # one thread: q0 runs, the others wait behind it
        result = execute_module_batch(
            qa_step(),
            rows(4),
            lm=slow,
            submit=pool.submit,
            policy=RetryPolicy(attempts=3, base_delay_s=0.0),
            timeout_s=0.5,
        )
    assert result.errors[0] is not None and result.errors[0].type == "TimeoutError"
    assert all(e is not None and e.not_attempted for e in result.errors[1:])
    assert sum(slow.calls.values()) == 1  # the timed-out row was never called again


class FakeDispatcher:
    """Stands in for the run-step transport: returns scripted results and counts dispatches."""

    def __init__(self, result):
        self.result = result
        self.dispatched = 0

    def availability(self, pool):
        return True, "ok"

    def dispatch(self, step, rows, pool, batch_key, timeout_s=None, trace_context=None):
        self.dispatched += 1
        return self.result.model_copy(update={"pool": "general"})


def test_remote_executor_reads_the_workers_transport_failures_into_its_breaker():
    settings = get_settings(breaker_failure_threshold=3)
    down = RowError(type="LMServerError", message="500", retryable=True)
    failing = BatchResult(outputs=[None] * 2, errors=[down, down], latencies_ms=[0.0, 0.0], wall_ms=1.0)
    dispatcher = FakeDispatcher(failing)
    executor = RemoteExecutor(settings, dispatcher=dispatcher)
    request = BatchRequest(step=qa_step(), rows=[{"question": "q"}] * 2, pool="gpu", batch_key="k")
    executor.run(request)
    executor.run(request)  # 4 transport failures: the endpoint's circuit opens here too
    third = executor.run(request)
    assert dispatcher.dispatched == 2 and third.not_attempted == 2
    assert third.errors[0] is not None and "circuit open" in third.errors[0].message


def test_remote_executor_stops_dispatching_when_the_run_stops():
    ok = BatchResult(outputs=[{"answer": "x"}], errors=[None], latencies_ms=[1.0], wall_ms=1.0)
    dispatcher = FakeDispatcher(ok)
    stop = {"now": False}
    executor = RemoteExecutor(get_settings(), stop=lambda: stop["now"], dispatcher=dispatcher)
    request = BatchRequest(step=qa_step(), rows=[{"question": "q"}], pool="general", batch_key="k2")
    assert executor.run(request).pool == "general"
    stop["now"] = True
    assert executor.run(request).not_attempted == 1 and dispatcher.dispatched == 1


@pytest.mark.integration
def test_local_executor_records_the_pool_that_ran_the_batch():
    lm = CountingLM(3)
    executor = LocalExecutor(get_settings(), lm)
    from prefect import flow

    @flow
    def one():
        return executor.run(BatchRequest(step=qa_step(), rows=rows(3), pool="gpu", batch_key="k3"))

    result = one()
    assert result.pool == "gpu" and [o["answer"] for o in result.outputs] == ["a0", "a1", "a2"]


def test_an_lm_server_error_counts_once_per_attempt_not_per_dspy_retry():
    calls = {"n": 0}

    class Down(dspy.utils.dummies.DummyLM):
        def __call__(self, *args, **kwargs):
            calls["n"] += 1
            raise LMServerError("down", status=500)

    with ThreadPoolExecutor(2) as pool:
        result = execute_module_batch(
            qa_step(),
            rows(1),
            lm=Down([]),
            submit=pool.submit,
            policy=RetryPolicy(attempts=2, base_delay_s=0.0),
        )
    assert calls["n"] == 2 and result.errors[0] is not None and result.errors[0].retryable
