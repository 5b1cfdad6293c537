"""Provider batch APIs: the interface batch mode talks to, and the OpenAI-compatible client.

Batch mode (`flows.batch_api.mode`) talks to a `ProviderBatchClient`: ``check`` (before anything is
sent), ``submit`` (a round's requests, as the OpenAI ``/v1/chat/completions`` bodies `ReplayLM` records,
keyed by request key), ``find`` (the batch an earlier run submitted for a round), ``retrieve``,
``cancel`` and ``results`` (each request's answer as a `ResultLine`: an OpenAI chat completion, or an
HTTP-like status and message). `tasks.lm.batch_clients.client_for` picks the client for an LM: this
module's `BatchClient` for OpenAI-compatible providers, `tasks.lm.anthropic_batch.AnthropicBatchClient`
for Anthropic's Message Batches API.

The OpenAI client:

The calls are OpenAI's (``POST /v1/files`` with ``purpose=batch``, ``POST /v1/batches`` for
``/v1/chat/completions``, ``GET /v1/batches/{id}``, ``GET /v1/files/{id}/content``, ``POST
/v1/batches/{id}/cancel``), which OpenAI-compatible servers (vLLM, the test server) copy. They go
through httpx, which Prefect already depends on: LiteLLM's ``create_batch`` / ``retrieve_batch`` speak
the same endpoints but take seconds to import and read the key from their own settings, while this
client takes the API base and key of the ``dspy.LM`` the run already built, so batch and online calls
reach the same endpoint with the same credentials. The key is sent as a header and never logged.

A provider without the batch endpoints (404/405 on ``GET /v1/batches``) or an LM that is not an
OpenAI-compatible ``dspy.LM`` is an `LMBatchUnsupportedError`, raised by `BatchClient.for_lm` /
`BatchClient.check` before anything is uploaded.

Idempotency: each batch carries its round's key in its metadata (``dspex_key``), so `BatchClient.find`
finds the batch a crashed run submitted by that key.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from dspex.exceptions import LMBatchError, LMBatchUnsupportedError
from dspex.redact import redact

__all__ = [
    "OPENAI_COMPATIBLE",
    "TERMINAL_STATUSES",
    "BatchClient",
    "BatchInfo",
    "ProviderBatchClient",
    "ResultLine",
    "chat_body",
]

#: Batch statuses after which nothing more will be answered.
TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})

#: Providers whose models speak OpenAI's chat and batch APIs (a model without a prefix is OpenAI's).
OPENAI_COMPATIBLE = frozenset({"openai", "hosted_vllm", "text-completion-openai", "azure"})
_OPENAI_BASE = "https://api.openai.com/v1"
# Call-time options that steer DSPy or the client, never the provider's answer.
_CLIENT_ONLY = frozenset(
    {"api_key", "api_base", "base_url", "timeout", "num_retries", "cache", "rollout_id", "headers"}
)


def chat_body(model: str, messages: list[dict[str, Any]], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The ``/v1/chat/completions`` body of one call, as the online path sends it.

    Args:
        model: The LiteLLM-style model name (``openai/gpt-4o-mini``); the provider prefix is dropped.
        messages: The chat messages the adapter formatted.
        kwargs: The LM's and the call's options (temperature, max_tokens, ...).
    """
    name = model.split("/", 1)[1] if "/" in model else model
    options = {k: v for k, v in kwargs.items() if k not in _CLIENT_ONLY and v is not None}
    return {"model": name, "messages": messages, **options}


@dataclass(frozen=True)
class BatchInfo:
    """What the provider says about one batch.

    Attributes:
        id: The provider's batch id.
        status: ``validating``, ``in_progress``, ``finalizing``, ``completed``, ``failed``,
            ``expired``, ``cancelling`` or ``cancelled``.
        output_file_id: The file of answered requests (when there is one).
        error_file_id: The file of failed requests (when there is one).
        metadata: The metadata given at submission (our idempotency key).
        raw: The whole answer.
        input_file_id: The uploaded file of requests (None where requests are sent inline).
    """

    id: str
    status: str
    output_file_id: str | None
    error_file_id: str | None
    metadata: dict[str, Any]
    raw: dict[str, Any]
    input_file_id: str | None = None

    @property
    def done(self) -> bool:
        """Whether the batch reached a terminal status."""
        return self.status in TERMINAL_STATUSES

    @classmethod
    def parse(cls, raw: Any) -> BatchInfo:
        """Read a batch object; anything else is an `LMBatchError`."""
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or "status" not in raw:
            raise LMBatchError(f"the provider answered with something that is not a batch: {str(raw)[:200]}")
        return cls(
            id=raw["id"],
            status=str(raw["status"]),
            output_file_id=raw.get("output_file_id"),
            error_file_id=raw.get("error_file_id"),
            metadata=dict(raw.get("metadata") or {}),
            raw=raw,
            input_file_id=raw.get("input_file_id"),
        )


