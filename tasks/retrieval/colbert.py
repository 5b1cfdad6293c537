"""`ColBERTv2Retriever`: a pass-through to a ColBERTv2 server, through DSPy's own client.

For users who already run a ColBERTv2 server (``GET /?query=...&k=...`` or ``POST {"query", "k"}``
answering ``{"topk": [{"text", "pid", "rank", "score", ...}]}``). Requests go through
``dspy.ColBERTv2``, so they share DSPy's request cache; answers come back as `Passage` records, and
failures as typed errors that say whether a retry may help.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dspy
import requests

from dspex.exceptions import RetrievalError, RetrieverServerError
from tasks.retrieval.inputs import check_k, check_queries
from tasks.retrieval.passage import Passage

__all__ = ["COLBERT_GET_MAX_K", "ColBERTv2Retriever"]

#: DSPy's GET client refuses larger k (the hosted server's limit).
COLBERT_GET_MAX_K = 100


def _to_passage(item: Any, *, position: int, url: str) -> Passage:
    if not isinstance(item, Mapping):
        raise RetrieverServerError(
            f"malformed ColBERTv2 answer: topk item {position} is not an object", url=url
        )
    # DSPy's GET client copies "text" into "long_text"; its POST client passes the server's item as is.
    text = item.get("long_text", item.get("text"))
    if not isinstance(text, str):
        raise RetrieverServerError(f"malformed ColBERTv2 answer: topk item {position} has no text", url=url)
    title = item.get("title", "")
    score = item.get("score", 0.0)
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise RetrieverServerError(
            f"malformed ColBERTv2 answer: topk item {position} has a non-numeric score", url=url
        )
    return Passage(
        id=str(item.get("pid", position)),
        title=title if isinstance(title, str) else "",
        text=text,
        score=float(score),
    )


class ColBERTv2Retriever:
    """Top-k passages from a ColBERTv2 server.

    Args:
        url: The server's base URL (``http://host:port/api/search`` or ``http://host``).
        port: A port to append to ``url``, as ``dspy.ColBERTv2`` does.
        post_requests: Send ``POST`` JSON requests instead of ``GET`` query strings.
        k: Default passages per query.

    Raises:
        RetrievalError: A URL that is not http(s), or ``k < 1``.
    """

    def __init__(
        self, url: str, *, port: int | str | None = None, post_requests: bool = False, k: int = 3
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise RetrievalError(f"a ColBERTv2 url must start with http:// or https://, got {url!r}")
        self._k = check_k(k)
        self._post = post_requests
        self._client = dspy.ColBERTv2(url=url, port=port, post_requests=post_requests)

    @property
    def url(self) -> str:
        """The URL requests go to."""
        return str(self._client.url)

    @property
    def k(self) -> int:
        """Default passages per query."""
        return self._k

    def retrieve(self, query: str, k: int | None = None) -> list[Passage]:
        """The server's top ``k`` passages for one query, best first.

        Raises:
            RetrievalError: ``query`` is not a non-blank string, ``k < 1``, or ``k > 100`` with GET.
            RetrieverServerError: The server could not be reached, timed out, answered an HTTP error
                or an error object, or answered something that is not ColBERTv2's format.
                ``retryable`` is True for connection errors, timeouts, 429 and 5xx.
        """
        if not isinstance(query, str):
            raise RetrievalError(f"query must be a string, got {type(query).__name__}")
        if not query.strip():
            raise RetrievalError("query is blank")
        top = self._k if k is None else check_k(k)
        if not self._post and top > COLBERT_GET_MAX_K:
            raise RetrievalError(
                f"k={top} is more than ColBERTv2's GET API serves ({COLBERT_GET_MAX_K}); use post_requests=True"
            )
        url = self.url
        try:
            items = self._client(query, k=top)
        except (requests.ConnectionError, requests.Timeout) as error:
            raise RetrieverServerError(
                f"ColBERTv2 server unreachable: {type(error).__name__}", url=url, retryable=True
            ) from error
        except requests.HTTPError as error:
            status = error.response.status_code if error.response is not None else None
            retryable = status is not None and (status == 429 or status >= 500)
            raise RetrieverServerError(
                f"ColBERTv2 server answered HTTP {status}", url=url, status=status, retryable=retryable
            ) from error
        except requests.JSONDecodeError as error:
            raise RetrieverServerError(
                "ColBERTv2 server answered something that is not JSON", url=url
            ) from error
        except requests.RequestException as error:
            raise RetrieverServerError(f"ColBERTv2 request failed: {error}", url=url) from error
        except (ValueError, KeyError, TypeError) as error:
            # DSPy raises ValueError for {"error": ...} answers and answers without "topk", and a
            # KeyError/TypeError when items lack "text" or are not objects.
            raise RetrieverServerError(
                f"ColBERTv2 server gave an unusable answer: {error}", url=url
            ) from error
        return [_to_passage(item, position=i, url=url) for i, item in enumerate(items[:top])]

    def search(self, queries: Sequence[str], k: int | None = None) -> list[list[Passage]]:
        """The server's top ``k`` passages for each query (one request per query, in order).

        Raises:
            RetrievalError, RetrieverServerError: As for `retrieve`.
        """
        return [self.retrieve(query, k) for query in check_queries(queries)]

    def __call__(self, query: str, k: int | None = None, **kwargs: Any) -> list[Passage]:
        """DSPy's retrieval-model call (``dspy.settings.rm(query, k=k)``); extra keywords are ignored."""
        return self.retrieve(query, k)

    def as_dspy(self, k: int | None = None) -> dspy.Retrieve:
        """A ``dspy.Retrieve`` module bound to this server (see `DSPyRetrieve`)."""
        from tasks.retrieval.dspy_retrieve import DSPyRetrieve

        return DSPyRetrieve(self, k=self._k if k is None else k)

    def __repr__(self) -> str:
        return f"ColBERTv2Retriever(url={self.url!r}, post_requests={self._post}, k={self._k})"
