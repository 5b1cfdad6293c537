"""A real OpenAI-compatible HTTP server on loopback, for testing the LM path end to end.

It serves ``POST /v1/chat/completions`` and ``GET /v1/models`` on ``127.0.0.1`` at an ephemeral port
(stdlib ``ThreadingHTTPServer`` in a daemon thread), answering the way a model would answer DSPy's
adapters: by default with the offline extractive LM's reply to the same messages
(`tasks.lm.respond`), or with a scripted responder.

Faults are scripted per request: each chat request takes the next `Fault` from the queue (none left:
a normal answer). A provider's behaviour can also be switched on as a whole: ``latency_s`` (every
answer waits), ``rate_limit_per_s`` (a token bucket holding one second's worth; a request beyond it
gets 429 with ``Retry-After``), and ``outage_status`` (every chat request gets that status until it is
set back to None). Every request is recorded (method, path, headers, JSON body) so a test can check
that the ``Authorization`` header arrived; the server itself logs nothing.

    with openai_server() as server:
        server.enqueue(Fault.rate_limit(retry_after=0), Fault.server_error())
        lm = dspy.LM("openai/test-model", api_base=server.base_url, api_key="sk-test", cache=False)
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

__all__ = ["Fault", "FakeOpenAIServer", "RecordedRequest", "Responder", "openai_server"]

#: Turns the request's ``(role, text)`` messages into the assistant's reply text.
Responder = Callable[[Sequence[tuple[str, str]]], str]

FaultKind = Literal["status", "slow", "malformed", "disconnect"]


@dataclass(frozen=True, slots=True)
class Fault:
    """What to do to one request instead of answering it normally.

    Attributes:
        kind: ``status`` (an error response), ``slow`` (answer after a delay), ``malformed`` (200
            with a body that is not JSON), or ``disconnect`` (close the connection, no response).
        status: The HTTP status of a ``status`` fault.
        retry_after: Seconds for a ``Retry-After`` header, if any.
        delay: Seconds a ``slow`` fault waits before answering.
        message: The error message in the OpenAI-style error body.
    """

    kind: FaultKind
    status: int = 500
    retry_after: float | None = None
    delay: float = 0.0
    message: str = "injected fault"

    @classmethod
    def rate_limit(cls, retry_after: float | None = 0) -> Fault:
        """A 429 Too Many Requests, with ``Retry-After`` when given."""
        return cls("status", status=429, retry_after=retry_after, message="Rate limit reached (injected)")

    @classmethod
    def server_error(cls, retry_after: float | None = None) -> Fault:
        """A 500 Internal Server Error, with ``Retry-After`` when given."""
        return cls(
            "status", status=500, retry_after=retry_after, message="The server had an error (injected)"
        )

    @classmethod
    def unavailable(cls, retry_after: float | None = None) -> Fault:
        """A 503 Service Unavailable."""
        return cls("status", status=503, retry_after=retry_after, message="Service unavailable (injected)")

    @classmethod
    def error(cls, status: int, message: str = "injected fault") -> Fault:
        """Any error status (400, 401, 404...)."""
        return cls("status", status=status, message=message)

    @classmethod
    def slow(cls, delay: float) -> Fault:
        """Answer normally, but only after ``delay`` seconds (beyond a client's timeout)."""
        return cls("slow", delay=delay)

    @classmethod
    def malformed(cls) -> Fault:
        """A 200 response whose body is not JSON."""
        return cls("malformed", status=200)

    @classmethod
    def disconnect(cls) -> Fault:
        """Close the connection without any response."""
        return cls("disconnect")


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the server received.

    Attributes:
        method: ``GET`` or ``POST``.
        path: The request path.
        headers: The request headers, names lower-cased.
        body: The decoded JSON body (None when there was none or it was not JSON).
        fault: The fault applied to it, if any.
    """

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any
    fault: Fault | None = None

    @property
    def messages(self) -> list[tuple[str, str]]:
        """The chat messages as ``(role, text)`` pairs."""
        if not isinstance(self.body, Mapping):
            return []
        return [
            (str(m.get("role", "")), _content_text(m.get("content"))) for m in self.body.get("messages", [])
        ]


@dataclass
class FakeOpenAIServer:
    """The server; use `openai_server` (or the ``openai_server`` fixture) to run one.

    Attributes:
        model: The model id ``/v1/models`` lists (requests may name any model).
        responder: Produces the reply text; None uses the offline extractive LM's reply.
    """

    model: str = "test-model"
    responder: Responder | None = None
    latency_s: float = 0.0
    rate_limit_per_s: float | None = None
    outage_status: int | None = None
    stream_chunk_words: int = 0  # > 0: a streamed reply comes in SSE chunks of this many words
    throttled: int = 0
    requests: list[RecordedRequest] = field(default_factory=list)
    _faults: deque[Fault] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _httpd: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _counter: int = 0
    _bucket: float | None = None
    _bucket_at: float = 0.0
    _served: dict[str, int] = field(
        default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0}
    )

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (without ``/v1``)."""
        if self._httpd is None:
            raise RuntimeError("the server is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL: ``url + "/v1"`` (what ``api_base`` takes)."""
        return f"{self.url}/v1"

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """The recorded ``POST .../chat/completions`` requests."""
        with self._lock:
            return [r for r in self.requests if r.method == "POST" and r.path.endswith("/chat/completions")]

    @property
    def served_usage(self) -> dict[str, int]:
        """Totals of the ``usage`` the server reported: prompt/completion tokens, answered requests."""
        with self._lock:
            return dict(self._served)

    @property
    def pending_faults(self) -> int:
        """Faults still queued."""
        with self._lock:
            return len(self._faults)

    def _admit(self) -> float | None:
        """None when a request is within the rate limit, else the seconds until it would be."""
        rate = self.rate_limit_per_s
        if not rate:
            return None
        with self._lock:
            now = time.monotonic()
            level = rate if self._bucket is None else self._bucket
            level = min(rate, level + (now - self._bucket_at) * rate)
            self._bucket_at = now
            if level >= 1.0:
                self._bucket = level - 1.0
                return None
            self._bucket = level
            self.throttled += 1
            return (1.0 - level) / rate

    def enqueue(self, *faults: Fault) -> None:
        """Queue faults; each chat request takes the next one."""
        with self._lock:
            self._faults.extend(faults)

    def reset(self) -> None:
        """Forget recorded requests and queued faults."""
        with self._lock:
            self.requests.clear()
            self._faults.clear()
            self._served = dict.fromkeys(self._served, 0)

    def start(self) -> FakeOpenAIServer:
        """Start serving on 127.0.0.1 at an ephemeral port."""
        handler = type("_BoundHandler", (self._handler_base(),), {"server_state": self})
        self._stopping.clear()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; requests sleeping in a ``slow`` fault are released."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    # --- request handling (called from handler threads) ---------------------------------------
    def _handler_base(self) -> type[BaseHTTPRequestHandler]:
        """The request handler class (a sibling server, such as Anthropic's, serves other routes)."""
        return _Handler

    def _is_chat(self, method: str, path: str) -> bool:
        """Whether a request is a chat request (it takes the next queued fault)."""
        return method == "POST" and path.endswith("/chat/completions")

    def _take_fault(self, method: str, path: str, headers: Mapping[str, str], body: Any) -> Fault | None:
        with self._lock:
            is_chat = self._is_chat(method, path)
            fault = self._faults.popleft() if is_chat and self._faults else None
            self.requests.append(RecordedRequest(method, path, dict(headers), body, fault))
            self._counter += 1
            return fault

    def _reply(self, body: Mapping[str, Any]) -> dict[str, Any]:
        messages = [
            (str(m.get("role", "")), _content_text(m.get("content"))) for m in body.get("messages", [])
        ]
        if self.responder is not None:
            text = self.responder(messages)
        else:
            from tasks.lm.offline import respond

            system = "\n".join(t for r, t in messages if r in ("system", "developer")) or None
            text = respond(system, [(r, t) for r, t in messages if r not in ("system", "developer")])
        with self._lock:
            number = self._counter
        prompt_words = sum(len(t.split()) for _, t in messages)
        completion_words = len(text.split())
        with self._lock:
            self._served["prompt_tokens"] += prompt_words
            self._served["completion_tokens"] += completion_words
            self._served["requests"] += 1
        return {
            "id": f"chatcmpl-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(body.get("model") or self.model),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": prompt_words,
                "completion_tokens": completion_words,
                "total_tokens": prompt_words + completion_words,
            },
        }


class _Handler(BaseHTTPRequestHandler):
    server_state: FakeOpenAIServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        # Silent on purpose: request logs would go to stderr, and tests assert nothing leaks.
        return

    def do_GET(self) -> None:
        self.server_state._take_fault("GET", self.path, self._headers(), None)
        if _batch_route(self, "GET", b""):  # the batch API block below (issue 21)
            return
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            model = self.server_state.model
            self._send_json(
                200, {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "dspex-tests"}]}
            )
        else:
            self._send_error_body(404, f"no route GET {self.path}", "not_found")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = None
        fault = self.server_state._take_fault("POST", self.path, self._headers(), body)
        if _batch_route(self, "POST", raw):  # the batch API block below (issue 21)
            return
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send_error_body(404, f"no route POST {self.path}", "not_found")
            return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self._send_error_body(
                400, "the body must be a JSON object with a 'messages' list", "invalid_request_error"
            )
            return
        if fault is not None and self._apply(fault):
            return
        state = self.server_state
        if state.outage_status is not None:
            self._send_error_body(state.outage_status, "provider outage (injected)", "server_error")
            return
        wait = state._admit()
        if wait is not None:
            extra = {"Retry-After": f"{max(wait, 0.01):.2f}"}
            self._send_error_body(429, "Rate limit reached (provider limit)", "rate_limit_error", extra)
            return
        if state.latency_s:
            state._stopping.wait(state.latency_s)
        reply = self.server_state._reply(body)
        if body.get("stream"):
            self._send_stream(reply)
        else:
            self._send_json(200, reply)

    def _apply(self, fault: Fault) -> bool:
        """Apply a fault; True when it replaced the answer."""
        if fault.kind == "slow":
            self.server_state._stopping.wait(fault.delay)
            return False
        if fault.kind == "malformed":
            self._send_raw(200, b'{"id": "chatcmpl-broken", "choices": [', "application/json")
            return True
        if fault.kind == "disconnect":
            self.close_connection = True
            self.connection.shutdown(2)
            return True
        kind = {429: "rate_limit_error", 401: "authentication_error"}.get(fault.status, "server_error")
        extra = {"Retry-After": _seconds(fault.retry_after)} if fault.retry_after is not None else {}
        self._send_error_body(fault.status, fault.message, kind, extra)
        return True

    def _headers(self) -> dict[str, str]:
        return {name.lower(): value for name, value in self.headers.items()}

    def _send_error_body(
        self, status: int, message: str, kind: str, extra: Mapping[str, str] | None = None
    ) -> None:
        body = {"error": {"message": message, "type": kind, "param": None, "code": str(status)}}
        self._send_json(status, body, extra)

    def _send_json(self, status: int, body: Any, extra: Mapping[str, str] | None = None) -> None:
        self._send_raw(status, json.dumps(body).encode(), "application/json", extra)

    def _send_raw(
        self, status: int, data: bytes, content_type: str, extra: Mapping[str, str] | None = None
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (a timeout test); nothing is left to answer.
            self.close_connection = True

    def _send_stream(self, reply: Mapping[str, Any]) -> None:
        text = reply["choices"][0]["message"]["content"]
        base = {k: reply[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
        chunks = [
            base
            | {
                "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": piece}, "finish_reason": None}
                ]
            }
            for piece in _pieces(text, self.server_state.stream_chunk_words)
        ]
        chunks.append(
            base | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": reply["usage"]}
        )
        data = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"
        self._send_raw(200, data, "text/event-stream")


