"""LM usage of a batch, a step or a run: tokens, requests, and cost in USD.

Counts come from DSPy's own usage tracking (``dspy.track_usage()``): every LM call DSPy makes inside
`track` adds an entry (prompt and completion tokens, by model) — retried attempts included, cache
hits excluded, so the figures are what the provider billed. Cost is priced per entry from LiteLLM's
model cost map, in the copy DSPy bundles (``dspy.clients.model_metadata``, read offline: the
bootstrap sets ``LITELLM_LOCAL_MODEL_COST_MAP=true``), the same prices DSPy puts in an LM's history.
Importing LiteLLM itself is avoided on purpose: it takes seconds per process.

A model the map does not price is never counted as free: its tokens are counted, its name is listed
in ``unpriced_models``, and ``cost_usd`` covers the priced requests only (``None`` when there were
none). The bundled offline LM (`dspex.settings.OFFLINE_LM_MODEL`) runs in-process and bills nothing,
so it is priced at zero.

    with track() as usage:
        prediction = module(question="...")
    usage.value.prompt_tokens
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dspex.settings import OFFLINE_LM_MODEL

__all__ = ["Usage", "UsageBox", "price", "track", "usage_from_tracker"]

logger = logging.getLogger(__name__)


class Usage(BaseModel):
    """Tokens, requests and cost of some LM work; add two with ``+`` or `sum`.

    Attributes:
        prompt_tokens: Tokens sent to the LM.
        completion_tokens: Tokens the LM produced.
        requests: LM calls that reported usage (retries included, cache hits not).
        cost_usd: Cost of the priced requests in USD; None when no request could be priced.
        unpriced_models: Models whose price the cost map does not know (their tokens are counted,
            their cost is not; ``cost_usd`` is then a lower bound).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt_tokens: int = Field(default=0, ge=0, description="Tokens sent to the LM.")
    completion_tokens: int = Field(default=0, ge=0, description="Tokens the LM produced.")
    requests: int = Field(default=0, ge=0, description="LM calls that reported usage (cache hits excluded).")
    cost_usd: float | None = Field(
        default=None, ge=0, description="Cost of the priced requests in USD; None when none was priced."
    )
    unpriced_models: list[str] = Field(
        default_factory=list, description="Models without a known price: cost_usd excludes them."
    )

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost_known(self) -> bool:
        """Whether ``cost_usd`` covers every request (no unpriced model, or no request at all)."""
        return not self.unpriced_models

    def __add__(self, other: object) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        if self.cost_usd is None and other.cost_usd is None:
            cost = None
        else:
            cost = (self.cost_usd or 0.0) + (other.cost_usd or 0.0)
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            requests=self.requests + other.requests,
            cost_usd=cost,
            unpriced_models=sorted(set(self.unpriced_models) | set(other.unpriced_models)),
        )

    def __radd__(self, other: object) -> Usage:
        if other == 0:  # sum() starts from 0
            return self
        return self.__add__(other)

    @classmethod
    def total(cls, items: Iterable[Usage | None]) -> Usage:
        """The sum of ``items`` (None entries skipped; an empty input gives zero usage)."""
        result = cls()
        for item in items:
            if item is not None:
                result = result + item
        return result


def _split_model(model: str) -> tuple[str, str]:
    provider, _, name = model.partition("/")
    return (provider, name) if name else ("openai", model)


@lru_cache(maxsize=256)
def _rates(model: str) -> tuple[float, float] | None:
    """(input, output) USD per token for ``model`` from the cost map, or None when unpriced."""
    if model == OFFLINE_LM_MODEL:
        return 0.0, 0.0
    try:
        from dspy.clients.model_metadata import model_info, rate
    except ImportError:  # a DSPy without the bundled map: say unknown rather than guess
        return None
    provider, name = _split_model(model)
    info = model_info(provider, name)
    prompt_rate = rate(info, "input_cost_per_token") if info else None
    completion_rate = rate(info, "output_cost_per_token") if info else None
    if prompt_rate is None or completion_rate is None:
        return None
    return prompt_rate, completion_rate


def price(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """The USD cost of one usage entry of ``model``, or None when the cost map does not price it.

    Args:
        model: The LiteLLM-style model name DSPy reports (``openai/gpt-4o-mini``).
        prompt_tokens: Input tokens.
        completion_tokens: Output tokens.
    """
    rates = _rates(model)
    if rates is None:
        return None
    return prompt_tokens * rates[0] + completion_tokens * rates[1]


def _count(entry: Mapping[str, Any], key: str) -> int:
    value = entry.get(key)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def usage_from_tracker(usage_data: Mapping[str, Iterable[Mapping[str, Any]]]) -> Usage:
    """Turn a DSPy ``UsageTracker.usage_data`` (model -> usage entries) into a priced `Usage`.

    Args:
        usage_data: The tracker's entries, one per LM call, by model name.
    """
    prompt = completion = requests = 0
    cost: float | None = None
    unpriced: set[str] = set()
    for model, entries in usage_data.items():
        for entry in entries:
            p, c = _count(entry, "prompt_tokens"), _count(entry, "completion_tokens")
            prompt, completion, requests = prompt + p, completion + c, requests + 1
            priced = price(model, p, c)
            if priced is None:
                unpriced.add(model)
            else:
                cost = (cost or 0.0) + priced
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        requests=requests,
        cost_usd=cost,
        unpriced_models=sorted(unpriced),
    )


@dataclass
class UsageBox:
    """Holds the `Usage` of a `track` block once the block has ended.

    Attributes:
        value: The usage (zero until the block ends).
    """

    value: Usage = field(default_factory=Usage)


@contextmanager
def track(box: UsageBox | None = None) -> Iterator[UsageBox]:
    """Track the LM usage of the DSPy calls made in this block (in this thread, or DSPy threads it
    spawns); the box holds the priced `Usage` when the block exits, also on an exception.

    Args:
        box: The box to fill (a new one by default); pass one to read it after a failed block.
    """
    import dspy

    box = box if box is not None else UsageBox()
    with dspy.track_usage() as tracker:
        try:
            yield box
        finally:
            box.value = usage_from_tracker(tracker.usage_data)
