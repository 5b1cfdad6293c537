"""A scripted LM whose right setting is known: it answers correctly only with a given ``k`` and reasoner.

A real ``dspy.LM`` on DSPy's engine protocol (history, usage tracking and adapters work as with a
hosted model). It reads the prompt the ChatAdapter built:

* the question ``q<i>`` (the gold answer is ``a<i>``);
* ``k=<n>`` anywhere in the instructions (a spec puts ``Use k=${k} hints.`` there);
* whether the module reasons (``ChainOfThought`` asks for a ``reasoning`` field).

Quality (the fraction of rows answered right) is ``max(0, top - 0.25 * |k - best_k|)`` with ``top``
1.0 when reasoning and ``predict_top`` otherwise; which rows are right is deterministic. Every call
costs ``input_tokens`` in and ``cot_tokens`` or ``predict_tokens`` out, reported as usage, so tune and
select can weigh quality against cost. Used by tests/flows/test_tune.py, test_select.py and
benchmarks/tune.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from dspy.clients.engines.base import validate_request
from dspy.clients.lm import LM
from dspy.lm15 import Message, Request, Response, TextPart, Usage, response_to_events

__all__ = ["ScriptedEngine", "quality", "scripted_lm"]

_Q = re.compile(r"\bq(\d+)\b")
_K = re.compile(r"\bk=(\d+)")


def quality(k: int | None, reasoning: bool, *, best_k: int = 7, predict_top: float = 0.6) -> float:
    """The fraction of rows the scripted LM answers right with this ``k`` and reasoner."""
    top = 1.0 if reasoning else predict_top
    distance = abs((k if k is not None else 0) - best_k)
    return max(0.0, top - 0.25 * distance)


class ScriptedEngine:
    """The engine: deterministic answers and token costs (see the module docstring)."""

    supports_function_calling = False
    supports_reasoning = False
    supports_response_schema = False

    def __init__(
        self,
        *,
        best_k: int = 7,
        predict_top: float = 0.6,
        input_tokens: int = 50,
        predict_tokens: int = 50,
        cot_tokens: int = 550,
        latency_s: float = 0.0,
    ) -> None:
        self.best_k, self.predict_top = best_k, predict_top
        self.input_tokens, self.predict_tokens, self.cot_tokens = input_tokens, predict_tokens, cot_tokens
        self.latency_s = latency_s

    def answer(self, system: str, user: str) -> tuple[str, bool]:
        """The reply text and whether the module reasons."""
        reasoning = "[[ ## reasoning ## ]]" in system
        k_match = _K.search(system)
        q_match = _Q.search(user)
        i = int(q_match.group(1)) if q_match else 0
        share = quality(
            int(k_match.group(1)) if k_match else None,
            reasoning,
            best_k=self.best_k,
            predict_top=self.predict_top,
        )
        right = ((i * 7) % 20) / 20 < share - 1e-9  # exactly share x 20 of every 20 rows
        answer = f"a{i}" if right else f"wrong{i}"
        parts = []
        if reasoning:
            parts.append("[[ ## reasoning ## ]]\nscripted reasoning")
        parts.append(f"[[ ## answer ## ]]\n{answer}")
        parts.append("[[ ## completed ## ]]")
        return "\n\n".join(parts), reasoning

    def complete(self, request: Request) -> Response:
        """Answer one request."""
        validate_request(request)
        system = _text(request.system)
        user = "\n".join(_message_text(m) for m in request.messages)
        reply, reasoning = self.answer(system, user)
        if self.latency_s:
            time.sleep(self.latency_s)
        return Response(
            id=f"scripted-{abs(hash((system, user))) % 10**12}",
            model=request.model,
            message=Message.assistant(TextPart(reply)),
            finish_reason="stop",
            usage=Usage(
                input_tokens=self.input_tokens,
                output_tokens=self.cot_tokens if reasoning else self.predict_tokens,
            ),
        )

    def stream(self, request: Request) -> Iterator[Any]:
        """The same response as a stream of events."""
        yield from response_to_events(self.complete(request))

    def close(self) -> None:
        """Nothing to release."""


class _AsyncScripted:
    supports_function_calling = False
    supports_reasoning = False
    supports_response_schema = False

    def __init__(self, sync: ScriptedEngine) -> None:
        self._sync = sync

    async def complete(self, request: Request) -> Response:
        return self._sync.complete(request)

    async def stream(self, request: Request) -> AsyncIterator[Any]:
        for event in self._sync.stream(request):
            yield event

    async def aclose(self) -> None:
        return None


def scripted_lm(**options: Any) -> LM:
    """A ``dspy.LM`` on a `ScriptedEngine` (options as the engine's); no cache, no retries."""
    engine = ScriptedEngine(**options)
    return LM(
        "scripted/knob-lm",
        cache=False,
        num_retries=0,
        engine=engine,
        async_engine=_AsyncScripted(engine),
    )


def _text(system: object) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    return "".join(getattr(part, "text", "") or "" for part in system)  # type: ignore[attr-defined]


def _message_text(message: Message) -> str:
    return "".join(part.text for part in message.parts if isinstance(part, TextPart))
