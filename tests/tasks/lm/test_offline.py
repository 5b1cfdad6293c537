"""The offline extractive LM through real DSPy modules: Predict, ChainOfThought, ReAct, typed outputs."""

from __future__ import annotations

import asyncio
from typing import Literal

import dspy
import pydantic
import pytest
from dspy.lm15 import Message, Request

from dspex.settings import OFFLINE_LM_MODEL
from tasks.lm import OfflineExtractiveEngine, build_offline_lm, describe_lm, is_offline_lm, respond

CONTEXT = [
    "Paris is the capital and largest city of France. It has about 2 million residents.",
    "Berlin is the capital of Germany.",
    "Hamlet was written by William Shakespeare around 1600.",
]


@pytest.fixture
def lm() -> dspy.LM:
    return build_offline_lm()


def test_predict_extracts_a_short_answer_from_the_context(lm: dspy.LM) -> None:
    with dspy.context(lm=lm):
        result = dspy.Predict("context: list[str], question -> answer")(
            context=CONTEXT, question="What is the capital of France?"
        )
    assert result.answer == "Paris"


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("Who wrote Hamlet?", "William Shakespeare"),
        ("When was Hamlet written?", "1600"),
        ("What is the capital of Germany?", "Berlin"),
    ],
)
def test_chain_of_thought_answers_and_explains_honestly(lm: dspy.LM, question: str, expected: str) -> None:
    with dspy.context(lm=lm):
        result = dspy.ChainOfThought("context: list[str], question -> answer")(
            context=CONTEXT, question=question
        )
    assert result.answer == expected
    assert "no language model was called" in result.reasoning
    assert OFFLINE_LM_MODEL in result.reasoning
    assert "sentence" in result.reasoning


def test_context_as_plain_text_and_no_context(lm: dspy.LM) -> None:
    with dspy.context(lm=lm):
        text = dspy.Predict("context, question -> answer")(
            context=" ".join(CONTEXT), question="Who wrote Hamlet?"
        )
        bare = dspy.ChainOfThought("question -> answer")(question="Who wrote Hamlet?")
    assert text.answer == "William Shakespeare"
    assert bare.answer == "unknown"
    assert "no context" in bare.reasoning


def test_react_calls_the_first_tool_once_then_finishes(lm: dspy.LM) -> None:
    calls: list[str] = []

    def search(query: str) -> list[str]:
        """Search the corpus."""
        calls.append(query)
        return CONTEXT

    def unused(x: int) -> str:
        """Never called by the offline LM."""
        raise AssertionError("the offline LM calls the first tool only")

    with dspy.context(lm=lm):
        result = dspy.ReAct("question -> answer", tools=[search, unused], max_iters=5)(
            question="Who wrote Hamlet?"
        )
    assert calls == ["Who wrote Hamlet?"]
    assert result.trajectory["tool_name_0"] == "search"
    assert result.trajectory["tool_args_0"] == {"query": "Who wrote Hamlet?"}
    assert result.trajectory["tool_name_1"] == "finish"
    assert result.answer == "William Shakespeare"
    assert "trajectory" in result.reasoning  # the answer came from the tool's observation


class Item(pydantic.BaseModel):
    name: str
    count: int


class Typed(dspy.Signature):
    """Answer with typed values."""

    context: str = dspy.InputField()
    question: str = dspy.InputField()
    supported: bool = dspy.OutputField()
    number: int = dspy.OutputField()
    ratio: float = dspy.OutputField()
    country: Literal["france", "germany"] = dspy.OutputField()
    names: list[str] = dspy.OutputField()
    item: Item = dspy.OutputField()
    counts: dict[str, int] = dspy.OutputField()
    maybe: str | None = dspy.OutputField()


