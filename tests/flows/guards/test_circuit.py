"""The circuit breaker per LM endpoint: transport failures open it, spec and input errors never do,
half-open admits exactly one probe batch, and an outage ends a batch after a handful of requests."""

import threading
import time

import dspy
import pytest
from dspy.utils.exceptions import AdapterParseError, LMAuthError, LMServerError, LMTimeoutError
from support.fixtures import openai_server  # noqa: F401

from dspex.exceptions import InputValidationError, PipelineSpecError
from dspex.settings import get_settings
from flows.engine.executors import EndpointGuard, endpoint_of, run_batch
from flows.engine.pools import shutdown_local_pools
from flows.engine.spec import PipelineSpec
from flows.guards import circuit
from flows.guards.circuit import CircuitBreaker, breaker_for, is_transport_failure


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture(autouse=True)
def _fresh():
    circuit.reset_breakers()
    yield
    circuit.reset_breakers()
    shutdown_local_pools()


def qa_step():
    spec = {"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}
    return PipelineSpec.model_validate(spec).steps[0]


def test_only_transport_failures_count():
    assert is_transport_failure(LMServerError("boom", status=500))
    assert is_transport_failure(LMTimeoutError("slow"))
    wrapped = RuntimeError("module failed")
    wrapped.__cause__ = dspy.LMRateLimitError("429")
    assert is_transport_failure(wrapped)
    for error in (
        LMAuthError("bad key"),
        PipelineSpecError("ReAct needs tools", step="agent"),
        InputValidationError("bad input"),
        AdapterParseError("ChatAdapter", dspy.Signature("q -> a"), "lm said nonsense"),
        TimeoutError("the batch timeout ran out"),
    ):
        assert not is_transport_failure(error), error


def test_opens_after_consecutive_transport_failures_and_never_on_spec_errors():
    clock = Clock()
    breaker = CircuitBreaker("ep", failure_threshold=3, reset_seconds=10, clock=clock)
    guard = EndpointGuard(breaker, None, lambda: False)
    for _ in range(20):  # bad specs and inputs say nothing about the endpoint
        guard.record(PipelineSpecError("ReAct needs tools", step="agent"))
        guard.record(InputValidationError("missing field"))
    assert breaker.state == "closed"
    guard.record(LMServerError("boom"))
    guard.record(LMServerError("boom"))
    guard.record(None)  # a success resets the count
    guard.record(LMServerError("boom"))
    guard.record(LMServerError("boom"))
    assert breaker.state == "closed" and guard.admit() is None
    guard.record(LMServerError("boom"))
    assert breaker.state == "open"
    assert breaker.admit_batch() is None
    assert guard.admit() == "circuit open for LM endpoint ep"


def test_half_open_admits_exactly_one_probe_batch_and_logs_every_change():
    clock = Clock()
    seen = []
    listener = lambda name, old, new: seen.append((name, old, new))  # noqa: E731
    circuit.add_listener(listener)
    try:
        breaker = CircuitBreaker("ep", failure_threshold=1, reset_seconds=10, clock=clock)
        breaker.record_failure()
        clock.now += 10
        assert breaker.admit_batch() == "probe"
        assert [breaker.admit_batch() for _ in range(5)] == [None] * 5  # one probe at a time
        assert breaker.allows_attempt(probe=True) and not breaker.allows_attempt(probe=False)
        breaker.record_failure()  # the probe failed: open again for a full period
        assert breaker.state == "open" and breaker.admit_batch() is None
        clock.now += 10
        assert breaker.admit_batch() == "probe"
        breaker.end_probe()  # a probe that never reached the LM lets the next batch probe
        assert breaker.admit_batch() == "probe"
        breaker.record_success()
        assert breaker.state == "closed" and breaker.admit_batch() == "closed"
    finally:
        circuit.remove_listener(listener)
    assert [(old, new) for _, old, new in seen] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


def test_endpoints_are_model_and_api_base():
    settings = get_settings()
    one = dspy.LM("openai/m", api_base="http://127.0.0.1:1/v1", api_key="k", cache=False)
    two = dspy.LM("openai/m", api_base="http://127.0.0.1:1/v1", api_key="k2", cache=False)
    other = dspy.LM("openai/m", api_base="http://127.0.0.1:2/v1", api_key="k", cache=False)
    assert endpoint_of(one, settings) == endpoint_of(two, settings) == "openai/m@http://127.0.0.1:1/v1"
    assert endpoint_of(other, settings) != endpoint_of(one, settings)


def test_an_outage_ends_a_batch_after_a_few_requests_with_every_row_accounted(openai_server):  # noqa: F811
    openai_server.outage_status = 500
    lm = dspy.LM(
        "openai/test-model", api_base=openai_server.base_url, api_key="sk-x", cache=False, num_retries=3
    )
    settings = get_settings(
        lm_num_retries=2, task_retry_delay_seconds=0.01, breaker_failure_threshold=5, pool_general_capacity=8
    )
    rows = [{"question": f"q{i}"} for i in range(200)]
    start = time.monotonic()
    result = run_batch(qa_step(), rows, pool="general", settings=settings, lm=lm)
    elapsed = time.monotonic() - start
    requests = len(openai_server.chat_requests)
    # DSPy's own retries are off, rows stop at the open circuit: far from 200 rows x 3 x 4 requests.
    assert requests <= 5 + 8 * 3, requests
    assert elapsed < 20
    assert len(result.errors) == 200 and all(error is not None for error in result.errors)
    assert result.not_attempted >= 150
    assert all(error.retryable for error in result.errors if error is not None)
    assert breaker_for(endpoint_of(lm, settings)).state == "open"
    # While it is open, the next batch does not reach the endpoint at all.
    again = run_batch(qa_step(), rows[:10], pool="general", settings=settings, lm=lm)
    assert again.not_attempted == 10 and len(openai_server.chat_requests) == requests
    assert "circuit open" in (again.errors[0].message if again.errors[0] else "")


def test_rows_with_bad_input_do_not_open_the_circuit(openai_server):  # noqa: F811
    lm = dspy.LM("openai/test-model", api_base=openai_server.base_url, api_key="sk-x", cache=False)
    settings = get_settings(breaker_failure_threshold=2)
    result = run_batch(qa_step(), [{"query": "no question"}] * 10, pool="general", settings=settings, lm=lm)
    assert [e.type for e in result.errors if e] == ["InputValidationError"] * 10
    assert breaker_for(endpoint_of(lm, settings)).state == "closed"
    assert openai_server.chat_requests == []


def test_a_run_that_did_not_see_the_circuit_open_waits_and_probes_one_that_did_is_refused(caplog):
    breaker = CircuitBreaker("ep", failure_threshold=1, reset_seconds=0.5)
    assert breaker.admit_batch(run="A") == "closed"
    breaker.record_failure()  # run A's failures open it: A witnessed that
    assert breaker.admit_batch(run="A") is None  # at once, no wait
    assert breaker.admit_batch() is None  # no run named: never waits
    start = time.monotonic()
    assert breaker.admit_batch(run="B") == "probe"  # after the rest of the cool-down
    assert time.monotonic() - start >= 0.4
    verdicts = []
    others = [
        threading.Thread(target=lambda: verdicts.append(breaker.admit_batch(run="B"))) for _ in range(3)
    ]
    for thread in others:
        thread.start()
    time.sleep(0.3)
    assert verdicts == []  # they wait for the probe's verdict instead of giving up
    breaker.record_success()
    for thread in others:
        thread.join(timeout=5)
    assert verdicts == ["closed"] * 3
    assert sum("waiting" in r.getMessage() for r in caplog.records) == 1  # said once


def test_a_failed_probe_refuses_the_waiting_batches_of_its_run_and_stop_ends_a_wait():
    breaker = CircuitBreaker("ep", failure_threshold=1, reset_seconds=0.3)
    breaker.admit_batch(run="A")
    breaker.record_failure()
    assert breaker.admit_batch(run="B") == "probe"
    verdicts = []
    waiter = threading.Thread(target=lambda: verdicts.append(breaker.admit_batch(run="B")))
    waiter.start()
    time.sleep(0.2)
    breaker.record_failure()  # the probe failed: B saw it fail too
    waiter.join(timeout=5)
    assert verdicts == [None]
    assert breaker.admit_batch(run="B") is None
    start = time.monotonic()
    assert breaker.admit_batch(run="C", stop=lambda: time.monotonic() - start > 0.1) is None
    assert time.monotonic() - start < 1.0  # a stop is seen within one wait step (0.25 s)
