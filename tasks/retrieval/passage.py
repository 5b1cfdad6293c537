"""What a retriever returns (`Passage`), and the protocol every retriever follows (`Retriever`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

__all__ = ["Passage", "Retriever"]


class Passage(BaseModel):
    """One retrieved passage.

    Attributes:
        id: The passage's id in its corpus (the row number as a string when the corpus had no ids).
        title: The passage's title; empty when the corpus had none.
        text: The passage's text.
        score: The similarity to the query (cosine for embedding retrieval; the server's score for
            ColBERTv2), higher is closer.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    title: str = ""
    text: str
    score: float

    @property
    def long_text(self) -> str:
        """The text, under the name DSPy's ``dspy.Retrieve`` reads from a retrieval model's results."""
        return self.text


@runtime_checkable
class Retriever(Protocol):
    """What `DSPyRetrieve` and the pipeline's retrieval step need from a retriever."""

    def retrieve(self, query: str, k: int | None = None) -> list[Passage]:
        """The top ``k`` passages for one query, best first."""
        ...

    def search(self, queries: Sequence[str], k: int | None = None) -> list[list[Passage]]:
        """The top ``k`` passages for each of ``queries``, best first."""
        ...