@dataclass(frozen=True)
class ResultLine:
    """One request's answer in a finished batch, the same shape whichever the provider.

    Attributes:
        key: The request key (the ``custom_id`` it was submitted under).
        response: The answer as an OpenAI chat completion (what `ReplayLM` parses); None when the
            request failed.
        status: 200, or the HTTP status the online call would have got (0: expired or cancelled
            inside the batch, a transient failure).
        message: The failure's message.
    """

    key: str
    response: dict[str, Any] | None = None
    status: int = 200
    message: str = ""


class ProviderBatchClient(Protocol):
    """What batch mode needs of a provider's batch API (see the module docstring)."""

    def check(self) -> None:
        """Raise `LMBatchUnsupportedError` when the endpoint has no batch API (nothing is sent)."""
        ...

    def submit(self, pending: Mapping[str, dict[str, Any]], key: str, window: str) -> BatchInfo:
        """Submit ``pending`` (request key -> OpenAI chat body) as one batch for the round ``key``."""
        ...

    def find(
        self,
        key: str,
        since: str | None = None,
        requests: int | None = None,
        exclude: Collection[str] = (),
    ) -> BatchInfo | None:
        """The batch an earlier run submitted for the round ``key`` (recorded as preparing at
        ``since``, holding ``requests`` requests; none of the batches ``exclude``), if the provider
        shows one."""
        ...

    def retrieve(self, batch_id: str) -> BatchInfo:
        """The batch's current status."""
        ...

    def cancel(self, batch_id: str) -> BatchInfo:
        """Ask the provider to cancel the batch."""
        ...

    def results(self, info: BatchInfo) -> list[ResultLine]:
        """The answers of a finished batch."""
        ...

    def close(self) -> None:
        """Close the HTTP connections."""
        ...


