"""The replay memo (issue 21): a batch round formats only its new LM calls, and answers stay the same.

The rounds run as `flows.batch_api.mode` runs them (`execute_module_batch` with a `ReplayLM`, rows
inline), with the provider's answers put in the store by hand. Every test compares with the same
rounds replayed without the memo, the path the batch-mode tests compare with the online run.
"""

from __future__ import annotations

import json
from typing import Any

import dspy
import pytest
from dspy.utils.callback import BaseCallback

from flows import PipelineSpec
from flows.batch_api.mode import _inline
from tasks.batch import execute_module_batch
from tasks.lm.replay import Answer, NeedsAnswer, ReplayLM, ResponseStore
from tasks.lm.replay_memo import ReplayMemo
from tasks.retry import RetryPolicy

TWO_CALLS = "fixtures_pkg.batch_programs:DraftThenAnswer"
REPLY = "[[ ## note ## ]]\nred\n\n[[ ## answer ## ]]\nred\n\n[[ ## completed ## ]]"


@pytest.fixture(autouse=True)
def _programs(monkeypatch):
    import registry

    monkeypatch.setenv("DSPEX_TRUSTED_IMPORT_ROOTS", '["fixtures_pkg"]')
    registry.register_user_module(TWO_CALLS, category="custom")


class Formats(BaseCallback):
    """Counts the adapter formats (DSPy's own callback around ``Adapter.format``)."""

    def __init__(self) -> None:
        self.count = 0

    def on_adapter_format_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.count += 1


def step_of(**head: Any) -> Any:
    return PipelineSpec.model_validate({"name": "memo", "steps": [head]}).steps[0]


def completion(text: str) -> dict[str, Any]:
    return {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
    }


def rows(n: int) -> list[dict[str, Any]]:
    return [{"question": f"What colour is box {i}?", "context": f"Box {i} is red."} for i in range(n)]


def lm() -> Any:  # never called: every answer comes from the store
    return dspy.LM("openai/gpt-4o-mini", api_base="http://127.0.0.1:9/v1", api_key="sk-x", cache=False)


def run_rounds(step, data, *, memo=False, new_process=False, reply=lambda body: REPLY, rounds=4):
    """Rounds until no row waits: (formats per round, outputs, errors, the last round's memo).

    ``new_process``: each round's memo holds only what the earlier rounds' files keep (JSON).
    """
    store, inner, counter = ResponseStore(), lm(), Formats()
    replay_memo = ReplayMemo(store) if memo else None
    saved: dict[str, dict[str, Any]] = {"known": {}, "outputs": {}}
    waiting, seen = list(range(len(data))), []
    outputs: list[Any] = [None] * len(data)
    errors: list[Any] = [None] * len(data)
    for _ in range(rounds):
        counter.count = 0
        adapter = replay_memo.adapter(dspy.settings.adapter) if replay_memo else dspy.settings.adapter
        with dspy.context(adapter=adapter, callbacks=[counter]):
            result = execute_module_batch(
                step,
                [data[n] for n in waiting],
                lm=ReplayLM(inner, store),
                submit=_inline,
                policy=RetryPolicy(attempts=1),
                suspend=NeedsAnswer,
            )
        paused = set(result.suspended)
        for position, (n, out, err) in enumerate(zip(waiting, result.outputs, result.errors, strict=True)):
            if position not in paused:
                outputs[n], errors[n] = out, err
        seen.append(counter.count)
        waiting = [waiting[position] for position in result.suspended]
        for key, body in store.take_pending().items():
            store.put(key, Answer(response=completion(reply(body))))
        if replay_memo is not None and new_process:
            for part, entries in json.loads(json.dumps(replay_memo.take_new())).items():
                saved[part].update(entries)
            replay_memo = ReplayMemo(store, saved["known"], saved["outputs"])
        if not waiting:
            break
    return seen, outputs, [e and e.model_dump() for e in errors], replay_memo


