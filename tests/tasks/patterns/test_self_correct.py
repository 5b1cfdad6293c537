"""Self-correcting chain of thought: a scripted wrong first answer is fixed by a retry with feedback."""

import dspy
import pytest
from dspy.utils.dummies import DummyLM
from dspy.utils.exceptions import AdapterParseError

from tasks.callables import register_callable, unregister_callable
from tasks.patterns import SelfCorrectingChainOfThought


@pytest.fixture
def is_four():
    register_callable("answer_is_four", lambda inputs, prediction: prediction.answer.strip() == "4")
    yield "answer_is_four"
    unregister_callable("answer_is_four")


def test_a_wrong_first_answer_is_fixed_with_feedback(is_four):
    lm = DummyLM([{"reasoning": "2+2 is 5", "answer": "5"}, {"reasoning": "2+2 is 4", "answer": "4"}])
    module = SelfCorrectingChainOfThought("question -> answer", max_retries=2, validator=is_four)
    with dspy.context(lm=lm):
        prediction = module(question="What is 2+2?")
    assert (prediction.answer, prediction.attempts, prediction.valid) == ("4", 2, True)
    retry_prompt = lm.history[1]["messages"][-1]["content"]
    assert "feedback" in retry_prompt and "attempt 1 answered answer='5'" in retry_prompt
    assert len(lm.history) == 2


def test_an_output_that_does_not_fit_the_signature_is_retried():
    # DSPy's ChatAdapter retries a parse failure once with its JSONAdapter: two bad replies, one attempt.
    bad = {"reasoning": "hmm", "answer": "four"}
    lm = DummyLM([bad, bad, {"reasoning": "2+2", "answer": "4"}])
    module = SelfCorrectingChainOfThought("question -> answer: int", max_retries=1)
    with dspy.context(lm=lm):
        prediction = module(question="What is 2+2?")
    assert prediction.answer == 4 and prediction.attempts == 2 and prediction.valid


def test_gives_up_after_max_retries_and_says_so(is_four):
    lm = DummyLM([{"reasoning": "r", "answer": str(n)} for n in (5, 6, 7)])
    module = SelfCorrectingChainOfThought("question -> answer", max_retries=2, validator=is_four)
    with dspy.context(lm=lm):
        prediction = module(question="What is 2+2?")
    assert (prediction.answer, prediction.attempts, prediction.valid) == ("7", 3, False)
    assert len(lm.history) == 3


def test_raises_the_parse_error_when_no_attempt_parses():
    lm = DummyLM([{"reasoning": "r", "answer": "x"}] * 4)
    module = SelfCorrectingChainOfThought("question -> answer: int", max_retries=1)
    with dspy.context(lm=lm), pytest.raises(AdapterParseError):
        module(question="What is 2+2?")


def test_an_unknown_validator_is_a_typed_error():
    from dspex.exceptions import PipelineSpecError

    with pytest.raises(PipelineSpecError, match="unknown callable"):
        SelfCorrectingChainOfThought("question -> answer", validator="nope")
