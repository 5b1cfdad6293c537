"""`DSPyRetrieve`: a ``dspy.Retrieve`` module bound to one of our retrievers."""

from __future__ import annotations

from typing import Any

import dspy

from dspex.exceptions import RetrievalError
from tasks.retrieval.inputs import check_k
from tasks.retrieval.passage import Retriever

__all__ = ["DSPyRetrieve"]


class DSPyRetrieve(dspy.Retrieve):
    """A ``dspy.Retrieve`` that asks a bound retriever instead of ``dspy.settings.rm``.

    It is a drop-in for ``dspy.Retrieve(k=...)`` inside a ``dspy.Module``: calling it returns a
    ``dspy.Prediction`` whose ``passages`` are the passage texts, best first, and it saves and loads
    ``k`` as its state like ``dspy.Retrieve`` does. The prediction also carries ``passage_ids``,
    ``titles`` and ``scores``, aligned with ``passages``.

    Args:
        retriever: An `EmbeddingRetriever`, a `ColBERTv2Retriever`, or anything with ``retrieve``.
        k: Passages per call.
        callbacks: DSPy callbacks, as for ``dspy.Retrieve``.

    Raises:
        RetrievalError: ``retriever`` has no ``retrieve`` method, or ``k < 1``.
    """

    def __init__(self, retriever: Retriever, k: int = 3, callbacks: list[Any] | None = None) -> None:
        if not callable(getattr(retriever, "retrieve", None)):
            raise RetrievalError(
                f"DSPyRetrieve needs a retriever with retrieve(query, k); got {type(retriever).__name__}"
            )
        super().__init__(k=check_k(k), callbacks=callbacks)
        self.retriever = retriever

    def dump_state(self, json_mode: bool = True) -> dict[str, Any]:
        """The saved state, ``{"k": k}``.

        ``dspy.Retrieve.dump_state`` (dspy 3.4) takes no ``json_mode``, which ``dspy.Module.save``
        passes, so a program holding a plain ``dspy.Retrieve`` cannot be saved; this one can.
        """
        return {"k": self.k}

    def load_state(self, state: dict[str, Any]) -> DSPyRetrieve:
        """Load ``k`` from a saved state.

        Unlike ``dspy.Retrieve.load_state``, which sets any attribute the state names, only ``k`` is
        accepted: a state file must not be able to replace the retriever.

        Raises:
            RetrievalError: The state has keys other than ``k``, or a bad ``k``.
        """
        unknown = sorted(set(state) - {"k"})
        if unknown:
            raise RetrievalError(f"a DSPyRetrieve state holds only 'k'; got {unknown}")
        if "k" in state:
            self.k = check_k(state["k"], where="state['k']")
        return self

    def forward(self, query: str, k: int | None = None, **kwargs: Any) -> dspy.Prediction:
        """Retrieve for one query.

        Args:
            query: The search query.
            k: Passages to return; None uses the module's ``k``.
            **kwargs: Accepted for ``dspy.Retrieve`` compatibility and ignored.

        Raises:
            RetrievalError: ``query`` is not a non-blank string, or ``k < 1``.
        """
        passages = self.retriever.retrieve(query, self.k if k is None else k)
        return dspy.Prediction(
            passages=[p.text for p in passages],
            passage_ids=[p.id for p in passages],
            titles=[p.title for p in passages],
            scores=[p.score for p in passages],
        )
