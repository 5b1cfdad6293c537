"""The Anthropic Message Batches client (tasks/lm/anthropic_batch.py) against the loopback server.

Each check compares with the online path of the same ``dspy.LM``: the params a batch request carries
are the JSON the online call posts, and an answer parses into the outputs the online call returns.
"""

from __future__ import annotations

import time

import dspy
import pytest
from support.anthropic_server import FakeAnthropicServer, anthropic_server

from dspex.exceptions import LMBatchAmbiguousError, LMBatchError, LMBatchUnsupportedError
from tasks.lm import anthropic_batch
from tasks.lm.anthropic_batch import AnthropicBatchClient
from tasks.lm.batch_api import BatchClient, chat_body
from tasks.lm.batch_clients import client_for
from tasks.lm.offline import build_offline_lm
from tasks.lm.replay import error_for

KEY = "sk-ant-batch-secret"
MODEL = "anthropic/claude-haiku-4-5"
MESSAGES = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Question: What colour is the box?\nContext: The box is red."},
]


@pytest.fixture
def server():
    with anthropic_server(required_key=KEY) as s:
        yield s


def lm_for(server: FakeAnthropicServer, **extra) -> dspy.LM:
    return dspy.LM(MODEL, api_base=server.base_url, api_key=KEY, cache=False, num_retries=0, **extra)


def ask(lm: dspy.LM, messages: list[dict]) -> list:
    """An online call as a DSPy adapter makes it (the chat messages of a program's predictor)."""
    from dspy.clients._deprecation import adapter_message_call

    with adapter_message_call(lm, messages):
        return lm(messages=messages)


def pending_of(lm: dspy.LM, n: int) -> dict[str, dict]:
    return {
        f"{i:040x}": chat_body(lm.model, [MESSAGES[0], {"role": "user", "content": f"Item {i}?"}], lm.kwargs)
        for i in range(n)
    }


def ended(client: AnthropicBatchClient, batch_id: str):
    for _ in range(200):
        info = client.retrieve(batch_id)
        if info.done:
            return info
        time.sleep(0.02)
    raise AssertionError(f"batch {batch_id} did not end")


def batch_posts(server: FakeAnthropicServer):
    return [r for r in server.requests if r.method == "POST" and r.path.endswith("/messages/batches")]


def test_both_online_routes_work_against_the_server_and_a_batch_request_is_the_online_call(server):
    native, via_litellm = lm_for(server, temperature=0.3), lm_for(server, temperature=0.3, engine="litellm")
    online = ask(native, MESSAGES)
    assert ask(via_litellm, MESSAGES) == online  # LiteLLM's Anthropic route is served too
    assert [r.path for r in server.messages_requests] == ["/v1/messages", "/v1/v1/messages"]
    sent_online = server.messages_requests[0]

    client = client_for(native)
    assert isinstance(client, AnthropicBatchClient)
    assert client.batches_url == f"{server.base_url}/messages/batches"  # the online URL + /batches
    client.check()
    body = chat_body(native.model, MESSAGES, {**native.kwargs})
    info = client.submit({"k" * 40: body}, "dspex-job-r1", "24h")
    (post,) = batch_posts(server)
    (request,) = post.body["requests"]
    expected = {k: v for k, v in sent_online.body.items() if k != "stream"}
    assert request == {"custom_id": "k" * 40, "params": expected}
    assert post.headers["x-api-key"] == KEY and post.headers["anthropic-version"] == "2023-06-01"
    assert "dspex-job-r1" not in str(post.body)  # a Message Batch has no metadata

    (line,) = client.results(ended(client, info.id))
    assert line.status == 200
    assert native._process_completion(line.response, native.kwargs) == online
    usage = line.response["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (
        server.served_usage["prompt_tokens"] // 3,
        server.served_usage["completion_tokens"] // 3,
    )
    client.close()


def test_thinking_tool_use_and_text_parse_as_online():
    def content(params):
        return [
            {"type": "thinking", "thinking": "Look it up first.", "signature": "sig"},
            {"type": "text", "text": "Calling the tool."},
            {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"query": "box"}},
        ]

    with anthropic_server(content_for=content) as server:
        lm = lm_for(server)
        online = ask(lm, MESSAGES)
        client = client_for(lm)
        info = client.submit({"t" * 40: chat_body(lm.model, MESSAGES, lm.kwargs)}, "r", "24h")
        (line,) = client.results(ended(client, info.id))
        client.close()
    replayed = lm._process_completion(line.response, lm.kwargs)
    assert isinstance(online[0], dict) and online[0]["reasoning_content"] == "Look it up first."
    assert replayed[0]["text"] == online[0]["text"]
    assert replayed[0]["reasoning_content"] == online[0]["reasoning_content"]
    assert [dict(c) for c in replayed[0]["tool_calls"]] == [
        {"id": c["id"], "type": c["type"], "function": dict(c["function"])} for c in online[0]["tool_calls"]
    ]
    assert line.response["choices"][0]["finish_reason"] == "tool_calls"


