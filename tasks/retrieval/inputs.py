"""Retrieval inputs, checked and normalized: corpora (`Corpus`), queries and ``k``.

A corpus may be given as a list of strings, a list of mappings with ``text`` (and optional ``title``
and ``id``), or a ``pyarrow.Table`` with those columns. Whatever the form, it becomes one `Corpus`
with a content hash, which is what indexes are cached by.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import pyarrow as pa

from dspex.exceptions import RetrievalError

__all__ = ["Corpus", "CorpusInput", "check_k", "check_queries", "to_corpus"]

CorpusInput: TypeAlias = "Corpus | Sequence[str] | Sequence[Mapping[str, Any]] | pa.Table"


@dataclass(frozen=True, eq=False)
class Corpus:
    """A checked corpus: parallel tuples of ids, titles and texts.

    Build one with `to_corpus`; the constructor trusts its arguments.

    Attributes:
        ids: Unique passage ids.
        titles: Passage titles ("" where there is none).
        texts: Passage texts, never blank.
        content_hash: A hex digest of ids, titles and texts; equal corpora have equal hashes.
    """

    ids: tuple[str, ...]
    titles: tuple[str, ...]
    texts: tuple[str, ...]
    content_hash: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha256()
        # Length-prefixed fields, so no two different corpora serialize to the same bytes.
        for values in (self.ids, self.titles, self.texts):
            digest.update(len(values).to_bytes(8, "little"))
            for value in values:
                raw = value.encode("utf-8")
                digest.update(len(raw).to_bytes(8, "little"))
                digest.update(raw)
        object.__setattr__(self, "content_hash", digest.hexdigest()[:32])

    def __len__(self) -> int:
        return len(self.texts)

    def embedding_texts(self) -> list[str]:
        """The strings that are embedded: ``"title: text"`` where there is a title, else the text.

        The title is part of what a passage is about; putting it in front helps short passages match
        questions that name the subject.
        """
        return [
            f"{title}: {text}" if title else text for title, text in zip(self.titles, self.texts, strict=True)
        ]


def _text_field(value: Any, *, row: int, name: str, required: bool) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise RetrievalError(f"corpus row {row}: {name!r} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise RetrievalError(f"corpus row {row}: {name!r} is blank")
    return value


def _id_field(value: Any, *, row: int) -> str:
    if value is None:
        return str(row)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RetrievalError(
            f"corpus row {row}: 'id' must be a string or an integer, got {type(value).__name__}"
        )
    return str(value)


def _from_columns(ids: Sequence[Any] | None, titles: Sequence[Any] | None, texts: Sequence[Any]) -> Corpus:
    n = len(texts)
    id_values = [_id_field(ids[i] if ids is not None else None, row=i) for i in range(n)]
    title_values = [
        _text_field(titles[i] if titles is not None else None, row=i, name="title", required=False)
        for i in range(n)
    ]
    text_values = [_text_field(texts[i], row=i, name="text", required=True) for i in range(n)]
    if len(set(id_values)) != n:
        duplicate = next(value for value, count in Counter(id_values).items() if count > 1)
        raise RetrievalError(f"corpus ids must be unique; {duplicate!r} appears more than once")
    return Corpus(ids=tuple(id_values), titles=tuple(title_values), texts=tuple(text_values))


def _from_table(table: pa.Table) -> Corpus:
    if "text" not in table.column_names:
        raise RetrievalError(f"a corpus table needs a 'text' column; it has {table.column_names}")
    columns = {
        name: table.column(name).to_pylist() if name in table.column_names else None
        for name in ("id", "title", "text")
    }
    texts = columns["text"]
    assert texts is not None  # checked above
    return _from_columns(columns["id"], columns["title"], texts)


def _from_rows(rows: Sequence[Any]) -> Corpus:
    # The first row decides the corpus's kind; every other row must be of the same kind.
    if not rows or isinstance(rows[0], str):
        for i, row in enumerate(rows):
            if not isinstance(row, str):
                raise RetrievalError(
                    f"corpus row {i}: expected a string like row 0, got {type(row).__name__} "
                    "(a corpus is all strings or all mappings)"
                )
        return _from_columns(None, None, rows)
    ids: list[Any] = []
    titles: list[Any] = []
    texts: list[Any] = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise RetrievalError(
                f"corpus row {i}: expected a mapping with 'text' like row 0, got {type(row).__name__} "
                "(a corpus is all strings or all mappings)"
                if i
                else f"corpus row 0: expected a string or a mapping with 'text', got {type(row).__name__}"
            )
        if "text" not in row:
            raise RetrievalError(f"corpus row {i}: a mapping needs a 'text' key; it has {sorted(row)}")
        ids.append(row.get("id"))
        titles.append(row.get("title"))
        texts.append(row["text"])
    return _from_columns(ids, titles, texts)


def to_corpus(corpus: CorpusInput) -> Corpus:
    """Check and normalize a corpus.

    Args:
        corpus: A `Corpus` (returned as is), a list of strings, a list of mappings with ``text`` and
            optional ``title`` and ``id`` (other keys are ignored), or a ``pyarrow.Table`` with a
            ``text`` column and optional ``title`` and ``id`` columns.

    Raises:
        RetrievalError: The corpus is empty, of an unknown kind, or has a row without a usable text, a
            non-string title, or a duplicate id; the message names the row.
    """
    if isinstance(corpus, Corpus):
        built = corpus
    elif isinstance(corpus, pa.Table):
        built = _from_table(corpus)
    elif isinstance(corpus, str | bytes) or not isinstance(corpus, Sequence):
        raise RetrievalError(
            f"a corpus must be a list of strings, a list of mappings or a pyarrow.Table, got {type(corpus).__name__}"
        )
    else:
        built = _from_rows(corpus)
    if len(built) == 0:
        raise RetrievalError("the corpus is empty; a retriever needs at least one passage")
    return built


def check_k(k: Any, *, where: str = "k") -> int:
    """Check a number of passages to return.

    Args:
        k: The value to check.
        where: How to name it in the error message.

    Raises:
        RetrievalError: ``k`` is not an integer of at least 1.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise RetrievalError(f"{where} must be an integer >= 1, got {k!r}")
    return k


def check_queries(queries: Any) -> list[str]:
    """Check a batch of queries: a list (or tuple) of non-blank strings.

    Raises:
        RetrievalError: ``queries`` is a single string or not a sequence, or one of its items is not a
            non-blank string; the message names the item.
    """
    if isinstance(queries, str | bytes) or not isinstance(queries, Sequence):
        raise RetrievalError(
            f"queries must be a list of strings, got {type(queries).__name__} (use retrieve() for one query)"
        )
    checked = list(queries)
    for i, query in enumerate(checked):
        if not isinstance(query, str):
            raise RetrievalError(f"query {i} must be a string, got {type(query).__name__}")
        if not query.strip():
            raise RetrievalError(f"query {i} is blank")
    return checked
