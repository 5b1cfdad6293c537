"""A client for Anthropic's Message Batches API, sending each request as the online call sends it.

The calls are Anthropic's: ``POST {messages}/batches`` with the requests inline (``{"requests":
[{"custom_id", "params"}]}``, no file upload), ``GET {messages}/batches/{id}`` (``processing_status``
``in_progress``, ``canceling`` or ``ended``), ``POST {messages}/batches/{id}/cancel``, ``GET
{messages}/batches`` (newest first, paged by ``after_id``) and the JSONL results at the batch's
``results_url``, where ``{messages}`` is the URL the LM's online calls are posted to.

Same requests, same answers as online. A ``dspy.LM`` named ``anthropic/...`` calls Anthropic online
through DSPy's native engine (the vendored lm15 ``AnthropicLM``; LiteLLM is only its fallback). So
each request is built by that engine, from the ``/v1/chat/completions`` body `ReplayLM` records: the
``params`` are the JSON the online call posts for the same messages and options (system prompt,
``max_tokens`` default, options mapped as online), and the URL and headers (``x-api-key`` or the
bearer the key calls for, ``anthropic-version``, ``anthropic-beta``) are the online call's, derived
from the LM's ``api_base`` / ``api_key`` (else ``ANTHROPIC_API_KEY``, and
``https://api.anthropic.com/v1``) exactly as online: a loopback ``api_base`` serves both. A succeeded
``message`` is parsed by the same engine (``parse_response``, as lm15's own batch results are) and
turned into DSPy's outputs by DSPy's own ``CallResult.native``, then kept as an OpenAI chat completion
(text, ``reasoning_content``, ``tool_calls``, citations; usage with prompt/completion tokens as online
counts them) that `ReplayLM` parses into the same outputs. An LM whose online calls DSPy sends through
LiteLLM instead (``engine="litellm"``, ``ANTHROPIC_API_BASE`` in the environment, client settings the
native engine does not carry) is an `LMBatchUnsupportedError` before anything is sent: its batch
requests would not be what it sends online.

Errors: an ``errored`` result keeps the HTTP status of its error type (``invalid_request_error`` 400,
``authentication_error`` 401, ``billing_error`` 402, ``permission_error`` 403, ``not_found_error``
404, ``request_too_large`` 413, ``rate_limit_error`` 429, ``api_error`` 500, ``timeout_error`` 504,
``overloaded_error`` 529; an unknown type 500), so `tasks.lm.replay.error_for` raises the DSPy error
the online call raises and the retry policy treats it the same; ``canceled`` and ``expired`` are 0
(transient).

Idempotency: a Message Batch carries no metadata, so the round's key cannot travel with it. Batch mode
records each round as *preparing*, with its time and request count, before submitting (`find`'s
``since`` and ``requests``). Only a run that finds a round an earlier run left *preparing* (it stopped
between recording and submitting, or between submitting and recording the batch id) asks `find`,
which lists the batches created since then (``ADOPT_CLOCK_SKEW_S`` earlier, for the provider's
clock) with the same number of requests, that no one has cancelled and that are not the job's earlier
rounds': one is adopted, none means nothing was submitted (the round is submitted now), and more than
one is an `LMBatchAmbiguousError` naming them (cancel the ones this run did not submit, then run
again). Left to chance: a batch of the same size that another job or client on the same key created
in that window, while this round's own submission never arrived, would be adopted; its answers match
none of this round's requests, which are then sent again in the next round (as unanswered requests
are, each counting one attempt), so no row ever takes another's answer.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from dspex.exceptions import LMBatchAmbiguousError, LMBatchError, LMBatchUnsupportedError
from dspex.redact import redact
from tasks.lm.batch_api import BatchInfo, ResultLine

__all__ = [
    "ADOPT_CLOCK_SKEW_S",
    "ERROR_STATUS",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_REQUESTS",
    "AnthropicBatchClient",
]

#: The HTTP status of each Anthropic error type (what the online call would have been answered).
ERROR_STATUS: Mapping[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
#: Seconds before a round's *preparing* time that a batch may show as created and still be adopted.
ADOPT_CLOCK_SKEW_S = 300.0
#: Anthropic's limits on one Message Batch.
MAX_BATCH_REQUESTS = 100_000
MAX_BATCH_BYTES = 256 * 1024 * 1024

_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_LIST_PAGE = 100
_LIST_PAGES = 20  # at most 2,000 batches are looked through for a crashed round's batch
_PROBE = [{"role": "user", "content": "-"}]  # a call only built, never sent: the online URL and headers
# Options of a recorded body that are not the call's own (chat_body puts model and messages in it).
_NOT_OPTIONS = frozenset({"model", "messages"})


class _OnlineEngine:
    """DSPy's own online path for one Anthropic ``dspy.LM``: the engine it selects for a call, the
    request it would send, and how it reads the answer."""

    def __init__(self, lm: Any) -> None:
        self.lm = lm
        self.model = str(lm.model)
        self.provider: Any = None  # the lm15 AnthropicLM the online calls go through

    def build(self, messages: list[dict[str, Any]], options: Mapping[str, Any]) -> Any:
        """The transport request (method, URL, headers, JSON body) the online call would send.

        Raises:
            LMBatchUnsupportedError: DSPy sends this call through LiteLLM, or refuses it.
        """
        from dspy.clients.engines.lm15_engine import LM15Engine
        from dspy.clients.execution import _engine, prepare
        from dspy.utils.exceptions import LMError

        try:
            call = prepare(self.lm, None, messages, dict(options))
            backend, canonical, provider = _engine(self.lm, call, False)
        except (LMError, TypeError, ValueError) as exc:
            raise LMBatchUnsupportedError(
                f"{self.model}: DSPy would not send this call ({type(exc).__name__}: {exc}); run this step online"
            ) from exc
        if not isinstance(backend, LM15Engine) or canonical is None or provider != "anthropic":
            raise LMBatchUnsupportedError(
                f"{self.model}: DSPy sends this LM's calls through LiteLLM ({type(backend).__name__}: "
                "engine='litellm', ANTHROPIC_API_BASE or ANTHROPIC_BASE_URL set, or client settings other "
                "than api_key, api_base and timeout), not its native Anthropic engine, so batch requests "
                "would not be the ones it sends online: use those settings only, or run this step online"
            )
        self.provider, routed = backend._target(canonical)
        return self.provider.build_request(routed, stream=False)

    def params(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The Messages API ``params`` of one recorded ``/v1/chat/completions`` body."""
        options = {k: v for k, v in body.items() if k not in _NOT_OPTIONS}
        request = self.build(list(body.get("messages") or []), options)
        params = json.loads(request.body)
        params.pop("stream", None)  # a batch's requests are never streamed
        return dict(params)

    def answer(self, message: dict[str, Any]) -> dict[str, Any]:
        """A succeeded result's ``message`` as the OpenAI chat completion `ReplayLM` parses: the
        outputs and usage DSPy's online path makes of the same answer."""
        from dspy._vendor.lm15.providers.base import batch_entry_http, batch_entry_request
        from dspy.clients.call_result import CallResult
        from dspy.clients.legacy_outputs import plain

        if self.provider is None:
            self.build(_PROBE, {})
        response = self.provider.parse_response(
            batch_entry_request(message.get("model") or self.model.split("/", 1)[-1]),
            batch_entry_http(message),
        )
        result = CallResult.native(response, model_type=self.lm.model_type, provider="anthropic")
        finish = {"length": "length", "tool_call": "tool_calls", "content_filter": "content_filter"}
        choices = []
        for index, output in enumerate(result.outputs):
            output = plain(output) if isinstance(output, dict) else {"text": output}
            reply: dict[str, Any] = {"role": "assistant", "content": output.get("text")}
            if output.get("reasoning_content"):
                reply["reasoning_content"] = output["reasoning_content"]
            if output.get("tool_calls"):
                reply["tool_calls"] = output["tool_calls"]
            if output.get("citations"):
                reply["provider_specific_fields"] = {"citations": output["citations"]}
            reason = finish.get(str(response.finish_reason), "stop")
            choices.append({"index": index, "message": reply, "finish_reason": reason})
        return {
            "id": response.id,
            "object": "chat.completion",
            "model": response.model,
            "choices": choices,
            "usage": plain(result.usage),
        }


