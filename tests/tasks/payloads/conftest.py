"""Fixtures for payload tests: a fresh local folder and a fresh in-memory fsspec URL per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest


@pytest.fixture
def local_url(tmp_path: Path) -> str:
    """A local payload folder (a plain path, as the default setting gives)."""
    return str(tmp_path / "payloads")


@pytest.fixture
def memory_url() -> Iterator[str]:
    """A unique ``memory://`` folder, removed afterwards."""
    prefix = f"/payload-tests-{uuid.uuid4().hex}"
    yield f"memory://{prefix}"
    store = fsspec.filesystem("memory").store
    for key in [k for k in store if k.startswith(prefix)]:
        del store[key]


@pytest.fixture(params=["local", "memory"])
def base_url(request: pytest.FixtureRequest, local_url: str, memory_url: str) -> str:
    """Both storages the payload code must work on."""
    return local_url if request.param == "local" else memory_url
