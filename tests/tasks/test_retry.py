"""The retry budget: one policy decides how many times a row is tried, with backoff and jitter."""

import random
import threading

import dspy
from dspy.utils.exceptions import LMAuthError

from dspex.settings import get_settings
from tasks.retry import RetryPolicy, retry_after_seconds


def test_backoff_doubles_is_capped_and_jittered_within_bounds():
    policy = RetryPolicy(attempts=6, base_delay_s=1.0, max_delay_s=5.0, jitter=0.5)
    rng = random.Random(7)
    for retry, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (5, 5.0)]:
        delays = [policy.delay(retry, rng=rng) for _ in range(200)]
        assert all(ceiling * 0.5 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling * 0.3  # jitter spreads the herd


def test_retry_after_is_a_floor_and_is_capped():
    policy = RetryPolicy(base_delay_s=0.1, max_retry_after_s=10.0)
    assert policy.delay(1, dspy.LMRateLimitError("429", retry_after=3.0)) >= 3.0
    assert policy.delay(1, dspy.LMRateLimitError("429", retry_after=500.0)) == 10.0
    wrapped = RuntimeError("module")
    wrapped.__cause__ = dspy.LMRateLimitError("429", retry_after=2.5)
    assert retry_after_seconds(wrapped) == 2.5
    assert retry_after_seconds(ValueError("x")) is None


def test_settings_give_the_one_retry_count():
    policy = RetryPolicy.from_settings(get_settings(lm_num_retries=4, task_retry_delay_seconds=0.5))
    assert (policy.attempts, policy.base_delay_s) == (5, 0.5)


def test_a_row_is_tried_exactly_policy_attempts_times_then_only_transient_errors(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from flows.engine.spec import PipelineSpec
    from tasks.batch import execute_module_batch

    calls = {"n": 0}
    lock = threading.Lock()

    class Failing(dspy.utils.dummies.DummyLM):
        def __init__(self, error):
            super().__init__([{"answer": "x"}])
            self.error = error

        def __call__(self, *args, **kwargs):
            with lock:
                calls["n"] += 1
            raise self.error

    step = PipelineSpec.model_validate(
        {"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}
    ).steps[0]
    policy = RetryPolicy(attempts=3, base_delay_s=0.0)
    with ThreadPoolExecutor(4) as pool:
        result = execute_module_batch(
            step,
            [{"question": "q"}],
            lm=Failing(dspy.LMRateLimitError("slow down")),
            submit=pool.submit,
            policy=policy,
        )
        assert calls["n"] == 3 and result.attempts == 3
        assert result.errors[0] is not None and result.errors[0].retryable
        calls["n"] = 0
        result = execute_module_batch(
            step, [{"question": "q"}], lm=Failing(LMAuthError("bad key")), submit=pool.submit, policy=policy
        )
        assert calls["n"] == 1  # a permanent error is never retried
        assert result.errors[0] is not None and not result.errors[0].retryable
