"""Token streaming of a session turn: dspy.streamify over real HTTP to a loopback server that streams SSE."""

import dspy
import pytest
from dspy.streaming import StreamResponse
from support.openai_server import openai_server

from flows.sessions.session import get_session, open_session

QA = {"module": "dspy.Predict", "signature": "question, context -> answer"}
CONTEXT = "The Eiffel Tower is in Paris. It was finished in 1889 for the World Fair."


@pytest.fixture(autouse=True)
def _local_model_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "true")


def test_stream_turn_yields_token_chunks_then_the_prediction_and_stores_the_turn():
    with openai_server(
        responder=lambda _m: (
            "[[ ## answer ## ]]\nIt was finished in 1889 for the World Fair.\n\n[[ ## completed ## ]]"
        )
    ) as server:
        server.stream_chunk_words = 2
        lm = dspy.LM(
            "openai/test-model", api_base=server.base_url, api_key="sk-test", cache=False, num_retries=0
        )
        session = open_session(QA, lm=lm)
        items = list(session.stream_turn(question="When was the tower finished?", context=CONTEXT))
        assert server.chat_requests[-1].body["stream"] is True
    chunks = [i for i in items if isinstance(i, StreamResponse)]
    prediction = items[-1]
    assert isinstance(prediction, dspy.Prediction)
    assert len(chunks) >= 3 and {c.signature_field_name for c in chunks} == {"answer"}
    assert (
        "".join(c.chunk for c in chunks).strip()
        == prediction.answer
        == "It was finished in 1889 for the World Fair."
    )
    (turn,) = get_session(session.id).history
    assert turn == {
        "question": "When was the tower finished?",
        "context": CONTEXT,
        "answer": prediction.answer,
    }


def test_an_abandoned_stream_stores_nothing_and_frees_the_session():
    with openai_server(
        responder=lambda _m: "[[ ## answer ## ]]\none two three four five six\n\n[[ ## completed ## ]]"
    ) as server:
        server.stream_chunk_words = 1
        lm = dspy.LM(
            "openai/test-model", api_base=server.base_url, api_key="sk-test", cache=False, num_retries=0
        )
        session = open_session(QA, lm=lm)
        stream = session.stream_turn(question="Count?", context="one two three")
        first = next(stream)
        assert isinstance(first, StreamResponse)
        stream.close()
        assert session.history == []
        assert session.turn(question="Count again?", context="one two three") == {
            "answer": "one two three four five six"
        }
    assert len(session.history) == 1
