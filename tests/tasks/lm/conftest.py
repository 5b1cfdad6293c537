"""Fixtures for the LM tests: the loopback OpenAI-compatible server, and no network metadata refresh."""

from __future__ import annotations

import pytest
from support.fixtures import openai_server  # noqa: F401  (the fixture, re-exported for these tests)


@pytest.fixture(autouse=True)
def _local_model_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    # DSPy refreshes its model-metadata snapshot over the network unless told to use the bundled one.
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "true")