@contextmanager
def openai_server(
    *, model: str = "test-model", responder: Responder | None = None, faults: Sequence[Fault] = ()
) -> Iterator[FakeOpenAIServer]:
    """Run a `FakeOpenAIServer` for the duration of a ``with`` block.

    Args:
        model: The model id ``/v1/models`` lists.
        responder: Reply text from ``(role, text)`` messages; None answers like the offline LM.
        faults: Faults to queue before the first request.
    """
    server = FakeOpenAIServer(model=model, responder=responder)
    server.enqueue(*faults)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _pieces(text: str, words: int) -> list[str]:
    """The reply cut into chunks of ``words`` words (whitespace kept); one chunk when ``words`` is 0."""
    if words <= 0:
        return [text]
    tokens = re.findall(r"\s*\S+\s*?(?=\s|$)|\s+$", text)
    return ["".join(tokens[i : i + words]) for i in range(0, len(tokens), words)] or [text]


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return ""


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# --- the batch API: /v1/files and /v1/batches (issue 21) ---------------------------------------------
# A batch's requests are answered like chat requests (the same responder, the same usage counts), when
# the batch is first retrieved at least ``batch_delay_s`` after it was created. Faults of a batch are
# set on the server's ``batch`` attribute: the next ``fail_next`` requests answer 500 in the error
# file, and ``expire_next`` batches expire after answering ``expire_after`` of their requests. Every
# submitted request's custom_id is counted, so a test can check that none was submitted twice.


