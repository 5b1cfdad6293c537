"""Corpus indexes: a corpus's embedding matrix, built once and cached by content hash.

`build_index` looks in three places before it encodes anything: an in-process LRU of recent indexes,
then a ``.npy`` file of the embedding matrix under ``<DSPEX_HOME>/indexes/`` (written atomically,
read with ``allow_pickle=False``), and only then the embedder. Search is exact cosine top-k in numpy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dspex.exceptions import RetrievalError
from dspex.private import make_private_dirs
from dspex.settings import get_settings
from tasks.retrieval.embedder import TextEncoder
from tasks.retrieval.inputs import Corpus, check_k

__all__ = ["CorpusIndex", "IndexCacheStats", "build_index", "clear_index_cache", "index_cache_stats"]

logger = logging.getLogger(__name__)

# Scores of one query chunk are (queries x passages) float32; chunking bounds that to ~64 MB.
_SCORE_BUDGET_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, eq=False)
class CorpusIndex:
    """A corpus and its embedding matrix, ready for exact cosine search.

    Attributes:
        corpus: The indexed corpus.
        embeddings: ``(len(corpus), dim)`` float32 unit rows, read-only.
        model_id: The model that made the embeddings.
        key: The cache key: a hash of the corpus's content and the model id.
    """

    corpus: Corpus
    embeddings: np.ndarray
    model_id: str
    key: str

    def search(self, query_embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k by cosine similarity (a dot product of unit vectors).

        Args:
            query_embeddings: ``(q, dim)`` unit rows from the same model.
            k: Passages per query; more than the corpus holds gives the whole corpus.

        Returns:
            ``(indices, scores)``, both ``(q, min(k, len(corpus)))``, best first; equal scores are
            ordered by corpus position.

        Raises:
            RetrievalError: ``k < 1``, or query embeddings of the wrong shape.
        """
        check_k(k)
        queries = np.asarray(query_embeddings, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.embeddings.shape[1]:
            raise RetrievalError(
                f"query embeddings must have shape (q, {self.embeddings.shape[1]}), got {queries.shape}"
            )
        n = self.embeddings.shape[0]
        top = min(k, n)
        indices = np.empty((queries.shape[0], top), dtype=np.int64)
        scores = np.empty((queries.shape[0], top), dtype=np.float32)
        chunk = max(1, _SCORE_BUDGET_BYTES // (4 * n))
        for start in range(0, queries.shape[0], chunk):
            block = queries[start : start + chunk] @ self.embeddings.T
            if top < n:
                candidates = np.argpartition(-block, top - 1, axis=1)[:, :top]
                # Sorting candidates by position first makes the stable sort below break ties by
                # corpus position, so results do not depend on argpartition's internal order.
                candidates.sort(axis=1)
            else:
                candidates = np.broadcast_to(np.arange(n), block.shape).copy()
            candidate_scores = np.take_along_axis(block, candidates, axis=1)
            order = np.argsort(-candidate_scores, axis=1, kind="stable")
            indices[start : start + chunk] = np.take_along_axis(candidates, order, axis=1)
            scores[start : start + chunk] = np.take_along_axis(candidate_scores, order, axis=1)
        return indices, scores


@dataclass(frozen=True)
class IndexCacheStats:
    """Counters of `build_index`'s cache, for tests and logs.

    Attributes:
        memory_hits: Indexes served from the in-process LRU.
        disk_hits: Embedding matrices read from ``<home>/indexes``.
        builds: Corpora that had to be encoded.
        size: Indexes held in memory now.
    """

    memory_hits: int
    disk_hits: int
    builds: int
    size: int


class _IndexCache:
    """The in-process LRU, plus per-key locks so one corpus is never encoded twice at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: OrderedDict[str, CorpusIndex] = OrderedDict()
        self.key_locks: dict[str, threading.Lock] = {}
        self.memory_hits = 0
        self.disk_hits = 0
        self.builds = 0

    def get(self, key: str) -> CorpusIndex | None:
        with self.lock:
            index = self.entries.get(key)
            if index is not None:
                self.entries.move_to_end(key)
                self.memory_hits += 1
            return index

    def put(self, index: CorpusIndex, capacity: int) -> None:
        with self.lock:
            if capacity <= 0:
                return
            self.entries[index.key] = index
            self.entries.move_to_end(index.key)
            while len(self.entries) > capacity:
                self.entries.popitem(last=False)

    def key_lock(self, key: str) -> threading.Lock:
        with self.lock:
            return self.key_locks.setdefault(key, threading.Lock())


_cache = _IndexCache()


def _index_key(corpus: Corpus, model_id: str) -> str:
    return hashlib.sha256(f"{model_id}\0{corpus.content_hash}".encode()).hexdigest()[:32]


def _cache_path(key: str) -> Path:
    return (get_settings().home / "indexes" / f"{key}.npy").resolve()


def _read_matrix(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The cached matrix at ``path``, or None (logged) when it is missing, corrupt or the wrong shape."""
    if not path.is_file():
        return None
    try:
        matrix = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        logger.warning("ignoring unreadable index cache file %s (%s); re-encoding", path, error)
        return None
    if matrix.dtype != np.float32 or matrix.shape != shape:
        logger.warning(
            "ignoring index cache file %s: %s %s where %s float32 was expected; re-encoding",
            path,
            matrix.shape,
            matrix.dtype,
            shape,
        )
        return None
    return matrix


def _write_matrix(path: Path, matrix: np.ndarray) -> None:
    """Write ``matrix`` to ``path`` atomically; a failure is logged, never fatal (the index still works)."""
    tmp_name: str | None = None
    try:
        make_private_dirs(path.parent)
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp", delete=False
        ) as f:
            tmp_name = f.name
            np.save(f, matrix, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        # NamedTemporaryFile creates it 0600: owner-only like everything under DSPEX_HOME (issue 25);
        # workers sharing the home run as its owner.
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as error:
        logger.warning(
            "could not write index cache file %s (%s); the index is kept in memory only", path, error
        )
    finally:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)


def build_index(corpus: Corpus, embedder: TextEncoder, *, disk_cache: bool | None = None) -> CorpusIndex:
    """The index of ``corpus`` under ``embedder``'s model, encoded only if no cache has it.

    Args:
        corpus: A checked corpus (see `to_corpus`).
        embedder: The model that embeds passages (and, later, queries).
        disk_cache: Whether to read and write ``<DSPEX_HOME>/indexes/<key>.npy``; None reads
            ``DSPEX_RETRIEVAL_DISK_CACHE``.

    Raises:
        RetrievalError: The embedder returned a matrix of the wrong shape.
    """
    key = _index_key(corpus, embedder.model_id)
    index = _cache.get(key)
    if index is not None:
        return index
    settings = get_settings()
    use_disk = settings.retrieval_disk_cache if disk_cache is None else disk_cache
    with _cache.key_lock(key):
        # Another thread may have built it while this one waited for the lock.
        index = _cache.get(key)
        if index is not None:
            return index
        shape = (len(corpus), embedder.dimension)
        path = _cache_path(key)
        matrix = _read_matrix(path, shape) if use_disk else None
        if matrix is not None:
            with _cache.lock:
                _cache.disk_hits += 1
        else:
            matrix = np.ascontiguousarray(embedder.encode(corpus.embedding_texts()), dtype=np.float32)
            if matrix.shape != shape:
                raise RetrievalError(
                    f"the embedder returned shape {matrix.shape} for a corpus of shape {shape}"
                )
            with _cache.lock:
                _cache.builds += 1
            if use_disk:
                _write_matrix(path, matrix)
        matrix.setflags(write=False)
        index = CorpusIndex(corpus=corpus, embeddings=matrix, model_id=embedder.model_id, key=key)
        _cache.put(index, settings.retrieval_index_cache_size)
        with _cache.lock:
            # Later callers find the index in the LRU; the lock has done its job.
            _cache.key_locks.pop(key, None)
    return index


def clear_index_cache() -> None:
    """Empty the in-process index cache and reset its counters (the disk cache is kept)."""
    with _cache.lock:
        _cache.entries.clear()
        _cache.key_locks.clear()
        _cache.memory_hits = _cache.disk_hits = _cache.builds = 0


def index_cache_stats() -> IndexCacheStats:
    """The in-process index cache's counters."""
    with _cache.lock:
        return IndexCacheStats(
            memory_hits=_cache.memory_hits,
            disk_hits=_cache.disk_hits,
            builds=_cache.builds,
            size=len(_cache.entries),
        )
