"""`EmbeddingRetriever`: exact cosine search over a corpus with the offline MiniLM embedder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dspex.exceptions import RetrievalError
from tasks.retrieval.embedder import TextEncoder, get_embedder
from tasks.retrieval.index import CorpusIndex, build_index
from tasks.retrieval.inputs import Corpus, CorpusInput, check_k, check_queries, to_corpus
from tasks.retrieval.passage import Passage

if TYPE_CHECKING:
    from tasks.retrieval.dspy_retrieve import DSPyRetrieve

__all__ = ["EmbeddingRetriever"]


class EmbeddingRetriever:
    """Top-k passages by embedding similarity, over a corpus indexed once.

    The corpus index is built when the retriever is made, and cached by content hash (in memory and
    under ``<DSPEX_HOME>/indexes``), so a second retriever over the same corpus costs no encoding.
    Queries are encoded in batches. The retriever is immutable and thread-safe.

    It is also a DSPy retrieval model: ``dspy.context(rm=retriever)`` makes ``dspy.Retrieve`` use it;
    `as_dspy` gives a ``dspy.Retrieve`` module bound to it.

    Args:
        corpus: A list of strings, a list of mappings with ``text`` (optional ``title``, ``id``), a
            ``pyarrow.Table`` with those columns, or a `Corpus`.
        k: Default number of passages per query.
        embedder: The text encoder; default: the process's offline MiniLM on
            ``DSPEX_EMBEDDING_DEVICE``.
        disk_cache: Whether to use the on-disk index cache; None reads ``DSPEX_RETRIEVAL_DISK_CACHE``.

    Raises:
        RetrievalError: An empty or malformed corpus, or ``k < 1``.
    """

    def __init__(
        self,
        corpus: CorpusInput,
        *,
        k: int = 3,
        embedder: TextEncoder | None = None,
        disk_cache: bool | None = None,
    ) -> None:
        self._k = check_k(k)
        self._corpus = to_corpus(corpus)
        self._embedder = embedder if embedder is not None else get_embedder()
        self._index = build_index(self._corpus, self._embedder, disk_cache=disk_cache)

    @property
    def k(self) -> int:
        """Default number of passages per query."""
        return self._k

    @property
    def corpus(self) -> Corpus:
        """The checked corpus."""
        return self._corpus

    @property
    def index(self) -> CorpusIndex:
        """The corpus index (embedding matrix and cache key)."""
        return self._index

    @property
    def embedder(self) -> TextEncoder:
        """The text encoder used for passages and queries."""
        return self._embedder

    def search(self, queries: Sequence[str], k: int | None = None) -> list[list[Passage]]:
        """The top ``k`` passages for each query, best first, with queries encoded in batches.

        Args:
            queries: Non-blank query strings.
            k: Passages per query (at most the corpus size); None uses the retriever's default.

        Raises:
            RetrievalError: ``queries`` is not a list of non-blank strings, or ``k < 1``.
        """
        checked = check_queries(queries)
        top = self._k if k is None else check_k(k)
        if not checked:
            return []
        indices, scores = self._index.search(self._embedder.encode(checked), top)
        corpus = self._corpus
        # model_construct: every field comes from the checked corpus, so validating again per
        # passage would only add cost on the batch path.
        return [
            [
                Passage.model_construct(
                    id=corpus.ids[i], title=corpus.titles[i], text=corpus.texts[i], score=float(score)
                )
                for i, score in zip(row_indices.tolist(), row_scores.tolist(), strict=True)
            ]
            for row_indices, row_scores in zip(indices, scores, strict=True)
        ]

    def retrieve(self, query: str, k: int | None = None) -> list[Passage]:
        """The top ``k`` passages for one query, best first.

        Raises:
            RetrievalError: ``query`` is not a non-blank string, or ``k < 1``.
        """
        if not isinstance(query, str):
            raise RetrievalError(f"query must be a string, got {type(query).__name__}")
        if not query.strip():
            raise RetrievalError("query is blank")
        return self.search([query], k)[0]

    def __call__(self, query: str, k: int | None = None, **kwargs: Any) -> list[Passage]:
        """DSPy's retrieval-model call (``dspy.settings.rm(query, k=k)``); extra keywords are ignored."""
        return self.retrieve(query, k)

    def as_dspy(self, k: int | None = None) -> DSPyRetrieve:
        """A ``dspy.Retrieve`` module bound to this retriever, for use inside DSPy programs.

        Args:
            k: Passages per call; None uses the retriever's default.
        """
        from tasks.retrieval.dspy_retrieve import DSPyRetrieve

        return DSPyRetrieve(self, k=self._k if k is None else k)

    def __deepcopy__(self, memo: dict[int, Any]) -> EmbeddingRetriever:
        # DSPy optimizers deep-copy programs; the retriever is immutable, so sharing it is a copy.
        return self

    def __repr__(self) -> str:
        return f"EmbeddingRetriever(passages={len(self._corpus)}, k={self._k}, key={self._index.key!r})"
