"""Pytest fixtures of the test support package; import them into a ``conftest.py`` to use them.

from support.fixtures import openai_server  # noqa: F401
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .openai_server import FakeOpenAIServer
from .openai_server import openai_server as _running_server

__all__ = ["openai_server"]


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAIServer]:
    """A running loopback OpenAI-compatible server (offline-LM answers, no faults queued)."""
    with _running_server() as server:
        yield server
