"""QA metrics: exact match, token F1 and passage match, single and batch, plus a string-keyed registry.

Normalisation is SQuAD's, exactly as DSPy's ``dspy.evaluate.metrics.normalize_text`` does it: Unicode
NFD, lowercase, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace. Passage match
tokenises like DSPy's DPR tokenizer (runs of letters/digits/marks, or any other non-space character)
and looks for an answer's tokens as a contiguous run in a passage's tokens. Scores equal DSPy's
``answer_exact_match`` / ``answer_passage_match`` / ``F1`` on the same inputs (tested differentially).

`get_metric` returns a `Metric`: a frozen pydantic record that is also a DSPy metric
``(example, prediction, trace=None) -> float``, so it can be named in a pipeline spec by string.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import regex
from pydantic import BaseModel, ConfigDict, Field

from dspex.exceptions import MetricError

__all__ = [
    "Metric",
    "MetricName",
    "batch_exact_match",
    "batch_f1_score",
    "batch_passage_match",
    "exact_match",
    "f1_score",
    "get_metric",
    "metric_names",
    "normalize_answer",
    "passage_match",
]

MetricName = Literal["exact_match", "f1", "passage_match"]

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# DSPy's SimpleTokenizer: a run of letters/numbers/marks, or one other non-space, non-control char.
_DPR_TOKEN = regex.compile(
    r"[\p{L}\p{N}\p{M}]+|[^\p{Z}\p{C}]", flags=regex.IGNORECASE | regex.UNICODE | regex.MULTILINE
)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation (DSPy's ``normalize_text``): NFD, lowercase, no punctuation or articles.

    Args:
        text: Any string.
    """
    text = unicodedata.normalize("NFD", text).lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _golds(gold_answers: str | Iterable[str]) -> list[str]:
    if isinstance(gold_answers, str):
        return [gold_answers]
    if gold_answers is None:
        raise MetricError("gold answers are missing (None)")
    golds = list(gold_answers)
    if not golds:
        raise MetricError("gold answers are empty; a metric needs at least one reference answer")
    for gold in golds:
        if not isinstance(gold, str):
            raise MetricError(f"gold answers must be strings, got {type(gold).__name__}: {gold!r}")
    return golds


def _prediction(prediction: Any) -> str:
    if not isinstance(prediction, str):
        raise MetricError(f"a prediction must be a string, got {type(prediction).__name__}: {prediction!r}")
    return prediction


def exact_match(prediction: str, gold_answers: str | Iterable[str]) -> bool:
    """Whether the prediction equals any gold answer after normalisation.

    Args:
        prediction: The predicted answer.
        gold_answers: One gold answer or several.

    Raises:
        MetricError: On a non-string prediction or gold, or no gold answers.
    """
    pred = normalize_answer(_prediction(prediction))
    return any(pred == normalize_answer(gold) for gold in _golds(gold_answers))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0  # also when both are empty, as DSPy (unlike SQuAD 2.0) scores it
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, gold_answers: str | Iterable[str]) -> float:
    """Token-level F1 after normalisation, the maximum over the gold answers.

    Args:
        prediction: The predicted answer.
        gold_answers: One gold answer or several.

    Raises:
        MetricError: On a non-string prediction or gold, or no gold answers.
    """
    pred_tokens = normalize_answer(_prediction(prediction)).split()
    return max(_f1(pred_tokens, normalize_answer(gold).split()) for gold in _golds(gold_answers))


def _dpr_tokens(text: str) -> list[str]:
    return [token.lower() for token in _DPR_TOKEN.findall(unicodedata.normalize("NFD", text))]


