"""Prices of batch requests: the cost map's batch prices, else the online price times a discount.

LiteLLM's model cost map (the copy DSPy bundles, read offline like `tasks.usage`) gives many models
``input_cost_per_token_batches`` / ``output_cost_per_token_batches`` (OpenAI's batch prices: half of
online). A model priced online but without batch prices is charged ``DSPEX_LM_BATCH_DISCOUNT`` (0.5)
times its online price; a model the map does not price at all stays unpriced, never free.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from dspex.settings import OFFLINE_LM_MODEL
from tasks.usage import Usage

__all__ = ["batch_rates", "batch_usage"]


@lru_cache(maxsize=256)
def _entry(model: str) -> dict[str, Any] | None:
    try:
        from dspy.clients.model_metadata import model_info
    except ImportError:  # a DSPy without the bundled map: unpriced rather than guessed
        return None
    provider, _, name = model.partition("/")
    info = model_info(provider, name) if name else model_info("openai", model)
    return dict(info) if info else None


def batch_rates(model: str, discount: float) -> tuple[float, float, str] | None:
    """(input, output) USD per token of a batch request to ``model``, and where they came from
    (``cost map batch price`` or ``online price x <discount>``); None when the model is unpriced."""
    if model == OFFLINE_LM_MODEL:
        return 0.0, 0.0, "offline"
    info = _entry(model)
    if not info:
        return None
    batch_in, batch_out = info.get("input_cost_per_token_batches"), info.get("output_cost_per_token_batches")
    if isinstance(batch_in, int | float) and isinstance(batch_out, int | float):
        return float(batch_in), float(batch_out), "cost map batch price"
    online_in, online_out = info.get("input_cost_per_token"), info.get("output_cost_per_token")
    if isinstance(online_in, int | float) and isinstance(online_out, int | float):
        return float(online_in) * discount, float(online_out) * discount, f"online price x {discount:g}"
    return None


def _tokens(usage: Mapping[str, Any], key: str) -> int:
    value = usage.get(key)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def batch_usage(model: str, responses: Iterable[Mapping[str, Any]], discount: float) -> Usage:
    """The `Usage` of answered batch requests (one entry per raw chat completion), at batch prices.

    Args:
        model: The LiteLLM-style model name (``openai/gpt-4o-mini``).
        responses: The provider's raw chat completions.
        discount: The fallback fraction of the online price.
    """
    prompt = completion = requests = 0
    for response in responses:
        usage = response.get("usage") or {}
        prompt += _tokens(usage, "prompt_tokens")
        completion += _tokens(usage, "completion_tokens")
        requests += 1
    rates = batch_rates(model, discount)
    if rates is None:
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            requests=requests,
            unpriced_models=[model] if requests else [],
        )
    cost = prompt * rates[0] + completion * rates[1] if requests else None
    return Usage(prompt_tokens=prompt, completion_tokens=completion, requests=requests, cost_usd=cost)
