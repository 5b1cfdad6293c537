"""Scoring a prediction without a gold answer: an LM judge, or a named scoring function.

A scorer is ``scorer(inputs: dict, prediction: dspy.Prediction) -> float`` (a bool counts as 0/1).
Specs name scorers (``"judge"`` or a registered callable), so nothing is imported from a spec.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import dspy

from dspex.exceptions import PipelineSpecError

__all__ = ["Judge", "JudgeSignature", "Scorer", "as_score", "resolve_scorer", "row_metric"]

Scorer = Callable[[Mapping[str, Any], Any], Any]


class JudgeSignature(dspy.Signature):
    """Judge how well the response accomplishes the task given its inputs. Score 0.0 when it is wrong or
    unsupported, 1.0 when it is correct and complete, and values in between for partial answers."""

    task: str = dspy.InputField(desc="the task's instructions and inputs")
    response: str = dspy.InputField(desc="the response to judge")
    score: float = dspy.OutputField(desc="a number from 0.0 to 1.0")


def _describe(fields: Mapping[str, Any]) -> str:
    return "\n".join(f"{name}: {value}" for name, value in fields.items())


class Judge(dspy.Module):
    """An LM judge: scores a prediction for its inputs from 0 to 1.

    Args:
        instructions: What the judged module was asked to do (its signature's instructions).
    """

    def __init__(self, instructions: str = "") -> None:
        super().__init__()
        self.instructions = instructions
        self.judge = dspy.Predict(JudgeSignature)

    def forward(self, inputs: Mapping[str, Any], prediction: Any) -> dspy.Prediction:
        """Score ``prediction`` (its output fields) for ``inputs``."""
        outputs = {k: v for k, v in dict(prediction.items()).items() if k not in ("reasoning", "thought")}
        task = (self.instructions + "\n" if self.instructions else "") + _describe(inputs)
        result = self.judge(task=task, response=_describe(outputs))
        return dspy.Prediction(score=min(max(float(result.score), 0.0), 1.0))


def as_score(value: Any) -> float:
    """A scorer's result as a float (bools are 0/1; a Prediction's ``score`` field is read)."""
    if isinstance(value, bool | int | float):
        return float(value)
    score = getattr(value, "score", None)
    if isinstance(score, bool | int | float):
        return float(score)
    raise PipelineSpecError(f"a scorer returned {type(value).__name__}, not a number")


def resolve_scorer(ref: str | None, instructions: str = "") -> Scorer | None:
    """The scorer ``ref`` names: ``"judge"`` (an LM judge), a registered callable or trusted import
    path, or None for no scorer.

    Raises:
        PipelineSpecError: An unknown or untrusted name.
    """
    if ref is None:
        return None
    if ref == "judge":
        return Judge(instructions)
    from tasks.callables import resolve_callable

    return resolve_callable(ref)


def row_metric(
    metric: str, prediction: str = "answer", gold: str = "gold"
) -> Callable[[Mapping[str, Any]], float]:
    """Score a finished pipeline row in 0..1: its ``prediction`` field against its ``gold`` field.

    Args:
        metric: A native metric (``exact_match``, ``f1``, ``passage_match``) or a registered callable /
            trusted import path ``fn(example, prediction) -> float | bool`` (DSPy's metric shape: the
            example holds the row, the prediction holds the ``prediction`` field).
        prediction: The row field holding the prediction (dotted allowed).
        gold: The row field holding the gold answer(s) (dotted allowed).

    Raises:
        MetricError: An unknown metric (before any row is scored).
    """
    from tasks.metrics import get_metric, metric_names
    from tasks.rows import get_field

    if metric in metric_names():
        native = get_metric(metric, gold_field="gold", prediction_field="prediction")

        def score_native(row: Mapping[str, Any]) -> float:
            return float(
                native({"gold": get_field(row, gold, None)}, {"prediction": get_field(row, prediction, None)})
            )

        return score_native
    from dspex.exceptions import MetricError

    try:
        fn = resolve_scorer(metric)
    except PipelineSpecError as exc:
        raise MetricError(f"unknown metric {metric!r}: {exc}") from exc
    assert fn is not None

    def score_custom(row: Mapping[str, Any]) -> float:
        example = dspy.Example(**{k: v for k, v in row.items() if not str(k).startswith("_")})
        return as_score(fn(example, dspy.Prediction(**{prediction: get_field(row, prediction, None)})))

    return score_custom
