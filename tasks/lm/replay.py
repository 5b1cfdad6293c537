"""The LM a row's program talks to in batch mode: answers from a store, records what it cannot answer.

Batch mode (`flows.batch_api.mode`) runs each waiting row's program from the start in every round. Each
LM call the program makes is turned into the ``/v1/chat/completions`` body the online path would send
(`tasks.lm.batch_api.chat_body`), keyed by a stable hash of it (`request_key`):

* a key the `ResponseStore` holds an answer for is answered from it: the provider's raw chat
  completion goes through DSPy's own ``BaseLM._process_completion``, so the adapter parses exactly
  what it would parse online; a stored failure raises the typed DSPy LM error the online call would
  have raised (``LMServerError`` for a 5xx, ``LMRateLimitError`` for a 429, ...);
* an unknown key is recorded, and the call raises `NeedsAnswer`, which ends the row for this round.

`NeedsAnswer` is a ``BaseException``: a program's ``except Exception`` (Refine, BestOfN, a user's
own) cannot swallow it, and DSPy's JSON-adapter fallback, which catches parse errors only, never
sees it. Replayed answers add no usage: batch mode counts each answered request once, at the batch
price, from the responses themselves.

A replayed call already answered need not be formatted again (`tasks.lm.replay_memo`): its adapter
hands over a `KnownRequest` (the key alone) instead of the messages, and each key a call asks for is
noted in the `CALLS` collectors of the adapter calls around it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import dspy

from tasks.lm.batch_api import chat_body

__all__ = [
    "CALLS",
    "SKIP_FORMAT",
    "Answer",
    "KnownRequest",
    "NeedsAnswer",
    "ReplayLM",
    "ResponseStore",
    "error_for",
    "request_key",
]

#: The request keys asked for inside each adapter call in progress (innermost last): ReplayLM adds
#: every key it looks up to each.
CALLS: ContextVar[tuple[list[str], ...]] = ContextVar("dspex_replay_calls", default=())
#: (adapter, request key): that adapter's next ``format`` returns a `KnownRequest` of the key.
SKIP_FORMAT: ContextVar[tuple[Any, str] | None] = ContextVar("dspex_replay_skip_format", default=None)


class KnownRequest(list[Any]):
    """What an adapter's ``format`` gives instead of messages when the request is already known and
    answered (an empty list: nothing reads it but `ReplayLM`, which answers by ``key``)."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key


class NeedsAnswer(BaseException):
    """The row's program needs an answer the store does not hold yet (it waits for the next round)."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(key)


def request_key(body: dict[str, Any], rollout_id: Any = None) -> str:
    """A stable key of one request: its body and DSPy's ``rollout_id`` (which the body never carries,
    but which makes two otherwise identical calls distinct, as in DSPy's own cache)."""
    blob = json.dumps([body, rollout_id], sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:40]


