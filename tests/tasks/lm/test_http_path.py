"""The real HTTP path: dspy.LM -> loopback OpenAI-compatible server, with 429/500/503, timeouts, bad bodies.

DSPy owns retries (one engine attempt each, ``num_retries`` more on a retryable error); these tests
check what goes over the wire, what is retried, what is not, and that no answer is lost.
"""

from __future__ import annotations

import dspy
import pytest
from support.openai_server import FakeOpenAIServer, Fault

from dspex.exceptions import is_retryable

CONTEXT = [
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "Rome is the capital of Italy.",
]
QA = "context: list[str], question -> answer"


def _lm(server: FakeOpenAIServer, **kwargs: object) -> dspy.LM:
    options: dict[str, object] = {"api_base": server.base_url, "api_key": "sk-test", "cache": False}
    options.update(kwargs)
    return dspy.LM("openai/test-model", **options)


def _ask(lm: dspy.LM, question: str = "What is the capital of France?") -> str:
    with dspy.context(lm=lm):
        return dspy.Predict(QA)(context=CONTEXT, question=question).answer


def test_predict_over_http_sends_the_key_and_gets_the_answer(openai_server: FakeOpenAIServer) -> None:
    assert _ask(_lm(openai_server, num_retries=0)) == "Paris"
    [request] = openai_server.chat_requests
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.body["model"] == "test-model"
    assert "Paris is the capital of France." in request.messages[-1][1]


@pytest.mark.parametrize(
    "fault",
    [Fault.rate_limit(retry_after=0), Fault.server_error(retry_after=0), Fault.unavailable(retry_after=0)],
    ids=["429", "500", "503"],
)
def test_transient_errors_are_retried_then_succeed(openai_server: FakeOpenAIServer, fault: Fault) -> None:
    openai_server.enqueue(fault)
    assert _ask(_lm(openai_server, num_retries=2)) == "Paris"
    requests = openai_server.chat_requests
    assert [r.fault for r in requests] == [fault, None]
    assert requests[0].body == requests[1].body  # the retry resends the same request


def test_a_500_without_retry_after_is_retried_with_backoff(openai_server: FakeOpenAIServer) -> None:
    openai_server.enqueue(Fault.server_error())
    assert _ask(_lm(openai_server, num_retries=1)) == "Paris"
    assert len(openai_server.chat_requests) == 2


def test_429_then_500_then_success(openai_server: FakeOpenAIServer) -> None:
    openai_server.enqueue(Fault.rate_limit(retry_after=0), Fault.server_error(retry_after=0))
    assert _ask(_lm(openai_server, num_retries=3)) == "Paris"
    assert len(openai_server.chat_requests) == 3
    assert openai_server.pending_faults == 0


def test_a_timeout_is_retried_then_succeeds(openai_server: FakeOpenAIServer) -> None:
    openai_server.enqueue(Fault.slow(3.0))
    assert _ask(_lm(openai_server, num_retries=1, timeout=0.5)) == "Paris"
    assert len(openai_server.chat_requests) == 2


def test_a_timeout_without_retries_is_a_retryable_typed_error(openai_server: FakeOpenAIServer) -> None:
    openai_server.enqueue(Fault.slow(3.0))
    with pytest.raises(dspy.LMError) as caught:
        _ask(_lm(openai_server, num_retries=0, timeout=0.5))
    assert isinstance(caught.value, dspy.LMTransportError | dspy.LMTimeoutError)
    assert "timed out" in str(caught.value)
    assert dspy.is_retryable_lm_error(caught.value)
    assert is_retryable(caught.value)
    assert len(openai_server.chat_requests) == 1


@pytest.mark.parametrize(
    ("fault", "error_type", "retryable"),
    [
        (Fault.rate_limit(retry_after=7), dspy.LMRateLimitError, True),
        (Fault.server_error(), dspy.LMServerError, True),
        (Fault.unavailable(), dspy.LMServerError, True),
        (Fault.disconnect(), dspy.LMTransportError, True),
        (Fault.error(401, "bad key"), dspy.LMAuthError, False),
        (Fault.malformed(), dspy.LMProviderError, False),
    ],
    ids=["429", "500", "503", "disconnect", "401", "malformed"],
)
def test_without_retries_each_fault_raises_its_typed_error(
    openai_server: FakeOpenAIServer, fault: Fault, error_type: type[Exception], retryable: bool
) -> None:
    openai_server.enqueue(fault)
    with pytest.raises(error_type) as caught:
        _ask(_lm(openai_server, num_retries=0))
    assert dspy.is_retryable_lm_error(caught.value) is retryable
    assert is_retryable(caught.value) is retryable
    assert len(openai_server.chat_requests) == 1  # no retry, and no adapter fallback request either
    if fault.status == 429:
        assert caught.value.retry_after == 7


def test_non_retryable_errors_are_not_retried_even_with_retries(openai_server: FakeOpenAIServer) -> None:
    openai_server.enqueue(Fault.malformed())
    with pytest.raises(dspy.LMProviderError):
        _ask(_lm(openai_server, num_retries=3))
    assert len(openai_server.chat_requests) == 1


def test_a_batch_through_faults_loses_nothing(openai_server: FakeOpenAIServer) -> None:
    questions = {
        "What is the capital of France?": "Paris",
        "What is the capital of Germany?": "Berlin",
        "What is the capital of Italy?": "Rome",
    }
    examples = [
        dspy.Example(context=CONTEXT, question=q).with_inputs("context", "question")
        for q in list(questions) * 4
    ]
    faults = [
        Fault.rate_limit(retry_after=0),
        Fault.server_error(retry_after=0),
        Fault.unavailable(retry_after=0),
    ]
    openai_server.enqueue(*faults)
    with dspy.context(lm=_lm(openai_server, num_retries=3)):
        results = dspy.Predict(QA).batch(examples, num_threads=4, max_errors=0)
    assert [r.answer for r in results] == [questions[e.question] for e in examples]
    assert len(openai_server.chat_requests) == len(examples) + len(faults)
