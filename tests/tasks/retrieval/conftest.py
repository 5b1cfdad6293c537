"""Fixtures for the retrieval tests: the real offline model (loaded once), a fast fake encoder."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from tasks.retrieval import clear_index_cache
from tasks.retrieval.embedder import Embedder, get_embedder


@pytest.fixture(autouse=True)
def _fresh_index_cache() -> Iterator[None]:
    # Each test sees an empty in-process index cache (its DSPEX_HOME, hence its disk cache, is fresh too).
    clear_index_cache()
    yield
    clear_index_cache()


@pytest.fixture(scope="session")
def minilm() -> Embedder:
    """The real offline MiniLM on CPU, loaded once for the session."""
    return get_embedder("cpu")


class CountingEncoder:
    """Wraps an encoder and counts the texts and calls it encodes."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: list[int] = []

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    def encode(self, texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        self.calls.append(len(texts))
        return self.inner.encode(texts, batch_size=batch_size)


class HashEncoder:
    """A deterministic fake encoder: unit vectors seeded by each text's hash (no model, instant)."""

    model_id = "test/hash-encoder"
    dimension = 8

    def encode(self, texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            rows.append(np.random.default_rng(seed).standard_normal(self.dimension))
        matrix = np.asarray(rows, dtype=np.float32).reshape(len(rows), self.dimension)
        return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


@pytest.fixture
def counting_minilm(minilm: Embedder) -> CountingEncoder:
    return CountingEncoder(minilm)


@pytest.fixture
def hash_encoder() -> CountingEncoder:
    return CountingEncoder(HashEncoder())
