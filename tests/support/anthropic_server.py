"""A real Anthropic-style HTTP server on loopback: the Messages API and the Message Batches API.

A sibling of `support.openai_server` (same thread, same responder, same faults and knobs): it serves
``POST .../messages`` (online, Anthropic's format: what DSPy's native Anthropic engine and LiteLLM's
Anthropic route post) and the Message Batches routes, ``POST .../messages/batches`` (requests inline),
``GET .../messages/batches[/{id}[/results]]`` and ``POST .../messages/batches/{id}/cancel``, under
any prefix: with ``api_base=server.base_url`` (``.../v1``) DSPy's native engine posts to
``/v1/messages`` and LiteLLM to ``/v1/v1/messages``, and both are served.

An answer's text is the responder's reply to the request's ``(role, text)`` messages (the system
prompt first), as the OpenAI server's; ``content_for`` may give the content blocks instead (thinking,
tool use). Usage counts words, as there. Every request must carry ``anthropic-version``; with
``required_key`` set, ``x-api-key`` must be it (else 401 ``authentication_error``). Errors have
Anthropic's shape (``{"type": "error", "error": {"type", "message"}}``).

Batches (``server.message_batches``): answered on a thread from their creation, shown ``ended`` once
``delay_s`` has passed; ``fail_next`` requests end ``errored`` with ``fail_type``, ``expire_next``
batches expire after answering ``expire_after`` requests; a request whose params lack ``model``,
``messages`` or ``max_tokens``, or ask to stream, ends ``errored`` (``invalid_request_error``), as
Anthropic validates params while processing. ``submitted`` counts each custom_id submitted.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs

from .openai_server import FakeOpenAIServer, Fault, RecordedRequest, Responder, _Handler

__all__ = ["ERROR_TYPES", "FakeAnthropicServer", "MessageBatches", "anthropic_server"]

#: Anthropic's error type for each HTTP status the server answers with.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_ROUTE = re.compile(
    r"^(?P<prefix>.*?)/messages(?P<batches>/batches(?:/(?P<id>[^/]+)(?P<tail>/cancel|/results)?)?)?$"
)
_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")

#: Content blocks of an answer from the request body (None: one text block from the responder).
ContentFor = Callable[[Mapping[str, Any]], list[dict[str, Any]]]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


@dataclass
class MessageBatches:
    """The Message Batches routes' state and knobs (``server.message_batches``).

    Attributes:
        supported: False: every batch route answers 404 (a provider without the API).
        delay_s: Seconds from creation until a batch is ended.
        fail_next: The next this many requests end ``errored`` with ``fail_type``.
        fail_type: The error type of a failed request (``api_error``, ``overloaded_error``, ...).
        expire_next: The next this many batches expire.
        expire_after: Requests an expiring batch answers before it expires.
        submitted: How many times each custom_id was submitted.
    """

    supported: bool = True
    delay_s: float = 0.0
    fail_next: int = 0
    fail_type: str = "api_error"
    expire_next: int = 0
    expire_after: int = 0
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: dict[str, float] = field(default_factory=dict)
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    submitted: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def duplicates(self) -> list[str]:
        """custom_ids submitted more than once."""
        with self.lock:
            return [k for k, n in self.submitted.items() if n > 1]


@dataclass
class FakeAnthropicServer(FakeOpenAIServer):
    """The server; use `anthropic_server` to run one.

    Attributes:
        required_key: When set, the ``x-api-key`` every request must carry.
        content_for: Content blocks of each answer from its request body (None: the responder's text).
    """

    required_key: str | None = None
    content_for: ContentFor | None = None
    message_batches: MessageBatches = field(default_factory=MessageBatches)

    @property
    def base_url(self) -> str:
        """What ``api_base`` takes: ``url + "/v1"`` (DSPy's native engine posts to ``/v1/messages``)."""
        return f"{self.url}/v1"

    @property
    def messages_requests(self) -> list[RecordedRequest]:
        """The recorded online ``POST .../messages`` requests."""
        with self._lock:
            return [r for r in self.requests if self._is_chat(r.method, r.path)]

    def _handler_base(self) -> type[BaseHTTPRequestHandler]:
        return _AnthropicHandler

    def _is_chat(self, method: str, path: str) -> bool:
        return method == "POST" and path.partition("?")[0].rstrip("/").endswith("/messages")

    def message(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The answer to one Messages request (counted in ``served_usage``)."""
        system = params.get("system")
        messages = [{"role": "system", "content": system}] if system else []
        messages += [m for m in params.get("messages", []) if isinstance(m, Mapping)]
        reply = self._reply({"model": params.get("model"), "messages": messages})
        usage = reply["usage"]
        content = (
            self.content_for(params)
            if self.content_for is not None
            else [{"type": "text", "text": reply["choices"][0]["message"]["content"]}]
        )
        has_tool = any(block.get("type") == "tool_use" for block in content)
        return {
            "id": reply["id"].replace("chatcmpl-", "msg_"),
            "type": "message",
            "role": "assistant",
            "model": str(params.get("model") or self.model),
            "content": content,
            "stop_reason": "tool_use" if has_tool else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"]},
        }


class _AnthropicHandler(_Handler):
    server_state: FakeAnthropicServer

    def do_GET(self) -> None:
        self._route("GET", b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._route("POST", self.rfile.read(length) if length else b"")

    def _send_error_body(
        self, status: int, message: str, kind: str | None = None, extra: Mapping[str, str] | None = None
    ) -> None:
        kind = (
            ERROR_TYPES.get(status, "api_error") if kind is None or kind not in ERROR_TYPES.values() else kind
        )
        self._send_json(status, {"type": "error", "error": {"type": kind, "message": message}}, extra)

    def _apply(self, fault: Fault) -> bool:
        if fault.kind == "status":
            extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            self._send_error_body(fault.status, fault.message, None, extra)
            return True
        return super()._apply(fault)

    def _route(self, method: str, raw: bytes) -> None:
        state = self.server_state
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = None
        fault = state._take_fault(method, self.path, self._headers(), body)
        path, _, query = self.path.partition("?")
        match = _ROUTE.match(path.rstrip("/"))
        if match is None:
            self._send_error_body(404, f"no route {method} {path}")
            return
        headers = self._headers()
        if not headers.get("anthropic-version"):
            self._send_error_body(400, "anthropic-version: header is required")
            return
        if state.required_key is not None and headers.get("x-api-key") != state.required_key:
            self._send_error_body(401, "invalid x-api-key")
            return
        if match["batches"] is None:
            if method != "POST":
                self._send_error_body(405, f"{method} not allowed on {path}")
            else:
                self._online(body, fault)
            return
        self._batch(method, match, body, parse_qs(query))

    def _online(self, body: Any, fault: Fault | None) -> None:
        state = self.server_state
        missing = [
            k for k in ("model", "messages", "max_tokens") if not isinstance(body, dict) or k not in body
        ]
        if missing:
            self._send_error_body(400, f"missing required field(s): {', '.join(missing)}")
            return
        if fault is not None and self._apply(fault):
            return
        if state.outage_status is not None:
            self._send_error_body(state.outage_status, "provider outage (injected)")
            return
        wait = state._admit()
        if wait is not None:
            self._send_error_body(
                429, "Rate limit reached (provider limit)", None, {"Retry-After": f"{wait:.2f}"}
            )
            return
        if state.latency_s:
            state._stopping.wait(state.latency_s)
        if body.get("stream"):
            self._send_error_body(400, "streaming is not served by this test server")
            return
        self._send_json(200, state.message(body))

    # --- Message Batches ---------------------------------------------------------------------------
    def _batch(self, method: str, match: re.Match[str], body: Any, query: dict[str, list[str]]) -> None:
        state = self.server_state
        api = state.message_batches
        if not api.supported:
            self._send_error_body(404, f"no route {method} {match.group(0)}")
            return
        batch_id, tail = match["id"], match["tail"]
        if batch_id is None:
            if method == "POST":
                self._create(match["prefix"], body)
            elif method == "GET":
                self._list(query)
            else:
                self._send_error_body(405, "method not allowed")
            return
        with api.lock:
            known = batch_id in api.batches
        if not known:
            self._send_error_body(404, f"no message batch {batch_id}")
            return
        if method == "POST" and tail == "/cancel":
            with api.lock:
                batch = api.batches[batch_id]
                if batch["processing_status"] == "in_progress":
                    batch["processing_status"] = "canceling"
                    batch["cancel_initiated_at"] = _now()
                answer = dict(batch)
            self._send_json(200, answer)
        elif method == "GET" and tail is None:
            self._send_json(200, _progress(state, batch_id))
        elif method == "GET" and tail == "/results":
            with api.lock:
                ended = api.batches[batch_id]["processing_status"] == "ended"
                lines = list(api.results.get(batch_id, []))
            if not ended:
                self._send_error_body(404, f"message batch {batch_id} has not ended: no results yet")
            else:
                data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
                self._send_raw(200, data, "application/binary")
        else:
            self._send_error_body(405, "method not allowed")

    def _create(self, prefix: str, body: Any) -> None:
        state = self.server_state
        api = state.message_batches
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            self._send_error_body(400, "requests: a non-empty list is required")
            return
        ids = [r.get("custom_id") if isinstance(r, dict) else None for r in requests]
        bad = [i for i in ids if not isinstance(i, str) or not _CUSTOM_ID.fullmatch(i)]
        if bad:
            self._send_error_body(400, f"custom_id must match ^[a-zA-Z0-9_-]{{1,64}}$: {bad[:3]}")
            return
        if len(set(ids)) != len(ids):
            self._send_error_body(400, "custom_id values must be unique within a batch")
            return
        if any(not isinstance(r.get("params"), dict) for r in requests):
            self._send_error_body(400, "every request needs params")
            return
        with api.lock:
            batch_id = f"msgbatch_{len(api.batches) + 1:04d}"
            for custom_id in ids:
                api.submitted[custom_id] = api.submitted.get(custom_id, 0) + 1
            created = dt.datetime.now(dt.UTC)
            api.batches[batch_id] = {
                "id": batch_id,
                "type": "message_batch",
                "processing_status": "in_progress",
                "request_counts": {
                    "processing": len(requests),
                    "succeeded": 0,
                    "errored": 0,
                    "canceled": 0,
                    "expired": 0,
                },
                "ended_at": None,
                "created_at": created.isoformat().replace("+00:00", "Z"),
                "expires_at": (created + dt.timedelta(hours=24)).isoformat().replace("+00:00", "Z"),
                "archived_at": None,
                "cancel_initiated_at": None,
                "results_url": None,
                "_prefix": prefix,
            }
            api.created[batch_id] = time.monotonic()
            answer = _public(api.batches[batch_id])
        threading.Thread(target=_answer, args=(state, batch_id, requests), daemon=True).start()
        self._send_json(200, answer)

    def _list(self, query: dict[str, list[str]]) -> None:
        api = self.server_state.message_batches
        limit = int((query.get("limit") or ["20"])[0])
        after = (query.get("after_id") or [None])[0]
        with api.lock:
            ordered = [_public(b) for b in reversed(api.batches.values())]  # newest first
        if after is not None:
            ids = [b["id"] for b in ordered]
            ordered = ordered[ids.index(after) + 1 :] if after in ids else []
        page = ordered[:limit]
        self._send_json(
            200,
            {
                "data": page,
                "has_more": len(ordered) > limit,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
            },
        )


def _public(batch: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def _answer(state: FakeAnthropicServer, batch_id: str, requests: list[dict[str, Any]]) -> None:
    """Answer a batch's requests on a thread (as a provider works while the batch is pending)."""
    api = state.message_batches
    with api.lock:
        expire = api.expire_next > 0
        api.expire_next -= 1 if expire else 0
    lines: list[dict[str, Any]] = []
    for n, request in enumerate(requests):
        custom_id, params = request["custom_id"], request["params"]
        if expire and n >= api.expire_after:
            lines.append({"custom_id": custom_id, "result": {"type": "expired"}})
            continue
        with api.lock:
            fail = api.fail_next > 0
            api.fail_next -= 1 if fail else 0
            kind = api.fail_type
        invalid = [k for k in ("model", "messages", "max_tokens") if k not in params]
        if params.get("stream"):
            invalid.append("stream (batches are not streamed)")
        if invalid or fail:
            kind, message = (
                ("invalid_request_error", f"invalid params: {', '.join(invalid)}")
                if invalid
                else (kind, f"{kind} (injected)")
            )
            error = {"type": "error", "error": {"type": kind, "message": message}}
            lines.append({"custom_id": custom_id, "result": {"type": "errored", "error": error}})
            continue
        lines.append(
            {"custom_id": custom_id, "result": {"type": "succeeded", "message": state.message(params)}}
        )
    with api.lock:
        api.results[batch_id] = lines


def _progress(state: FakeAnthropicServer, batch_id: str) -> dict[str, Any]:
    """The batch; ended (its results listed) once answered and its delay has passed, or once a
    cancel was asked (the requests not yet ended are canceled)."""
    api = state.message_batches
    with api.lock:
        batch = api.batches[batch_id]
        if batch["processing_status"] == "ended":
            return _public(batch)
        canceling = batch["processing_status"] == "canceling"
        due = time.monotonic() - api.created[batch_id] >= api.delay_s and batch_id in api.results
        if not (due or canceling):
            return _public(batch)
        if canceling and not due:
            api.results[batch_id] = [
                {"custom_id": cid, "result": {"type": "canceled"}} for cid in _ids_of(api, batch_id)
            ]
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        for line in api.results[batch_id]:
            counts[line["result"]["type"]] += 1
        batch.update(
            processing_status="ended",
            request_counts=counts,
            ended_at=_now(),
            results_url=f"{state.url}{batch['_prefix']}/messages/batches/{batch_id}/results",
        )
        return _public(batch)


def _ids_of(api: MessageBatches, batch_id: str) -> list[str]:
    done = api.results.get(batch_id)
    if done is not None:
        return [line["custom_id"] for line in done]
    return []  # a cancel before the answering thread kept anything: nothing to list


@contextmanager
def anthropic_server(
    *,
    model: str = "claude-haiku-4-5",
    responder: Responder | None = None,
    content_for: ContentFor | None = None,
    faults: Sequence[Fault] = (),
    required_key: str | None = None,
) -> Iterator[FakeAnthropicServer]:
    """Run a `FakeAnthropicServer` for the duration of a ``with`` block.

    Args:
        model: The model id the answers name when a request names none.
        responder: Reply text from ``(role, text)`` messages; None answers like the offline LM.
        content_for: Content blocks of each answer from its request body (instead of the text).
        faults: Faults to queue before the first online request.
        required_key: The ``x-api-key`` every request must carry (None: any).
    """
    server = FakeAnthropicServer(
        model=model, responder=responder, content_for=content_for, required_key=required_key
    )
    server.enqueue(*faults)
    server.start()
    try:
        yield server
    finally:
        server.stop()