@dataclass(frozen=True)
class Answer:
    """What the provider said to one request.

    Attributes:
        response: The raw chat completion (None when it failed).
        status: The HTTP status of a failed request (0: expired or cancelled in its batch).
        message: The failure's message.
        online: True: ask the LM online for it (``lm_batch_fallback: online``).
    """

    response: dict[str, Any] | None = None
    status: int = 200
    message: str = ""
    online: bool = False

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form (what the batch job's state keeps)."""
        return {
            "response": self.response,
            "status": self.status,
            "message": self.message,
            "online": self.online,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Answer:
        """Read `to_json`'s form back."""
        return cls(
            response=data.get("response"),
            status=int(data.get("status", 200)),
            message=str(data.get("message", "")),
            online=bool(data.get("online", False)),
        )


def error_for(status: int, message: str, model: str) -> Exception:
    """The DSPy LM error an online call would raise for an error answer with this status."""
    from dspy.utils import exceptions as errors

    cls: type[errors.LMError]
    if status == 0:
        cls = errors.LMTimeoutError  # expired or cancelled inside the batch: transient
    elif status == 429:
        cls = errors.LMRateLimitError
    elif status in (401, 403):
        cls = errors.LMAuthError
    elif status in (408, 504):
        cls = errors.LMTimeoutError
    elif status >= 500:
        cls = errors.LMServerError
    else:
        cls = errors.LMInvalidRequestError
    return cls(message, model=model, status=status or None)


class ResponseStore:
    """Answers by request key, and the requests of this round that had none (thread-safe)."""

    def __init__(self, answers: dict[str, Answer] | None = None) -> None:
        self.answers: dict[str, Answer] = dict(answers or {})
        self.pending: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Answer | None:
        """The answer to ``key``, if any."""
        return self.answers.get(key)

    def put(self, key: str, answer: Answer) -> None:
        """Keep an answer."""
        with self._lock:
            self.answers[key] = answer

    def record(self, key: str, body: dict[str, Any]) -> None:
        """Note a request that needs an answer (the same request from many rows is sent once)."""
        with self._lock:
            self.pending.setdefault(key, body)

    def take_pending(self) -> dict[str, dict[str, Any]]:
        """This round's unanswered requests (and forget them)."""
        with self._lock:
            pending, self.pending = self.pending, {}
        return pending


class ReplayLM(dspy.BaseLM):
    """A ``dspy.BaseLM`` that answers from a `ResponseStore` (see the module docstring).

    Args:
        inner: The configured ``dspy.LM`` (its model and options make the request bodies; it is
            called only for answers marked ``online``).
        store: The answers, and where unknown requests are recorded.
    """

    def __init__(self, inner: Any, store: ResponseStore) -> None:
        # Not BaseLM.__init__: the options are the inner LM's own (same request, same adapter choices).
        self.inner = inner
        self.store = store
        self.model = inner.model
        self.model_type = getattr(inner, "model_type", "chat")
        self.cache = False
        self.callbacks: list[Any] = []
        self.num_retries = 0
        self.kwargs = dict(inner.kwargs)
        self.history: list[dict[str, Any]] = []
        self._warned_zero_temp_rollout = True

    @property
    def supports_function_calling(self) -> bool:
        return bool(self.inner.supports_function_calling)

    @property
    def supports_reasoning(self) -> bool:
        return bool(self.inner.supports_reasoning)

    @property
    def supports_response_schema(self) -> bool:
        return bool(self.inner.supports_response_schema)

    @property
    def supported_params(self) -> set[str]:
        return set(self.inner.supported_params)

    def __call__(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        """Answer one call from the store (or raise `NeedsAnswer`)."""
        merged = {**self.kwargs, **kwargs}
        if isinstance(messages, KnownRequest):
            key, body = messages.key, None
        else:
            if messages is None:
                messages = [{"role": "user", "content": prompt}]
            body = chat_body(str(self.model), list(messages), merged)
            key = request_key(body, merged.get("rollout_id"))
        for seen in CALLS.get():
            seen.append(key)
        answer = self.store.get(key)
        if answer is None or (body is None and answer.online):
            if body is None:  # the memo hands over a known request only when its answer is here
                raise RuntimeError(f"batch replay: known request {key} has no answer to replay")
            self.store.record(key, body)
            raise NeedsAnswer(key)
        if answer.online:
            # lm_batch_fallback: online: this request failed in its batch; the LM answers it now
            # (its usage is tracked as an online call), and the answer is kept for later rounds.
            from dspy.clients._deprecation import adapter_message_call  # DSPy's own marker: lazy

            # The adapter marked its (ReplayLM, messages) call as its own; the same call handed on to
            # the inner LM is still the adapter's, so it is marked for the inner LM too (no warning).
            with adapter_message_call(self.inner, messages):
                outputs = self.inner(messages=messages, **kwargs)
            self.store.put(key, Answer(response=_as_response(outputs)))
            return outputs
        if answer.response is None:
            raise error_for(answer.status, answer.message, str(self.model))
        return self._process_completion(answer.response, merged)

    def forward(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> Any:
        """Not used: `__call__` answers (a replay has no provider to forward to)."""
        raise NotImplementedError("ReplayLM answers in __call__")


def _as_response(outputs: list[Any]) -> dict[str, Any]:
    """An online answer kept in chat-completion form, so a later replay parses it the same way."""
    choices = []
    for i, output in enumerate(outputs):
        message = {"role": "assistant", "content": output.get("text") if isinstance(output, dict) else output}
        if isinstance(output, dict):
            message.update({k: v for k, v in output.items() if k in ("reasoning_content", "tool_calls")})
        choices.append({"index": i, "message": message, "finish_reason": "stop"})
    return {"object": "chat.completion", "choices": choices, "usage": {}}
