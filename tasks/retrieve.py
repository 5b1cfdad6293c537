"""Run one retrieve step over a batch of queries: the gpu pool's unit of work.

The corpus a step names is resolved once per process (``demo``, a payload reference, or a dataset
path) and its retriever kept, so every batch after the first reuses the corpus index (which the
retrieval package also caches by content hash, in memory and on disk).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from dspex.exceptions import InputValidationError

__all__ = ["load_corpus", "retrieve_batch", "retriever_for"]

_retrievers: dict[str, Any] = {}
_lock = threading.Lock()


def load_corpus(corpus: str | dict[str, Any]) -> list[dict[str, Any]]:
    """The corpus rows a step names: ``"demo"``, a PayloadRef's JSON, or a dataset path/URL."""
    if corpus == "demo":
        from tasks.retrieval import load_demo_corpus

        return load_demo_corpus()
    from tasks.payloads import Dataset, PayloadRef, read_rows

    if isinstance(corpus, dict):
        return read_rows(PayloadRef.model_validate(corpus))
    return Dataset.from_path(corpus).to_rows()


def retriever_for(step: Any) -> Any:
    """The (process-cached) retriever for a retrieve step."""
    key = json.dumps([step.backend, step.corpus, step.url, step.k], sort_keys=True, default=str)
    with _lock:
        found = _retrievers.get(key)
    if found is not None:
        # A corpus a local caller loaded is cached; a fenced run naming it still passes the fence.
        from tasks.payloads import confine  # deferred as in load_corpus: pyarrow and pandas

        confine.check_step_reads(step)
        return found
    if step.backend == "colbertv2":
        from tasks.retrieval import ColBERTv2Retriever

        retriever: Any = ColBERTv2Retriever(step.url, k=step.k)
    else:
        from tasks.retrieval import EmbeddingRetriever

        retriever = EmbeddingRetriever(load_corpus(step.corpus), k=step.k)
    with _lock:
        return _retrievers.setdefault(key, retriever)


def retrieve_batch(step: Any, queries: list[Any]) -> tuple[list[list[str]], float]:
    """Top-k passage texts for each query, and the per-query time in ms.

    Raises:
        InputValidationError: A query that is not a non-empty string.
    """
    bad = [i for i, q in enumerate(queries) if not isinstance(q, str) or not q.strip()]
    if bad:
        raise InputValidationError(
            f"step {step.name!r}: field {step.retrieve!r} must be a non-empty string in every row; rows {bad[:10]} are not",
            [
                {"field": step.retrieve, "message": "not a non-empty string", "input": repr(queries[i])[:80]}
                for i in bad[:10]
            ],
        )
    start = time.perf_counter()
    retriever = retriever_for(step)
    found = retriever.search(queries, k=step.k)
    elapsed = (time.perf_counter() - start) * 1000
    return [[p.text for p in passages] for passages in found], elapsed / max(len(queries), 1)
