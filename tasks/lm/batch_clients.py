"""Which provider batch client an LM gets (`client_for`): OpenAI-compatible, or Anthropic's Message Batches.

`flows.batch_api.mode` asks for the client of the run's LM here and talks to it through
`tasks.lm.batch_api.ProviderBatchClient` only, so a round is the same whichever the provider.
"""

from __future__ import annotations

from typing import Any

from dspex.exceptions import LMBatchUnsupportedError
from tasks.lm.anthropic_batch import AnthropicBatchClient
from tasks.lm.batch_api import OPENAI_COMPATIBLE, BatchClient, ProviderBatchClient

__all__ = ["ANTHROPIC_PROVIDERS", "client_for", "provider_of"]

#: Providers whose models speak Anthropic's Messages and Message Batches APIs.
ANTHROPIC_PROVIDERS = frozenset({"anthropic"})


def provider_of(model: str) -> str:
    """The provider prefix of a LiteLLM-style model name (none: ``openai``)."""
    return model.split("/", 1)[0] if "/" in model else "openai"


def client_for(lm: Any) -> ProviderBatchClient:
    """The batch client for the endpoint ``lm`` calls online.

    Raises:
        LMBatchUnsupportedError: ``lm`` is not a ``dspy.LM`` of a provider with a batch API (the
            offline LM, a test's DummyLM, a custom client, another provider's API), or its online
            calls could not be reproduced in a batch (nothing was sent).
    """
    import dspy

    from tasks.lm.offline import is_offline_lm

    if is_offline_lm(lm) or not isinstance(lm, dspy.LM):
        raise LMBatchUnsupportedError(
            f"batch mode needs a dspy.LM of an OpenAI-compatible or Anthropic provider; {type(lm).__name__} "
            f"({getattr(lm, 'model', '?')}) has no provider batch API: run this step online"
        )
    provider = provider_of(str(lm.model))
    if provider in ANTHROPIC_PROVIDERS:
        return AnthropicBatchClient.for_lm(lm)
    if provider in OPENAI_COMPATIBLE:
        return BatchClient.for_lm(lm)
    supported = sorted(OPENAI_COMPATIBLE | ANTHROPIC_PROVIDERS)
    raise LMBatchUnsupportedError(
        f"batch mode speaks the OpenAI batch API and Anthropic's Message Batches; provider {provider!r} of "
        f"{lm.model!r} is neither (supported providers: {supported}): run this step online"
    )