@pytest.mark.parametrize("adapter", [dspy.ChatAdapter(), dspy.JSONAdapter(), dspy.XMLAdapter()], ids=type)
def test_typed_outputs_are_valid_under_every_adapter(lm: dspy.LM, adapter: dspy.Adapter) -> None:
    with dspy.context(lm=lm, adapter=adapter):
        result = dspy.Predict(Typed)(context=" ".join(CONTEXT), question="What is the capital of Germany?")
    assert result.supported is True
    assert isinstance(result.number, int) and isinstance(result.ratio, float)
    assert result.country == "germany"
    assert result.names == ["Berlin"]
    assert result.item == Item(name="Berlin", count=0)
    assert result.counts == {}
    assert result.maybe == "Berlin"


def test_numbers_come_from_the_chosen_sentence(lm: dspy.LM) -> None:
    with dspy.context(lm=lm):
        result = dspy.Predict("context: list[str], question -> residents: int, supported: bool")(
            context=CONTEXT, question="How many residents does Paris have?"
        )
    assert result.residents == 2
    assert result.supported is True


def test_same_prompt_same_output_and_usage(lm: dspy.LM) -> None:
    program = dspy.ChainOfThought("context: list[str], question -> answer")
    outputs = []
    for _ in range(3):
        with dspy.context(lm=build_offline_lm()):
            outputs.append(program(context=CONTEXT, question="Who wrote Hamlet?").toDict())
    assert outputs[0] == outputs[1] == outputs[2]
    with dspy.context(lm=lm):
        program(context=CONTEXT, question="Who wrote Hamlet?")
    entry = lm.history[-1]
    usage = entry["usage"]
    assert usage["prompt_tokens"] > 50 and usage["completion_tokens"] > 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert entry["response"].model == OFFLINE_LM_MODEL


def test_engine_protocol_directly() -> None:
    engine = OfflineExtractiveEngine()
    request = Request(model=OFFLINE_LM_MODEL, messages=(Message.user("Hello there. How are you?"),))
    response = engine.complete(request)
    assert response.finish_reason == "stop"
    assert "Hello there." in response.text
    assert response.usage.input_tokens == 5
    events = list(engine.stream(request))
    assert events[0].type == "start" and events[-1].type == "end"
    assert engine.complete(request).id == response.id  # deterministic
    engine.close()


def test_plain_lm_call_is_answered_honestly(lm: dspy.LM) -> None:
    [reply] = lm("What is DSPy? It is a framework.")
    assert "no language model was called" in reply
    assert "What is DSPy?" in reply


def test_async_call_gives_the_same_answer(lm: dspy.LM) -> None:
    program = dspy.Predict("context: list[str], question -> answer")

    async def run() -> str:
        with dspy.context(lm=lm):
            result = await program.acall(context=CONTEXT, question="What is the capital of France?")
        return result.answer

    assert asyncio.run(run()) == "Paris"


def test_describe_and_identify_offline_lm(lm: dspy.LM) -> None:
    description = describe_lm(lm)
    assert description["offline"] is True
    assert description["model"] == OFFLINE_LM_MODEL
    assert "offline extractive" in description["label"]
    assert is_offline_lm(lm)
    assert not is_offline_lm(dspy.LM("openai/gpt-4o-mini"))


def test_offline_lm_state_saves_and_loads(lm: dspy.LM) -> None:
    state = lm.dump_state()
    assert state["engine"]["class"] == "tasks.lm.offline:OfflineExtractiveEngine"
    loaded = dspy.LM.load_state(state, allow_custom_lm_class=True)
    assert is_offline_lm(loaded)


def test_respond_is_pure_text_in_text_out() -> None:
    system = (
        "Your input fields are:\n1. `question` (str):\nYour output fields are:\n1. `answer` (str):\n"
        "All interactions will be structured in the following way, with the appropriate values filled in."
    )
    user = "[[ ## question ## ]]\nWhat?\n\nRespond with the corresponding output fields, starting with ..."
    reply = respond(system, [("user", user)])
    assert reply == "[[ ## answer ## ]]\nunknown\n\n[[ ## completed ## ]]"