class BatchClient:
    """The batch endpoints of one OpenAI-compatible API base.

    Args:
        api_base: The API base (``http://host:port/v1``).
        api_key: The key (sent as ``Authorization: Bearer``; None: no header).
        timeout_s: Timeout of each HTTP call.
    """

    def __init__(self, api_base: str, api_key: str | None = None, timeout_s: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.api_base = api_base.rstrip("/")
        self._http = httpx.Client(base_url=self.api_base, headers=headers, timeout=timeout_s)

    @classmethod
    def for_lm(cls, lm: Any) -> BatchClient:
        """The client for the endpoint ``lm`` calls online.

        Raises:
            LMBatchUnsupportedError: ``lm`` is not an OpenAI-compatible ``dspy.LM`` (the offline LM, a
                test's DummyLM, a custom client, another provider's API).
        """
        import dspy

        from tasks.lm.offline import is_offline_lm

        if is_offline_lm(lm) or not isinstance(lm, dspy.LM):
            raise LMBatchUnsupportedError(
                f"batch mode needs an OpenAI-compatible dspy.LM; {type(lm).__name__} "
                f"({getattr(lm, 'model', '?')}) has no provider batch API: run this step online"
            )
        model = str(lm.model)
        provider = model.split("/", 1)[0] if "/" in model else "openai"
        if provider not in OPENAI_COMPATIBLE:
            raise LMBatchUnsupportedError(
                f"this client speaks the OpenAI batch API; provider {provider!r} of {model!r} does not "
                f"(OpenAI-compatible providers: {sorted(OPENAI_COMPATIBLE)}; Anthropic's: "
                "tasks.lm.batch_clients.client_for)"
            )
        kwargs = lm.kwargs
        base = kwargs.get("api_base") or kwargs.get("base_url") or _OPENAI_BASE
        timeout = kwargs.get("timeout")
        return cls(str(base), kwargs.get("api_key"), float(timeout) if timeout else 60.0)

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            answer = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise LMBatchError(f"{method} {self.api_base}{path} failed: {type(exc).__name__}: {exc}") from exc
        return answer

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = self._call(method, path, **kwargs)
        if answer.status_code >= 400:
            raise LMBatchError(
                f"{method} {self.api_base}{path} answered {answer.status_code}: {redact(answer.text[:300])}"
            )
        try:
            return answer.json()
        except json.JSONDecodeError as exc:
            raise LMBatchError(f"{method} {self.api_base}{path} answered with non-JSON: {exc}") from exc

    def check(self) -> None:
        """Make sure the endpoint has a batch API, before anything is sent.

        Raises:
            LMBatchUnsupportedError: ``GET /batches`` answered 404, 405 or 501.
            LMBatchError: The endpoint cannot be reached or answered another error.
        """
        answer = self._call("GET", "/batches", params={"limit": 1})
        if answer.status_code in (404, 405, 501):
            raise LMBatchUnsupportedError(
                f"{self.api_base} has no batch API (GET /batches answered {answer.status_code}): run this "
                "step online (unset lm_batch / DSPEX_LM_BATCH_API)"
            )
        if answer.status_code >= 400:
            raise LMBatchError(f"GET {self.api_base}/batches answered {answer.status_code}")

    def upload(self, lines: Iterable[dict[str, Any]], name: str) -> str:
        """Upload a JSONL file of requests (``purpose=batch``); returns its file id."""
        data = b"".join(json.dumps(line, separators=(",", ":")).encode() + b"\n" for line in lines)
        answer = self._json(
            "POST",
            "/files",
            data={"purpose": "batch"},
            files={"file": (name, data, "application/jsonl")},
        )
        if not isinstance(answer, dict) or not isinstance(answer.get("id"), str):
            raise LMBatchError(f"file upload answered without a file id: {str(answer)[:200]}")
        return str(answer["id"])

    def submit(self, pending: Mapping[str, dict[str, Any]], key: str, window: str) -> BatchInfo:
        """Upload ``pending`` as one JSONL file and submit it, with ``key`` as its ``dspex_key``."""
        lines = (  # made one at a time as the file is written (10,000 dicts alive wake the GC)
            {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
            for custom_id, body in pending.items()
        )
        file_id = self.upload(lines, f"{key}.jsonl")
        info = self.create(file_id, {"dspex_key": key}, window)
        return info if info.input_file_id else dataclasses.replace(info, input_file_id=file_id)

    def create(self, input_file_id: str, metadata: dict[str, str], window: str = "24h") -> BatchInfo:
        """Submit the uploaded file as a batch of chat completions."""
        body = {
            "input_file_id": input_file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": window,
            "metadata": metadata,
        }
        return BatchInfo.parse(self._json("POST", "/batches", json=body))

    def retrieve(self, batch_id: str) -> BatchInfo:
        """The batch's current status."""
        return BatchInfo.parse(self._json("GET", f"/batches/{batch_id}"))

    def find(
        self,
        key: str,
        since: str | None = None,
        requests: int | None = None,
        exclude: Collection[str] = (),
        limit: int = 100,
    ) -> BatchInfo | None:
        """The most recent batch submitted with metadata ``dspex_key == key``, if the provider lists one
        (``since``, ``requests`` and ``exclude`` are not needed: the key is in the batch's metadata)."""
        answer = self._json("GET", "/batches", params={"limit": limit})
        for raw in answer.get("data", []) if isinstance(answer, dict) else []:
            if isinstance(raw, dict) and (raw.get("metadata") or {}).get("dspex_key") == key:
                return BatchInfo.parse(raw)
        return None

    def cancel(self, batch_id: str) -> BatchInfo:
        """Ask the provider to cancel the batch."""
        return BatchInfo.parse(self._json("POST", f"/batches/{batch_id}/cancel"))

    def content(self, file_id: str) -> list[dict[str, Any]]:
        """The lines of a result file (output or error file)."""
        answer = self._call("GET", f"/files/{file_id}/content")
        if answer.status_code >= 400:
            raise LMBatchError(f"GET {self.api_base}/files/{file_id}/content answered {answer.status_code}")
        lines = []
        for text in answer.text.splitlines():
            if text.strip():
                try:
                    lines.append(json.loads(text))
                except json.JSONDecodeError as exc:
                    raise LMBatchError(f"result file {file_id} has a line that is not JSON: {exc}") from exc
        return lines

    def results(self, info: BatchInfo) -> list[ResultLine]:
        """The answers of a finished batch, from its output and error files.

        A line answered 200 with a body is an answer; any other line is a failure with its status
        (an expired or cancelled request has none: 0). A request without a line is left out (batch
        mode counts it as not answered).
        """
        found: list[ResultLine] = []
        for file_id in (info.output_file_id, info.error_file_id):
            for line in self.content(file_id) if file_id else []:
                key = line.get("custom_id")
                if not isinstance(key, str):
                    continue
                response = line.get("response") or {}
                status = int(response.get("status_code") or 0)
                body = response.get("body")
                if line.get("error") is None and status == 200 and isinstance(body, dict):
                    found.append(ResultLine(key, response=body))
                    continue
                error = line.get("error") or (body.get("error") if isinstance(body, dict) else None) or {}
                message = str(error.get("message") or error) if isinstance(error, dict) else str(error)
                found.append(ResultLine(key, status=status if status >= 400 else 0, message=message))
        return found
