"""`tasks.batch.execute_module_batch`: rows that suspend (batch mode) are neither outputs nor errors."""

from concurrent.futures import Future, ThreadPoolExecutor

import dspy
import pytest

from flows.engine.spec import PipelineSpec
from tasks.batch import execute_module_batch
from tasks.retry import RetryPolicy


class _Later(BaseException):
    """Stands for batch mode's `NeedsAnswer`: the row waits for an answer."""


class _SuspendingLM(dspy.utils.dummies.DummyLM):
    """Answers questions that start with "now", suspends the rest."""

    def __init__(self) -> None:
        super().__init__([{"answer": "done"}] * 10)
        self.suspends = 0

    def __call__(self, *args, **kwargs):
        messages = kwargs.get("messages") or (args[1] if len(args) > 1 else [])
        if "later" in str(messages):
            self.suspends += 1
            raise _Later("waiting")
        return super().__call__(*args, **kwargs)


def _step():
    spec = {"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}
    return PipelineSpec.model_validate(spec).steps[0]


@pytest.mark.parametrize("threads", [True, False])
def test_suspended_rows_get_neither_output_nor_error_and_are_listed(threads):
    rows = [{"question": "now 1"}, {"question": "later 2"}, {"question": "now 3"}, {"question": "later 4"}]

    def inline(fn, *args):
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - the test's stand-in for batch mode's submit
            future.set_exception(exc)
        return future

    lm = _SuspendingLM()
    with ThreadPoolExecutor(2) as pool:
        result = execute_module_batch(
            _step(),
            rows,
            lm=lm,
            submit=pool.submit if threads else inline,
            policy=RetryPolicy(attempts=3, base_delay_s=0.0),
            suspend=_Later,
        )
    assert result.suspended == [1, 3]
    assert lm.suspends == 2 and result.attempts == 1  # a suspended row is tried once, never retried
    assert [o is not None for o in result.outputs] == [True, False, True, False]
    assert result.errors == [None, None, None, None]
    assert result.failed == 0


def test_without_suspend_nothing_is_suspended():
    with ThreadPoolExecutor(2) as pool:
        result = execute_module_batch(
            _step(), [{"question": "now"}], lm=_SuspendingLM(), submit=pool.submit, suspend=None
        )
    assert result.suspended == [] and result.outputs[0] == {"answer": "done"}