def _contains(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def passage_match(passages: str | Iterable[str], gold_answers: str | Iterable[str]) -> bool:
    """Whether any passage contains any gold answer (normalised, as a run of DPR tokens).

    Args:
        passages: Retrieved passages (or one passage).
        gold_answers: One gold answer or several.

    Raises:
        MetricError: On non-string passages or golds, or no gold answers.
    """
    answers = [_dpr_tokens(normalize_answer(gold)) for gold in _golds(gold_answers)]
    for passage in [passages] if isinstance(passages, str) else passages:
        if not isinstance(passage, str):
            raise MetricError(f"passages must be strings, got {type(passage).__name__}: {passage!r}")
        tokens = _dpr_tokens(normalize_answer(passage))
        if any(_contains(tokens, answer) for answer in answers):
            return True
    return False


def _column(values: Any, what: str) -> list[Any]:
    to_pylist = getattr(values, "to_pylist", None)  # pyarrow Array / ChunkedArray
    if callable(to_pylist):
        return list(to_pylist())
    if isinstance(values, str) or not isinstance(values, Sequence | Iterable):
        raise MetricError(f"{what} must be a list or an Arrow array, got {type(values).__name__}")
    return list(values)


def _batch(fn: Callable[[Any, Any], Any], left: Any, right: Any, names: tuple[str, str]) -> list[Any]:
    lefts = _column(left, names[0])
    rights = _column(right, names[1])
    if len(lefts) != len(rights):
        raise MetricError(f"{names[0]} ({len(lefts)}) and {names[1]} ({len(rights)}) differ in length")
    results = []
    for index, (a, b) in enumerate(zip(lefts, rights, strict=True)):
        try:
            results.append(fn(a, b))
        except MetricError as exc:
            raise MetricError(f"row {index}: {exc}") from None
    return results


def batch_exact_match(predictions: Any, gold_answers: Any) -> list[bool]:
    """`exact_match` per row over two equally long lists or Arrow arrays.

    Args:
        predictions: One predicted string per row.
        gold_answers: Per row, a gold string or a list of them.

    Raises:
        MetricError: On unequal lengths, or a bad row (named by index).
    """
    return _batch(exact_match, predictions, gold_answers, ("predictions", "gold_answers"))


def batch_f1_score(predictions: Any, gold_answers: Any) -> list[float]:
    """`f1_score` per row over two equally long lists or Arrow arrays (see `batch_exact_match`)."""
    return _batch(f1_score, predictions, gold_answers, ("predictions", "gold_answers"))


def batch_passage_match(passages: Any, gold_answers: Any) -> list[bool]:
    """`passage_match` per row: ``passages`` holds one list of passages per row (see `batch_exact_match`)."""
    return _batch(passage_match, passages, gold_answers, ("passages", "gold_answers"))


_SCORERS: dict[str, Callable[[Any, Any], Any]] = {
    "exact_match": exact_match,
    "f1": f1_score,
    "passage_match": passage_match,
}
_DEFAULT_PREDICTION_FIELD = {"exact_match": "answer", "f1": "answer", "passage_match": "context"}


class Metric(BaseModel):
    """A named metric usable as a DSPy metric: ``metric(example, prediction, trace=None) -> float``.

    Attributes:
        name: Which metric (the registry key).
        gold_field: The example's field holding the gold answer(s).
        prediction_field: The prediction's field scored (``answer``; ``context`` for passage_match).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: MetricName
    gold_field: str = Field(default="answer", min_length=1)
    prediction_field: str = Field(default="answer", min_length=1)

    @property
    def __name__(self) -> str:  # DSPy's Evaluate names result columns after metric.__name__
        return self.name

    def __call__(self, example: Any, prediction: Any, trace: Any = None) -> float:
        """Score one example.

        Args:
            example: A ``dspy.Example`` (or mapping) with the gold field.
            prediction: A ``dspy.Prediction`` (or mapping) with the prediction field.
            trace: Unused; part of DSPy's metric signature.

        Raises:
            MetricError: If a field is missing or of the wrong type.
        """
        gold = _field(example, self.gold_field, "example", self.name)
        value = _field(prediction, self.prediction_field, "prediction", self.name)
        try:
            return float(_SCORERS[self.name](value, gold))
        except MetricError as exc:
            raise MetricError(f"metric {self.name!r}: {exc}") from None


def _field(obj: Any, name: str, what: str, metric: str) -> Any:
    try:
        return obj[name]
    except (KeyError, TypeError, IndexError):
        pass
    try:
        return getattr(obj, name)
    except AttributeError:
        raise MetricError(f"metric {metric!r}: the {what} has no field {name!r}") from None


def metric_names() -> list[str]:
    """The names `get_metric` knows, sorted."""
    return sorted(_SCORERS)


def get_metric(name: str, *, gold_field: str = "answer", prediction_field: str | None = None) -> Metric:
    """Look a metric up by name.

    Args:
        name: ``exact_match``, ``f1`` or ``passage_match``.
        gold_field: The example's field holding the gold answer(s).
        prediction_field: The prediction's field to score; defaults to ``answer`` (``context`` for
            ``passage_match``).

    Raises:
        MetricError: For an unknown name, listing the valid ones.
    """
    if name not in _SCORERS:
        raise MetricError(f"unknown metric {name!r}; valid metrics: {', '.join(metric_names())}")
    return Metric(
        name=name,  # type: ignore[arg-type]
        gold_field=gold_field,
        prediction_field=prediction_field or _DEFAULT_PREDICTION_FIELD[name],
    )
