"""Rate limits per LM endpoint: shared by concurrent batches, adaptive on 429, and shared across
processes through Prefect global concurrency limits."""

import threading
import time

import dspy
import pytest
from support.fixtures import openai_server  # noqa: F401
from support.openai_server import openai_server as running_server

from dspex.settings import get_settings
from flows.engine.executors import endpoint_of, run_batch
from flows.engine.pools import shutdown_local_pools
from flows.engine.spec import PipelineSpec
from flows.guards import circuit, ratelimit
from flows.guards.ratelimit import GlobalRate, TokenBucket, limiter_for

ANSWER = "[[ ## answer ## ]]\nforty-two\n\n[[ ## completed ## ]]"


@pytest.fixture(autouse=True)
def _fresh():
    ratelimit.reset_limiters()
    circuit.reset_breakers()
    yield
    ratelimit.reset_limiters()
    circuit.reset_breakers()
    shutdown_local_pools()


def qa_step():
    spec = {"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}
    return PipelineSpec.model_validate(spec).steps[0]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_token_bucket_refills_at_its_rate_and_takes_corrections():
    clock = Clock()
    bucket = TokenBucket(rate=10, capacity=5, clock=clock)
    assert [bucket.wait_time(1) for _ in range(5)] == [0.0] * 5
    assert bucket.wait_time(1) == pytest.approx(0.1)
    clock.now += 0.3
    assert bucket.wait_time(3) == 0.0
    bucket.adjust(-10)  # a call used more tokens than it was charged for: the debt is waited out
    assert bucket.wait_time(1) == pytest.approx(1.1)


def test_reservations_queue_callers_in_turn_without_polling():
    clock = Clock()
    bucket = TokenBucket(rate=10, capacity=2, clock=clock)
    # Two from the burst, then each caller's own turn, 0.1 s apart: nobody has to ask again.
    assert [bucket.reserve(1) for _ in range(5)] == pytest.approx([0.0, 0.0, 0.1, 0.2, 0.3])
    clock.now += 0.3
    assert bucket.reserve(1) == pytest.approx(0.1)


def test_a_request_bucket_bursts_a_quarter_second_not_the_providers_whole_window():
    limiter = ratelimit.EndpointLimiter("ep", requests_per_minute=2400)
    assert limiter.requests is not None
    assert limiter.requests.rate == pytest.approx(40.0)
    assert limiter.requests.capacity == pytest.approx(40.0 * ratelimit.REQUEST_BURST_SECONDS)


def test_with_a_rate_set_a_429_slows_the_rate_and_keeps_the_concurrency_the_rate_needs():
    """Issue 20: one 429 at 40 requests/s and 250 ms calls used to halve concurrency to ~4 (59% of the
    limit on a loaded machine); now the rate slows by a tenth and concurrency stays >= rate x latency."""
    clock = Clock()
    limiter = ratelimit.EndpointLimiter("ep", requests_per_minute=2400, clock=clock)
    for _ in range(20):  # calls of 250 ms teach the mean latency
        charged = limiter.acquire(10)
        clock.now += 0.25
        limiter.release(charged, seconds=0.25)
    held = [limiter.acquire(10) for _ in range(9)]  # 9 in flight when the provider says 429
    limiter.release(held.pop(), throttled=True, retry_after=0.05, seconds=0.01)
    assert limiter.throttled == 1
    assert limiter.requests is not None and limiter.requests.rate == pytest.approx(36.0)
    needed = 36.0 * 0.25
    assert limiter.concurrency_limit >= needed * 1.5 - 1e-9  # not 4.5, as halving 9 gave
    for charged in held:
        limiter.release(charged, seconds=0.25)
    for _ in range(60):  # the rate recovers to what was configured, and no further
        clock.now += 0.1  # past the pause and each call's turn (the fake clock never moves by itself)
        limiter.release(limiter.acquire(10), seconds=0.25)
    assert limiter.requests.rate == pytest.approx(40.0)


def stamped_server(server):
    stamps = []
    lock = threading.Lock()

    def responder(messages):
        with lock:
            stamps.append(time.monotonic())
        return ANSWER

    server.responder = responder
    return stamps


def test_sixteen_concurrent_batches_share_one_request_rate(openai_server):  # noqa: F811
    stamps = stamped_server(openai_server)
    openai_server.rate_limit_per_s = 25  # the provider's limit, above ours: no 429 expected
    lm = dspy.LM("openai/test-model", api_base=openai_server.base_url, api_key="sk-x", cache=False)
    settings = get_settings(lm_requests_per_minute=1200, pool_general_capacity=8)  # 20 requests/s
    results = []
    start = time.monotonic()

    def batch(n):
        rows = [{"question": f"b{n} q{i}"} for i in range(4)]
        results.append(run_batch(qa_step(), rows, pool="general", settings=settings, lm=lm))

    threads = [threading.Thread(target=batch, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    elapsed = time.monotonic() - start
    assert len(results) == 16 and all(r.failed == 0 for r in results)
    assert len(stamps) == 64 and openai_server.throttled == 0
    # 64 requests at 20/s after a burst of a quarter second's worth (unpaced, all 64 would land within
    # a second). Stamps are taken on arrival, so thread scheduling may bunch a few: a small allowance.
    busiest = max(sum(1 for t in stamps if s <= t < s + 1.0) for s in stamps)
    assert busiest <= 44, busiest
    assert (64 - 20) / (max(stamps) - min(stamps)) <= 20 * 1.1
    assert elapsed >= (64 - 20) / 20 * 0.9


def test_a_429_pauses_the_endpoint_backs_off_concurrency_and_loses_no_row():
    step = qa_step()
    rows = [{"question": f"q{i}"} for i in range(30)]
    refused = {}
    for told in (6000, None):  # told far more than the provider allows; then no limiter at all
        with running_server() as server:
            stamped_server(server)
            server.rate_limit_per_s, server.latency_s = 8, 0.1
            lm = dspy.LM("openai/test-model", api_base=server.base_url, api_key="sk-x", cache=False)
            settings = get_settings(
                lm_requests_per_minute=told, lm_num_retries=10, task_retry_delay_seconds=0.05
            )
            result = run_batch(step, rows, pool="general", settings=settings, lm=lm)
            assert result.failed == 0  # retried after Retry-After until served: nothing lost
            refused[told] = server.throttled
            if told:
                limiter = limiter_for(endpoint_of(lm, settings), told, None)
                assert limiter is not None and limiter.throttled == server.throttled > 0
                assert limiter.concurrency_limit < 8  # halved on 429s, recovering slowly
    # Pausing the endpoint for Retry-After and backing off concurrency: far fewer refusals.
    assert refused[6000] < refused[None] * 0.75, refused


def test_per_step_rate_overrides_the_settings():
    step = qa_step()
    settings = get_settings(lm_requests_per_minute=60)
    from flows.engine.executors import guard_for

    plain = guard_for(step, None, settings, lambda: False)
    assert plain is not None and plain.limiter is not None and plain.limiter.requests is not None
    assert plain.limiter.requests.rate == pytest.approx(1.0) and plain.limiter.requests.capacity == 1.0
    overridden = step.model_copy(update={"requests_per_minute": 600})
    faster = guard_for(overridden, None, settings, lambda: False)
    assert faster is not None and faster.limiter is not None and faster.limiter.requests is not None
    assert faster.limiter.requests.rate == pytest.approx(10.0)


@pytest.mark.integration
def test_global_rate_takes_chunks_from_a_prefect_global_concurrency_limit():
    from prefect.client.orchestration import get_client

    rate = GlobalRate("dspex-test-rate", per_minute=600, chunk=5)  # 10 units/s, 5 per server call
    start = time.monotonic()
    for _ in range(30):
        rate.take(1)
    elapsed = time.monotonic() - start
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name("dspex-test-rate")
    assert limit.slot_decay_per_second == pytest.approx(10.0) and limit.limit == 10
    # 30 units at 10/s with 10 slots to start from: the server made us wait for the rest.
    assert elapsed >= 1.0


def test_tokens_are_charged_by_estimate_and_corrected_by_what_the_call_used():
    clock = Clock()
    limiter = ratelimit.EndpointLimiter("ep", tokens_per_minute=6000, clock=clock)  # 100 tokens/s
    assert limiter.tokens is not None and limiter.requests is None
    charged = limiter.acquire(estimated_tokens=20)  # prompt estimate + expected completion (64)
    assert charged == 84
    assert limiter.tokens.wait_time(100 - 84 + 1) > 0  # the charge left the bucket (100 tokens)
    limiter.release(charged, actual_tokens=44)  # the call used 40 fewer: they come back
    assert limiter.tokens.wait_time(100 - 84 + 40) == 0.0
    clock.now += 10  # the bucket refills
    callback = ratelimit.LimiterCallback(limiter)
    callback.on_lm_start("call-1", None, {"messages": [{"role": "user", "content": "x" * 400}]})
    callback.on_lm_end("call-1", ["y" * 40])
    assert limiter.concurrency_limit == float("inf")  # no 429 seen: no back-off
