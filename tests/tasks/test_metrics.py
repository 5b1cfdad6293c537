"""Metrics: differential against DSPy's own EM / F1 / passage match, batches, and the registry."""

from __future__ import annotations

import dspy
import pyarrow as pa
import pytest
from dspy.evaluate import answer_exact_match, answer_passage_match
from dspy.evaluate.metrics import F1, normalize_text
from hypothesis import given, settings
from hypothesis import strategies as st

from dspex.exceptions import MetricError
from tasks.metrics import (
    Metric,
    batch_exact_match,
    batch_f1_score,
    batch_passage_match,
    exact_match,
    f1_score,
    get_metric,
    metric_names,
    normalize_answer,
    passage_match,
)

CASES = [
    ("The Eiffel Tower", ["Eiffel Tower", "Louvre"]),
    ("paris", ["Paris"]),
    ("paris", ["Paris, France"]),
    ("Eiffel Tower is in Paris", ["Paris"]),
    ("an apple a day", ["apple day"]),
    ("Café  Müller!", ["cafe muller", "Café Müller"]),
    ("", ["something"]),
    ("the", ["a"]),
    ("1,000", ["1000"]),
    ("U.S.A.", ["USA", "u s a"]),
    ("naïve résumé", ["naive resume"]),
    ("Beyoncé Knowles-Carter", ["Beyonce Knowles Carter", "Beyoncé"]),
    ("42", ["forty-two", "42"]),
    ("Yes", ["no"]),
    ("the the the", ["the"]),
]

PASSAGES = [
    (["The Eiffel Tower is in Paris.", "..."], ["Eiffel Tower"]),
    (["The Eiffel-Tower is in Paris."], ["Eiffel Tower"]),
    (["It costs $1,000 today"], ["1000"]),
    (["Paris, France"], ["France", "Berlin"]),
    (["Müller played for Bayern"], ["muller"]),
    (["no match here"], ["Paris"]),
    ([], ["Paris"]),
    (["ParisHilton"], ["Paris"]),
    (["東京は日本の首都です"], ["東京"]),
    (["a b c d"], ["b c", "x"]),
]


@pytest.mark.parametrize(("prediction", "golds"), CASES)
def test_exact_match_and_f1_equal_dspy(prediction: str, golds: list[str]) -> None:
    example = dspy.Example(answer=golds)
    pred = dspy.Prediction(answer=prediction)
    assert exact_match(prediction, golds) == answer_exact_match(example, pred)
    assert f1_score(prediction, golds) == pytest.approx(F1(prediction, golds))
    assert normalize_answer(prediction) == normalize_text(prediction)
    assert get_metric("exact_match")(example, pred) == float(answer_exact_match(example, pred))
    for frac in (0.3, 0.5, 0.9):
        assert (get_metric("f1")(example, pred) >= frac) == answer_exact_match(example, pred, frac=frac)


@pytest.mark.parametrize(("passages", "golds"), PASSAGES)
def test_passage_match_equals_dspy(passages: list[str], golds: list[str]) -> None:
    expected = answer_passage_match(dspy.Example(answer=golds), dspy.Prediction(context=passages))
    assert passage_match(passages, golds) == expected
    assert get_metric("passage_match")(
        dspy.Example(answer=golds), dspy.Prediction(context=passages)
    ) == float(expected)


_TEXT = st.text(alphabet=st.sampled_from(list("aAbBeé the,.!-'  Ü1")), max_size=20)


@settings(max_examples=200, deadline=None)
@given(_TEXT, st.lists(_TEXT, min_size=1, max_size=3))
def test_generated_strings_equal_dspy(prediction: str, golds: list[str]) -> None:
    example = dspy.Example(answer=golds)
    assert exact_match(prediction, golds) == answer_exact_match(example, dspy.Prediction(answer=prediction))
    assert f1_score(prediction, golds) == pytest.approx(F1(prediction, golds))
    assert passage_match([prediction], golds) == answer_passage_match(
        example, dspy.Prediction(context=[prediction])
    )


def test_single_gold_string() -> None:
    assert exact_match("Paris", "paris") is True
    assert f1_score("Paris France", "Paris") == pytest.approx(2 / 3)
    assert passage_match("Paris is big", "paris") is True


def test_batch_forms_over_lists_and_arrow() -> None:
    preds = ["Paris", "Berlin", "the Louvre"]
    golds = [["paris"], "Rome", ["Louvre", "x"]]
    assert batch_exact_match(preds, golds) == [True, False, True]
    assert batch_exact_match(pa.array(preds), pa.array([["paris"], ["Rome"], ["Louvre", "x"]])) == [
        True,
        False,
        True,
    ]
    assert batch_f1_score(pa.chunked_array([preds[:1], preds[1:]]), golds) == [1.0, 0.0, 1.0]
    assert batch_passage_match(pa.array([["Paris is big"], ["nothing"]]), pa.array(["paris", "rome"])) == [
        True,
        False,
    ]


def test_batch_errors() -> None:
    with pytest.raises(MetricError, match=r"predictions \(2\) and gold_answers \(1\) differ in length"):
        batch_exact_match(["a", "b"], ["a"])
    with pytest.raises(MetricError, match="row 1: a prediction must be a string, got int"):
        batch_f1_score(["a", 3], ["a", "b"])
    with pytest.raises(MetricError, match="predictions must be a list or an Arrow array, got str"):
        batch_exact_match("abc", ["a"])


def test_bad_inputs() -> None:
    with pytest.raises(MetricError, match="gold answers are empty"):
        exact_match("a", [])
    with pytest.raises(MetricError, match="gold answers must be strings, got int: 3"):
        f1_score("a", [3])  # type: ignore[list-item]
    with pytest.raises(MetricError, match="gold answers are missing"):
        exact_match("a", None)  # type: ignore[arg-type]
    with pytest.raises(MetricError, match="passages must be strings, got int"):
        passage_match([1], ["a"])  # type: ignore[list-item]


def test_registry() -> None:
    assert metric_names() == ["exact_match", "f1", "passage_match"]
    metric = get_metric("f1")
    assert isinstance(metric, Metric) and metric.__name__ == "f1"
    assert get_metric("passage_match").prediction_field == "context"
    with pytest.raises(
        MetricError, match="unknown metric 'bleu'; valid metrics: exact_match, f1, passage_match"
    ):
        get_metric("bleu")
    with pytest.raises(Exception, match="frozen"):
        metric.name = "exact_match"  # type: ignore[misc]
    custom = get_metric("exact_match", gold_field="gold", prediction_field="output")
    assert custom({"gold": "Paris"}, {"output": "paris"}) == 1.0
    with pytest.raises(MetricError, match="metric 'exact_match': the example has no field 'gold'"):
        custom(dspy.Example(answer="x"), dspy.Prediction(output="x"))
    with pytest.raises(MetricError, match="metric 'f1': a prediction must be a string, got NoneType"):
        metric(dspy.Example(answer="x"), dspy.Prediction(answer=None))


def test_metric_works_in_dspy_evaluate() -> None:
    devset = [
        dspy.Example(question="q1", answer="Paris").with_inputs("question"),
        dspy.Example(question="q2", answer="Rome").with_inputs("question"),
    ]
    program = dspy.Predict("question -> answer")
    with dspy.context(lm=dspy.utils.DummyLM([{"answer": "paris"}, {"answer": "Berlin"}])):
        result = dspy.Evaluate(
            devset=devset, metric=get_metric("exact_match"), num_threads=1, display_progress=False
        )(program)
    assert result.score == 50.0