@dataclass
class BatchAPI:
    """The batch endpoints' state and knobs (``server.batch``).

    Attributes:
        supported: False: every batch route answers 404 (a provider without a batch API).
        delay_s: Seconds from creation until a batch is done.
        fail_next: The next this many batch requests fail with a 500 (in the error file).
        expire_next: The next this many batches expire.
        expire_after: Requests an expiring batch answers before it expires.
        submitted: How many times each custom_id was submitted.
    """

    supported: bool = True
    delay_s: float = 0.0
    fail_next: int = 0
    expire_next: int = 0
    expire_after: int = 0
    files: dict[str, bytes] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: dict[str, float] = field(default_factory=dict)
    submitted: dict[str, int] = field(default_factory=dict)
    answers: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]], bool]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def duplicates(self) -> list[str]:
        """custom_ids submitted more than once."""
        with self.lock:
            return [k for k, n in self.submitted.items() if n > 1]


def _batch_api(state: FakeOpenAIServer) -> BatchAPI:
    api = state.__dict__.get("batch")
    if api is None:
        api = state.__dict__["batch"] = BatchAPI()
    return api


FakeOpenAIServer.batch = property(_batch_api)  # type: ignore[attr-defined]


def _batch_route(handler: _Handler, method: str, raw: bytes) -> bool:
    """Answer a /v1/files or /v1/batches request; False when the path is not one of them."""
    path, _, query = handler.path.partition("?")
    parts = [p for p in path.split("/") if p][1:] if path.startswith("/v1/") else []
    if not parts or parts[0] not in ("files", "batches"):
        return False
    state = handler.server_state
    api = _batch_api(state)
    if not api.supported:
        handler._send_error_body(404, f"no route {method} {path}", "not_found")
        return True
    if parts[0] == "files":
        if method == "POST" and len(parts) == 1:
            data = _multipart_file(handler.headers.get("Content-Type", ""), raw)
            if data is None:
                handler._send_error_body(
                    400, "expected a multipart upload with 'file'", "invalid_request_error"
                )
                return True
            with api.lock:
                file_id = f"file-{len(api.files) + 1}"
                api.files[file_id] = data
            handler._send_json(200, {"id": file_id, "object": "file", "purpose": "batch", "bytes": len(data)})
            return True
        if method == "GET" and len(parts) == 3 and parts[2] == "content":
            with api.lock:
                content = api.files.get(parts[1])
            if content is None:
                handler._send_error_body(404, f"no file {parts[1]}", "not_found")
            else:
                handler._send_raw(200, content, "application/jsonl")
            return True
    if method == "POST" and len(parts) == 1:
        body = json.loads(raw or b"{}")
        with api.lock:
            content = api.files.get(str(body.get("input_file_id")))
            if content is None:
                handler._send_error_body(400, "unknown input_file_id", "invalid_request_error")
                return True
            batch_id = f"batch_{len(api.batches) + 1}"
            lines = [json.loads(line) for line in content.splitlines() if line.strip()]
            for line in lines:
                api.submitted[line["custom_id"]] = api.submitted.get(line["custom_id"], 0) + 1
            api.batches[batch_id] = {
                "id": batch_id,
                "object": "batch",
                "endpoint": body.get("endpoint"),
                "input_file_id": body.get("input_file_id"),
                "completion_window": body.get("completion_window"),
                "status": "validating",
                "output_file_id": None,
                "error_file_id": None,
                "created_at": int(time.time()),
                "metadata": body.get("metadata") or {},
                "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            }
            api.created[batch_id] = time.monotonic()
            answer = dict(api.batches[batch_id])
        threading.Thread(target=_answer_batch, args=(state, api, batch_id), daemon=True).start()
        handler._send_json(200, answer)
        return True
    if method == "GET" and len(parts) == 1:
        with api.lock:
            data = [dict(b) for b in reversed(api.batches.values())]
        handler._send_json(200, {"object": "list", "data": data, "has_more": False})
        return True
    if len(parts) >= 2 and parts[1] in api.batches:
        if method == "POST" and parts[2:] == ["cancel"]:
            with api.lock:
                batch = api.batches[parts[1]]
                if batch["status"] not in ("completed", "failed", "expired"):
                    batch["status"] = "cancelled"
                answer = dict(batch)
            handler._send_json(200, answer)
            return True
        if method == "GET" and len(parts) == 2:
            handler._send_json(200, _run_batch(state, api, parts[1]))
            return True
    handler._send_error_body(404, f"no route {method} {path}", "not_found")
    return True


def _answer_batch(state: FakeOpenAIServer, api: BatchAPI, batch_id: str) -> None:
    """Answer a batch's requests (on a thread started at creation, as a provider works meanwhile);
    the batch is shown done once ``delay_s`` has passed too."""
    with api.lock:
        batch = api.batches[batch_id]
        lines = [json.loads(line) for line in api.files[batch["input_file_id"]].splitlines() if line.strip()]
        expire = api.expire_next > 0
        api.expire_next -= 1 if expire else 0
    out: list[dict[str, Any]] = []
    err: list[dict[str, Any]] = []
    for n, line in enumerate(lines):
        custom_id = line["custom_id"]
        if expire and n >= api.expire_after:
            message = "This request could not be executed before the completion window expired."
            error = {"code": "batch_expired", "message": message}
            err.append({"id": f"req_{n}", "custom_id": custom_id, "response": None, "error": error})
            continue
        with api.lock:
            fail = api.fail_next > 0
            api.fail_next -= 1 if fail else 0
        if fail:
            body = {"error": {"message": "The server had an error (injected)", "type": "server_error"}}
            response = {"status_code": 500, "body": body}
        else:
            response = {"status_code": 200, "body": state._reply(line["body"])}
        (err if fail else out).append(
            {"id": f"req_{n}", "custom_id": custom_id, "response": response, "error": None}
        )
    with api.lock:
        api.answers[batch_id] = (out, err, expire)


def _run_batch(state: FakeOpenAIServer, api: BatchAPI, batch_id: str) -> dict[str, Any]:
    """The batch; done (its result files written) once it is answered and its delay has passed."""
    with api.lock:
        batch = api.batches[batch_id]
        due = time.monotonic() - api.created[batch_id] >= api.delay_s
        if batch["status"] == "validating":
            batch["status"] = "in_progress"
        if batch["status"] != "in_progress" or not due or batch_id not in api.answers:
            return dict(batch)
        out, err, expire = api.answers[batch_id]
        for kind, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                file_id = f"file-{len(api.files) + 1}"
                api.files[file_id] = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
                batch[kind] = file_id
        batch["status"] = "expired" if expire else "completed"
        total = len(out) + len(err)
        batch["request_counts"] = {"total": total, "completed": len(out), "failed": len(err)}
        return dict(batch)


def _multipart_file(content_type: str, raw: bytes) -> bytes | None:
    """The ``file`` part of a multipart/form-data body."""
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw
    )
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "file":
            payload = part.get_payload(decode=True)
            return payload if isinstance(payload, bytes) else None
    return None