class AnthropicBatchClient:
    """Anthropic's Message Batches endpoints for one ``anthropic/...`` ``dspy.LM``.

    Args:
        lm: The LM (its online calls' URL, headers and request building are used).
        timeout_s: Timeout of each HTTP call.

    Raises:
        LMBatchUnsupportedError: The LM's online calls do not go through DSPy's native Anthropic
            engine (see the module docstring).
    """

    def __init__(self, lm: Any, timeout_s: float = 60.0) -> None:
        self.engine = _OnlineEngine(lm)
        probe = self.engine.build(_PROBE, {})
        self.messages_url = str(probe.url).rstrip("/")
        self.batches_url = f"{self.messages_url}/batches"
        headers = {k: v for k, v in probe.headers if k.lower() != "content-type"}
        self._http = httpx.Client(headers=headers, timeout=timeout_s)

    @classmethod
    def for_lm(cls, lm: Any) -> AnthropicBatchClient:
        """The client for the endpoint ``lm`` calls online (its ``timeout`` for each HTTP call)."""
        timeout = lm.kwargs.get("timeout")
        return cls(lm, float(timeout) if isinstance(timeout, int | float) and timeout else 60.0)

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise LMBatchError(f"{method} {url} failed: {type(exc).__name__}: {exc}") from exc

    def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        answer = self._call(method, url, **kwargs)
        if answer.status_code >= 400:
            raise LMBatchError(f"{method} {url} answered {answer.status_code}: {redact(answer.text[:300])}")
        try:
            return answer.json()
        except json.JSONDecodeError as exc:
            raise LMBatchError(f"{method} {url} answered with non-JSON: {exc}") from exc

    def _info(self, raw: Any) -> BatchInfo:
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or "processing_status" not in raw:
            raise LMBatchError(
                f"the provider answered with something that is not a message batch: {str(raw)[:200]}"
            )
        return BatchInfo(
            id=raw["id"],
            status=_status(raw),
            output_file_id=None,
            error_file_id=None,
            metadata={},
            raw=raw,
        )

    def check(self) -> None:
        """Make sure the endpoint has the Message Batches API, before anything is sent.

        Raises:
            LMBatchUnsupportedError: ``GET .../messages/batches`` answered 404, 405 or 501.
            LMBatchError: The endpoint cannot be reached or answered another error.
        """
        answer = self._call("GET", self.batches_url, params={"limit": 1})
        if answer.status_code in (404, 405, 501):
            raise LMBatchUnsupportedError(
                f"{self.batches_url} has no batch API (GET answered {answer.status_code}): run this step "
                "online (unset lm_batch / DSPEX_LM_BATCH_API)"
            )
        if answer.status_code >= 400:
            raise LMBatchError(
                f"GET {self.batches_url} answered {answer.status_code}: {redact(answer.text[:300])}"
            )

    def requests(self, pending: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """The batch's requests: ``custom_id`` (the request key) and the online call's ``params``.

        Raises:
            LMBatchError: A request key is not a valid ``custom_id`` (``[a-zA-Z0-9_-]{1,64}``).
        """
        built = []
        for key, body in pending.items():
            if not _CUSTOM_ID.fullmatch(key):
                raise LMBatchError(
                    f"request key {key!r} is not a valid Anthropic custom_id ([a-zA-Z0-9_-]{{1,64}})"
                )
            built.append({"custom_id": key, "params": self.engine.params(body)})
        return built

    def submit(self, pending: Mapping[str, dict[str, Any]], key: str, window: str = "24h") -> BatchInfo:
        """Submit ``pending`` (request key -> recorded chat body) as one Message Batch.

        ``key`` is not sent (a Message Batch has no metadata; see `find`), nor ``window``: Anthropic
        answers within 24 hours, or expires the requests left.

        Raises:
            LMBatchError: Too many requests or bytes for one batch, or the provider refused it.
        """
        if len(pending) > MAX_BATCH_REQUESTS:
            raise LMBatchError(f"{len(pending)} requests: a Message Batch holds at most {MAX_BATCH_REQUESTS}")
        data = json.dumps({"requests": self.requests(pending)}, separators=(",", ":")).encode()
        if len(data) > MAX_BATCH_BYTES:
            raise LMBatchError(f"batch of {len(data)} bytes: a Message Batch holds at most {MAX_BATCH_BYTES}")
        headers = {"content-type": "application/json"}
        return self._info(self._json("POST", self.batches_url, content=data, headers=headers))

    def retrieve(self, batch_id: str) -> BatchInfo:
        """The batch's current status."""
        return self._info(self._json("GET", f"{self.batches_url}/{_segment(batch_id)}"))

    def cancel(self, batch_id: str) -> BatchInfo:
        """Ask the provider to cancel the batch (its unanswered requests end ``canceled``)."""
        return self._info(self._json("POST", f"{self.batches_url}/{_segment(batch_id)}/cancel"))

    def find(
        self,
        key: str,
        since: str | None = None,
        requests: int | None = None,
        exclude: Collection[str] = (),
    ) -> BatchInfo | None:
        """The batch a run submitted for round ``key`` before it could record it (module docstring).

        Args:
            key: The round's key (only named in errors: a Message Batch does not carry it).
            since: When the round was recorded as preparing (ISO 8601); None: no time bound.
            requests: How many requests the round holds; None: no batch can be told apart.
            exclude: Batches that are not this round's (the job's earlier rounds').

        Raises:
            LMBatchAmbiguousError: More than one batch fits.
        """
        if requests is None:
            return None
        start = _parse_time(since) - dt.timedelta(seconds=ADOPT_CLOCK_SKEW_S) if since else None
        fits: list[BatchInfo] = []
        excluded = set(exclude)
        after: str | None = None
        for _ in range(_LIST_PAGES):
            params: dict[str, Any] = {"limit": _LIST_PAGE} | ({"after_id": after} if after else {})
            page = self._json("GET", self.batches_url, params=params)
            items = (
                [i for i in (page.get("data") or []) if isinstance(i, dict)] if isinstance(page, dict) else []
            )
            older = False
            for raw in items:
                created = _parse_time(raw.get("created_at")) if raw.get("created_at") else None
                if start is not None and created is not None and created < start:
                    older = True  # newest first: the rest were created before the round
                    continue
                if raw.get("id") in excluded or raw.get("cancel_initiated_at") or _total(raw) != requests:
                    continue
                fits.append(self._info(raw))
            if older or not items or not page.get("has_more"):
                break
            after = str(page.get("last_id") or items[-1].get("id"))
        if len(fits) > 1:
            ids = ", ".join(f.id for f in fits)
            raise LMBatchAmbiguousError(
                f"round {key} was being submitted when its run stopped, and {len(fits)} message batches of "
                f"{requests} requests were created since {since}: {ids}. Anthropic batches carry no "
                "metadata, so which one this run submitted cannot be told: check them in the Anthropic "
                "console (their requests and created_at), cancel the ones this run did not submit "
                "(POST /v1/messages/batches/<id>/cancel; a cancelled batch is never adopted), then run "
                "again",
                batch_ids=[f.id for f in fits],
            )
        return fits[0] if fits else None

    def results(self, info: BatchInfo) -> list[ResultLine]:
        """The answers of an ended batch, read from its ``results_url`` (the documented
        ``.../batches/{id}/results`` when that URL is on another origin: the key goes nowhere else).

        Raises:
            LMBatchError: The results cannot be read.
        """
        url = info.raw.get("results_url")
        if not isinstance(url, str) or _origin(url) != _origin(self.batches_url):
            url = f"{self.batches_url}/{_segment(info.id)}/results"
        answer = self._call("GET", url)
        if answer.status_code >= 400:
            raise LMBatchError(f"GET {url} answered {answer.status_code}: {redact(answer.text[:300])}")
        found = []
        for text in answer.text.splitlines():
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except json.JSONDecodeError as exc:
                raise LMBatchError(f"results of batch {info.id} have a line that is not JSON: {exc}") from exc
            if isinstance(line, dict) and isinstance(line.get("custom_id"), str):
                found.append(self._line(line["custom_id"], line.get("result")))
        return found

    def _line(self, key: str, result: Any) -> ResultLine:
        result = result if isinstance(result, dict) else {}
        kind = result.get("type")
        if kind == "succeeded" and isinstance(result.get("message"), dict):
            try:
                return ResultLine(key, response=self.engine.answer(result["message"]))
            except Exception as exc:  # an answer the online path could not read either
                return ResultLine(key, status=500, message=f"unreadable answer: {type(exc).__name__}: {exc}")
        if kind == "errored":
            error: dict[str, Any] = _mapping(result.get("error"))
            inner = _mapping(error.get("error")) or error
            kind_of = str(inner.get("type") or "api_error")
            message = str(inner.get("message") or kind_of)
            return ResultLine(key, status=ERROR_STATUS.get(kind_of, 500), message=f"{kind_of}: {message}")
        if kind in ("canceled", "expired"):
            return ResultLine(key, status=0, message=f"request {kind} in its message batch")
        return ResultLine(key, status=500, message=f"unrecognized batch result type {kind!r}")


def _status(raw: Mapping[str, Any]) -> str:
    """A Message Batch's status in `tasks.lm.batch_api.BatchInfo` terms: ``in_progress``,
    ``cancelling``, or once ``ended``: ``cancelled`` / ``expired`` when every request was, else
    ``completed`` (each request's outcome is in the results)."""
    status = str(raw.get("processing_status") or "")
    if status == "canceling":
        return "cancelling"
    if status != "ended":
        return "in_progress"
    counts = _mapping(raw.get("request_counts"))
    ended = {k: int(counts.get(k) or 0) for k in ("succeeded", "errored", "canceled", "expired")}
    for kind, name in (("canceled", "cancelled"), ("expired", "expired")):
        if ended[kind] and not sum(v for k, v in ended.items() if k != kind):
            return name
    return "completed"


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _total(raw: Mapping[str, Any]) -> int:
    counts = raw.get("request_counts")
    if not isinstance(counts, dict):
        return -1
    return sum(
        int(v or 0)
        for k, v in counts.items()
        if k in ("processing", "succeeded", "errored", "canceled", "expired")
    )


def _parse_time(value: Any) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as exc:
        raise LMBatchError(f"not an ISO 8601 time: {value!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _segment(batch_id: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", batch_id):
        raise LMBatchError(f"not a message batch id: {batch_id!r}")
    return batch_id
