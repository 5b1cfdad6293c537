"""Tests of `tasks.usage`: DSPy's usage tracking turned into tokens and priced cost."""

from __future__ import annotations

import dspy
import pytest
from support.fixtures import openai_server  # noqa: F401  (fixture)
from support.openai_server import FakeOpenAIServer

from dspex.settings import OFFLINE_LM_MODEL
from tasks.lm import build_offline_lm
from tasks.usage import Usage, price, track, usage_from_tracker


@pytest.fixture(autouse=True)
def _local_cost_map(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "true")


def test_add_sums_tokens_and_cost_and_keeps_unpriced_models() -> None:
    a = Usage(prompt_tokens=10, completion_tokens=2, requests=1, cost_usd=0.5)
    b = Usage(prompt_tokens=5, completion_tokens=1, requests=2, unpriced_models=["x/y"])
    total = a + b
    assert (total.prompt_tokens, total.completion_tokens, total.requests) == (15, 3, 3)
    assert total.cost_usd == 0.5
    assert total.unpriced_models == ["x/y"] and not total.cost_known
    assert sum([a, b]) == total
    assert Usage.total([None, a, None]) == a
    assert Usage.total([]) == Usage() and Usage().cost_usd is None and Usage().cost_known


def test_cost_stays_unknown_when_nothing_was_priced() -> None:
    unpriced = Usage(prompt_tokens=3, requests=1, unpriced_models=["m"])
    assert (unpriced + unpriced).cost_usd is None


def test_price_uses_the_cost_map_and_says_unknown_for_unknown_models() -> None:
    cost = price("openai/gpt-4o-mini", 1_000_000, 1_000_000)
    assert cost is not None and cost > 0
    assert price("openai/no-such-model-anywhere", 10, 10) is None
    assert price(OFFLINE_LM_MODEL, 10_000, 10_000) == 0.0


def test_usage_from_tracker_prices_each_entry() -> None:
    data = {
        "openai/gpt-4o-mini": [{"prompt_tokens": 100, "completion_tokens": 10}] * 2,
        "openai/test-model": [{"prompt_tokens": 7, "completion_tokens": 3, "prompt_tokens_details": None}],
    }
    usage = usage_from_tracker(data)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.requests) == (207, 23, 3)
    assert usage.cost_usd == pytest.approx(2 * price("openai/gpt-4o-mini", 100, 10))  # type: ignore[operator]
    assert usage.unpriced_models == ["openai/test-model"]


def test_track_counts_the_offline_lm_in_words_at_zero_cost() -> None:
    lm = build_offline_lm()
    with track() as box, dspy.context(lm=lm):
        dspy.Predict("question -> answer")(question="Where is Paris? Context: Paris is in France.")
    usage = box.value
    assert usage.requests == 1 and usage.prompt_tokens > 10 and usage.completion_tokens > 0
    assert usage.cost_usd == 0.0 and usage.cost_known
    assert usage.prompt_tokens == lm.history[-1]["usage"]["prompt_tokens"]


def test_track_matches_the_server_and_dspy_own_cost(openai_server: FakeOpenAIServer) -> None:  # noqa: F811
    lm = dspy.LM("openai/gpt-4o-mini", api_base=openai_server.base_url, api_key="sk-test", cache=False)
    module = dspy.Predict("question -> answer")
    with track() as box, dspy.context(lm=lm):
        for q in ("Capital of France? Context: Paris.", "Capital of Italy? Context: Rome."):
            module(question=q)
    served = openai_server.served_usage
    assert box.value.requests == served["requests"] == 2
    assert box.value.prompt_tokens == served["prompt_tokens"]
    assert box.value.completion_tokens == served["completion_tokens"]
    # The same prices DSPy records in the LM's history.
    assert box.value.cost_usd == pytest.approx(sum(entry["cost"] for entry in lm.history[-2:]))


def test_cache_hits_cost_nothing(openai_server: FakeOpenAIServer, tmp_path: object) -> None:  # noqa: F811
    lm = dspy.LM("openai/gpt-4o-mini", api_base=openai_server.base_url, api_key="sk-test", cache=True)
    module = dspy.Predict("question -> answer")
    question = f"Unique question {id(tmp_path)}? Context: yes."
    with dspy.context(lm=lm):
        module(question=question)
        with track() as box:
            module(question=question)
    assert box.value.requests == 0 and box.value.cost_usd is None


def test_track_fills_the_box_when_the_block_fails(openai_server: FakeOpenAIServer) -> None:  # noqa: F811
    from support.openai_server import Fault

    openai_server.enqueue(Fault.error(400, "bad request"))
    lm = dspy.LM(
        "openai/test-model", api_base=openai_server.base_url, api_key="sk-test", cache=False, num_retries=0
    )
    with pytest.raises(Exception), track() as box, dspy.context(lm=lm):  # noqa: B017, PT011
        dspy.Predict("question -> answer")(question="q")
    assert box.value.requests == 0  # the provider answered with an error: nothing billed
