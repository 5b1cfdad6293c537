"""Retrieval for the gpu pool: an embeddings retriever with cached corpus indexes, and ColBERTv2.

`EmbeddingRetriever` searches a corpus with the offline all-MiniLM-L6-v2 model (CUDA when present);
`ColBERTv2Retriever` passes queries to a user's ColBERTv2 server. Both return `Passage` records, work
as DSPy retrieval models, and give a ``dspy.Retrieve`` module with ``as_dspy()``.
"""

from tasks.retrieval.colbert import ColBERTv2Retriever
from tasks.retrieval.demo import load_demo_corpus, load_demo_questions
from tasks.retrieval.dspy_retrieve import DSPyRetrieve
from tasks.retrieval.embedder import MODEL_NAME, Embedder, TextEncoder, get_embedder, resolve_device
from tasks.retrieval.index import CorpusIndex, build_index, clear_index_cache, index_cache_stats
from tasks.retrieval.inputs import Corpus, CorpusInput, to_corpus
from tasks.retrieval.passage import Passage, Retriever
from tasks.retrieval.retriever import EmbeddingRetriever

__all__ = [
    "MODEL_NAME",
    "ColBERTv2Retriever",
    "Corpus",
    "CorpusIndex",
    "CorpusInput",
    "DSPyRetrieve",
    "Embedder",
    "EmbeddingRetriever",
    "Passage",
    "Retriever",
    "TextEncoder",
    "build_index",
    "clear_index_cache",
    "get_embedder",
    "index_cache_stats",
    "load_demo_corpus",
    "load_demo_questions",
    "resolve_device",
    "to_corpus",
]
