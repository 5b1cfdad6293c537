"""The bundled offline LM: an extractive, deterministic engine on DSPy 3.4's engine protocol.

``dspy.LM(OFFLINE_LM_MODEL, engine=OfflineExtractiveEngine())`` gives a real ``dspy.LM`` (history,
callbacks, usage tracking and adapters all work as with a hosted model) whose one-attempt engine
answers from the prompt's own context instead of calling a model. It implements the canonical
contract of ``dspy.clients.engines.base.Engine`` (``complete(Request) -> Response``, ``stream``,
``close``), not the ``BaseLM.forward`` plugin interface DSPy 3.4 deprecates.

It is honest about what it is: its model name is ``dspex/offline-extractive``, its ``reasoning``
fields say that no language model was called, and `tasks.lm.describe_lm` reports ``offline=True``.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from dspy.clients.engines.base import validate_request
from dspy.clients.lm import LM
from dspy.lm15 import Message, Request, Response, TextPart, Usage, response_to_events

from dspex.settings import OFFLINE_LM_MODEL
from tasks.lm.prompt import parse_prompt, render_outputs
from tasks.lm.responder import fill_outputs, plain_reply

if TYPE_CHECKING:
    # The type DSPy's own Engine protocol names (dspy.clients.engines.base); dspy.lm15 does not export it.
    from dspy._vendor.lm15.types import StreamEvent

__all__ = [
    "AsyncOfflineExtractiveEngine",
    "OfflineExtractiveEngine",
    "build_offline_lm",
    "is_offline_lm",
    "respond",
]


def respond(system: str | None, messages: Sequence[tuple[str, str]]) -> str:
    """The offline LM's reply to an adapter-rendered prompt, as text.

    Pure and deterministic: the same prompt always gives the same reply. The loopback test server
    uses it too, so a "real" HTTP model answers exactly like the offline one.

    Args:
        system: The system message text, if any.
        messages: ``(role, text)`` pairs in conversation order.
    """
    parsed = parse_prompt(system, messages)
    if parsed.format == "plain":
        return plain_reply(parsed.text)
    return render_outputs(parsed.format, parsed.outputs, fill_outputs(parsed))


class OfflineExtractiveEngine:
    """A synchronous DSPy engine that answers extractively from the prompt (no network, no model).

    Token usage is reported as whitespace-separated word counts of the prompt and the reply: there is
    no tokenizer behind this engine, and words are the honest unit of what it read and wrote.

    Attributes:
        supports_function_calling: False: ReAct is driven through the adapter's text fields.
        supports_reasoning: False: reasoning is a text field, not a native reasoning channel.
        supports_response_schema: False: JSON is written as text (JSONAdapter's json_object mode).
    """

    supports_function_calling = False
    supports_reasoning = False
    supports_response_schema = False

    def complete(self, request: Request) -> Response:
        """Answer one canonical request.

        Args:
            request: The request DSPy's adapter built.

        Returns:
            A finished assistant response with word-count usage.
        """
        validate_request(request)
        system = _system_text(request.system)
        messages = [(m.role, _message_text(m)) for m in request.messages]
        reply = respond(system, messages)
        read = _words(system) + sum(_words(text) for _, text in messages)
        digest = hashlib.blake2b(f"{system}\x00{messages!r}".encode(), digest_size=8).hexdigest()
        return Response(
            id=f"offline-{digest}",
            model=request.model,
            message=Message.assistant(TextPart(reply)),
            finish_reason="stop",
            usage=Usage(input_tokens=read, output_tokens=_words(reply)),
        )

    def stream(self, request: Request) -> Iterator[StreamEvent]:
        """Stream the same response as `complete` (start, one text delta, end)."""
        yield from response_to_events(self.complete(request))

    def close(self) -> None:
        """Nothing to release: the engine holds no connection."""

    def dump_state(self) -> dict[str, Any]:
        """State for ``dspy.LM.dump_state``: the engine has none (and no secret)."""
        return {}

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> OfflineExtractiveEngine:
        """Rebuild the engine from `dump_state` output."""
        return cls()


class AsyncOfflineExtractiveEngine:
    """The async counterpart DSPy uses for ``acall``/``aforward``; same answers as the sync engine."""

    supports_function_calling = False
    supports_reasoning = False
    supports_response_schema = False

    def __init__(self, sync: OfflineExtractiveEngine | None = None) -> None:
        self._sync = sync or OfflineExtractiveEngine()

    async def complete(self, request: Request) -> Response:
        """Answer one canonical request (CPU-only and fast, so no thread hop)."""
        return self._sync.complete(request)

    async def stream(self, request: Request) -> AsyncIterator[StreamEvent]:
        """Stream the same response as `complete`."""
        for event in self._sync.stream(request):
            yield event

    async def aclose(self) -> None:
        """Nothing to release."""

    def dump_state(self) -> dict[str, Any]:
        """State for ``dspy.LM.dump_state``: none."""
        return {}

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> AsyncOfflineExtractiveEngine:
        """Rebuild the engine from `dump_state` output."""
        return cls()


def build_offline_lm(
    *, temperature: float | None = None, max_tokens: int | None = None, callbacks: list[Any] | None = None
) -> LM:
    """A ``dspy.LM`` backed by the offline extractive engine.

    DSPy's response cache is off: answering takes microseconds, less than a disk-cache lookup, and
    it keeps worker processes from contending for the cache's lock. Retries are off: the engine
    cannot fail transiently.

    Args:
        temperature: Recorded on the LM for parity with remote models; the engine is deterministic.
        max_tokens: Recorded likewise; replies are short extracts.
        callbacks: DSPy callbacks to attach.
    """
    sync = OfflineExtractiveEngine()
    return LM(
        OFFLINE_LM_MODEL,
        temperature=temperature,
        max_tokens=max_tokens,
        cache=False,
        num_retries=0,
        callbacks=callbacks,
        engine=sync,
        async_engine=AsyncOfflineExtractiveEngine(sync),
    )


def is_offline_lm(lm: object) -> bool:
    """Whether ``lm`` is served by the offline extractive engine."""
    return isinstance(getattr(lm, "engine", None), OfflineExtractiveEngine)


def _system_text(system: object) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    return "".join(getattr(part, "text", "") or "" for part in system)  # type: ignore[attr-defined]


def _message_text(message: Message) -> str:
    return "".join(part.text for part in message.parts if isinstance(part, TextPart))


def _words(text: str) -> int:
    return len(text.split())
