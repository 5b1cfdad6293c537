"""The loopback OpenAI-compatible test server itself (tests/support/openai_server.py)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from support.openai_server import FakeOpenAIServer, Fault, openai_server


def _chat(server: FakeOpenAIServer, **body: object) -> httpx.Response:
    payload = {"model": "test-model", "messages": [{"role": "user", "content": "Hello there."}], **body}
    return httpx.post(
        f"{server.base_url}/chat/completions", json=payload, headers={"Authorization": "Bearer k"}
    )


def test_models_and_a_plain_chat_completion(openai_server: FakeOpenAIServer) -> None:
    models = httpx.get(f"{openai_server.base_url}/models").json()
    assert models["data"][0]["id"] == "test-model"
    reply = _chat(openai_server).json()
    assert reply["object"] == "chat.completion"
    assert reply["choices"][0]["message"]["role"] == "assistant"
    assert "Hello there." in reply["choices"][0]["message"]["content"]
    assert (
        reply["usage"]["total_tokens"]
        == reply["usage"]["prompt_tokens"] + reply["usage"]["completion_tokens"]
    )
    assert [r.method for r in openai_server.requests] == ["GET", "POST"]
    assert openai_server.chat_requests[0].headers["authorization"] == "Bearer k"


def test_scripted_responder_and_initial_faults() -> None:
    with openai_server(
        responder=lambda messages: f"echo: {messages[-1][1]}", faults=[Fault.error(418)]
    ) as server:
        assert _chat(server).status_code == 418
        assert _chat(server).json()["choices"][0]["message"]["content"] == "echo: Hello there."


def test_faults_apply_in_order_one_per_chat_request(openai_server: FakeOpenAIServer) -> None:
    openai_server.enqueue(Fault.rate_limit(retry_after=2), Fault.unavailable(), Fault.malformed())
    httpx.get(f"{openai_server.base_url}/models")  # not a chat request: takes no fault
    first = _chat(openai_server)
    assert first.status_code == 429 and first.headers["retry-after"] == "2"
    assert first.json()["error"]["type"] == "rate_limit_error"
    assert _chat(openai_server).status_code == 503
    broken = _chat(openai_server)
    assert broken.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(broken.text)
    assert _chat(openai_server).status_code == 200
    assert [r.fault.kind if r.fault else None for r in openai_server.chat_requests] == [
        "status",
        "status",
        "malformed",
        None,
    ]


def test_slow_fault_outlasts_a_client_timeout(openai_server: FakeOpenAIServer) -> None:
    openai_server.enqueue(Fault.slow(2.0))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{openai_server.base_url}/chat/completions",
            json={"messages": [{"role": "user", "content": "x"}]},
            timeout=0.3,
        )


def test_stop_releases_a_request_held_by_a_slow_fault() -> None:
    server = FakeOpenAIServer().start()
    server.enqueue(Fault.slow(30.0))
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(_chat(server).status_code), daemon=True)
    thread.start()
    while not server.chat_requests:
        time.sleep(0.01)
    started = time.monotonic()
    server.stop()
    thread.join(timeout=10)
    assert time.monotonic() - started < 10
    assert not thread.is_alive()


def test_bad_requests_and_unknown_routes(openai_server: FakeOpenAIServer) -> None:
    assert httpx.post(f"{openai_server.base_url}/chat/completions", content=b"not json").status_code == 400
    assert httpx.post(f"{openai_server.base_url}/embeddings", json={}).status_code == 404
    assert httpx.get(f"{openai_server.url}/nothing").status_code == 404
    openai_server.reset()
    assert openai_server.requests == []


def test_streaming_reply(openai_server: FakeOpenAIServer) -> None:
    response = _chat(openai_server, stream=True)
    assert response.headers["content-type"] == "text/event-stream"
    events = [line[len("data: ") :] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "Hello there." in chunks[0]["choices"][0]["delta"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