def test_a_replayed_answered_call_is_not_formatted_again():
    step, data = step_of(module=TWO_CALLS), rows(8)
    plain_formats, plain_outputs, plain_errors, _ = run_rounds(step, data)
    formats, outputs, errors, memo = run_rounds(step, data, memo=True)
    # Without the memo each round formats every call so far: 8, then 8 + 8, then 8 + 8 again.
    assert plain_formats == [8, 16, 16]
    # With it, only the new calls: round 2 formats the second calls alone, the last round nothing.
    assert formats == [8, 8, 0]
    assert outputs == plain_outputs and errors == plain_errors
    assert all(o == {"answer": "red"} for o in outputs)
    # Over the rounds: 16 requests formatted once each; 16 answers parsed without formatting them
    # again (each first call in round 2, each second call in round 3); 8 first calls given back whole.
    assert (memo.stats.formatted, memo.stats.unformatted, memo.stats.replayed) == (16, 16, 8)


def test_a_new_process_replays_from_what_the_round_files_keep():
    step, data = step_of(module=TWO_CALLS), rows(6)
    _, plain_outputs, plain_errors, _ = run_rounds(step, data)
    formats, outputs, errors, _ = run_rounds(step, data, memo=True, new_process=True)
    assert formats == [6, 6, 0]
    assert outputs == plain_outputs and errors == plain_errors


def test_chain_of_thought_rows_equal_the_plain_replay():
    step = step_of(module="dspy.ChainOfThought", signature="question, context -> answer")

    def reply(body):
        return "[[ ## reasoning ## ]]\nit says red\n\n[[ ## answer ## ]]\nred\n\n[[ ## completed ## ]]"

    plain = run_rounds(step, rows(4), reply=reply)
    memoized = run_rounds(step, rows(4), reply=reply, memo=True)
    assert memoized[1:3] == plain[1:3]
    assert memoized[0] == [4, 0]  # the last round parses the answers without formatting them again


def test_an_unparseable_answer_fails_its_row_as_without_the_memo():
    """ChatAdapter cannot parse the answer, so DSPy's JSON fallback asks again (a second round);
    that answer does not parse either: the row fails with the same AdapterParseError."""
    step = step_of(module="dspy.Predict", signature="question, context -> answer")
    plain = run_rounds(step, rows(3), reply=lambda body: "no fields here")
    memoized = run_rounds(step, rows(3), reply=lambda body: "no fields here", memo=True)
    assert memoized[1:3] == plain[1:3]
    assert {e["type"] for e in memoized[2]} == {"AdapterParseError"}


def test_calls_the_memo_cannot_key_run_as_online():
    store = ResponseStore()
    memo = ReplayMemo(store)

    class MyAdapter(dspy.ChatAdapter):
        pass

    mine = MyAdapter()
    assert memo.adapter(mine) is mine  # a user's own adapter runs unchanged
    adapter = memo.adapter(None)
    assert type(adapter).__name__ == "ChatAdapter" and isinstance(adapter, dspy.ChatAdapter)
    replay = ReplayLM(lm(), store)
    sig = dspy.Predict("question -> answer").signature
    assert memo.fingerprint(adapter, replay, {}, sig, [], {"question": "q"}) is not None
    for inputs in ({"question": ("a", "tuple")}, {"question": b"bytes"}, {"question": {1: "int key"}}):
        assert memo.fingerprint(adapter, replay, {}, sig, [], inputs) is None
    assert memo.fingerprint(adapter, lm(), {}, sig, [], {"question": "q"}) is None  # not the replay LM
    # What changes the request changes the fingerprint.
    base = memo.fingerprint(adapter, replay, {}, sig, [], {"question": "q"})
    assert memo.fingerprint(adapter, replay, {"temperature": 0.5}, sig, [], {"question": "q"}) != base
    assert (
        memo.fingerprint(adapter, replay, {}, sig.with_instructions("Other."), [], {"question": "q"}) != base
    )
    assert memo.fingerprint(adapter, replay.copy(rollout_id=1), {}, sig, [], {"question": "q"}) != base
    json_adapter = memo.adapter(dspy.JSONAdapter())
    assert memo.fingerprint(json_adapter, replay, {}, sig, [], {"question": "q"}) != base