def test_errored_requests_keep_the_online_status_and_error(server):
    lm = lm_for(server)
    client = client_for(lm)
    server.message_batches.fail_next, server.message_batches.fail_type = 2, "overloaded_error"
    info = client.submit(pending_of(lm, 3), "r", "24h")
    lines = {line.key: line for line in client.results(ended(client, info.id))}
    assert sorted(line.status for line in lines.values()) == [200, 529, 529]
    failed = next(line for line in lines.values() if line.status == 529)
    assert type(error_for(failed.status, failed.message, MODEL)).__name__ == "LMServerError"
    assert "overloaded_error" in failed.message

    server.message_batches.fail_next, server.message_batches.fail_type = 1, "invalid_request_error"
    info = client.submit(pending_of(lm, 1), "r2", "24h")
    (line,) = client.results(ended(client, info.id))
    assert line.status == 400
    assert type(error_for(line.status, line.message, MODEL)).__name__ == "LMInvalidRequestError"
    client.close()


def test_expired_and_cancelled_batches(server):
    lm = lm_for(server)
    client = client_for(lm)
    server.message_batches.expire_next, server.message_batches.expire_after = 1, 1
    info = ended(client, client.submit(pending_of(lm, 3), "r", "24h").id)
    assert info.status == "completed"  # one request answered, two expired
    assert sorted(line.status for line in client.results(info)) == [0, 0, 200]

    server.message_batches.delay_s = 3600
    info = client.submit(pending_of(lm, 2), "r2", "24h")
    assert client.retrieve(info.id).status == "in_progress"
    assert client.cancel(info.id).status == "cancelling"
    info = ended(client, info.id)
    assert info.status == "cancelled"
    assert [line.status for line in client.results(info)] == [0, 0]
    client.close()


def test_results_are_read_from_the_batches_route_when_results_url_is_elsewhere(server):
    lm = lm_for(server)
    client = client_for(lm)
    info = ended(client, client.submit(pending_of(lm, 1), "r", "24h").id)
    elsewhere = {**info.raw, "results_url": "http://203.0.113.9/v1/messages/batches/x/results"}
    moved = type(info)(**{**info.__dict__, "raw": elsewhere})
    (line,) = client.results(moved)  # the key went to the provider's own route only
    assert line.status == 200
    assert server.requests[-1].path == f"/v1/messages/batches/{info.id}/results"
    client.close()


def test_find_adopts_one_batch_of_the_round_and_refuses_to_guess(server, monkeypatch):
    lm = lm_for(server)
    client = client_for(lm)
    since = anthropic_batch.dt.datetime.now(anthropic_batch.dt.UTC).isoformat()
    assert client.find("r", since=since, requests=3) is None  # nothing submitted: submit
    first = client.submit(pending_of(lm, 3), "r", "24h")
    client.submit(pending_of(lm, 2), "other", "24h")  # another size: never adopted
    assert client.find("r", since=since, requests=3).id == first.id
    assert client.find("r", since=since, requests=None) is None

    old = "2020-01-01T00:00:00Z"  # a batch of the same size, created long before the round
    server.message_batches.batches[first.id]["created_at"] = old
    assert client.find("r", since=since, requests=3) is None
    server.message_batches.batches[first.id]["created_at"] = since

    monkeypatch.setattr(anthropic_batch, "_LIST_PAGE", 1)  # found across pages too
    second = client.submit(pending_of(lm, 3), "r", "24h")
    with pytest.raises(LMBatchAmbiguousError, match="cancel the ones this run did not submit") as caught:
        client.find("r", since=since, requests=3)
    assert sorted(caught.value.batch_ids) == sorted([first.id, second.id])
    client.cancel(second.id)  # what the error asks for: a cancelled batch is never adopted
    assert client.find("r", since=since, requests=3).id == first.id
    client.close()


def test_a_request_key_that_is_not_a_custom_id_is_refused_before_sending(server):
    lm = lm_for(server)
    client = client_for(lm)
    with pytest.raises(LMBatchError, match="custom_id"):
        client.submit({"not a key!": chat_body(lm.model, MESSAGES, lm.kwargs)}, "r", "24h")
    assert batch_posts(server) == []
    client.close()


def test_unsupported_providers_and_routes_are_typed_errors_before_anything_is_sent(server):
    server.message_batches.supported = False
    client = client_for(lm_for(server))
    with pytest.raises(LMBatchUnsupportedError, match="no batch API"):
        client.check()
    client.close()
    with pytest.raises(LMBatchUnsupportedError, match="through LiteLLM"):
        client_for(lm_for(server, engine="litellm"))
    with pytest.raises(LMBatchUnsupportedError, match="OpenAI-compatible or Anthropic"):
        client_for(build_offline_lm())
    with pytest.raises(LMBatchUnsupportedError, match="'gemini'"):
        client_for(dspy.LM("gemini/gemini-2.0-flash", api_key="k"))
    assert isinstance(client_for(dspy.LM("openai/gpt-4o-mini", api_key="k")), BatchClient)
    assert [r for r in server.requests if r.method == "POST"] == []
