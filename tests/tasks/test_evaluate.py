"""tasks.evaluate: examples from rows, metrics by name or import path, program state, scoring."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import dspy
import pytest
from dspy.utils.dummies import DummyLM

from dspex.exceptions import InputValidationError, MetricError, PipelineSpecError
from flows.engine.spec import ModuleStep
from tasks.evaluate import (
    ExampleResult,
    ProgressCounter,
    evaluate_examples,
    input_keys_for,
    load_program,
    metric_field_for,
    read_program_state,
    resolve_metric,
    summarize_scores,
    to_examples,
)
from tasks.metrics import Metric
from tasks.optimize import save_program_state

QA = {"<<q0>>": "Paris", "<<q1>>": "blue", "<<q2>>": "four"}


def qa_lm() -> DummyLM:
    return DummyLM({q: {"answer": a} for q, a in QA.items()})


def qa_rows() -> list[dict[str, str]]:
    return [{"question": q, "answer": a} for q, a in QA.items()]


def answer_length(example, prediction, trace=None):
    """A custom metric named by import path in the tests (1.0 when the answer is short)."""
    return float(len(prediction.answer) <= 5)


def predict_step(**extra) -> ModuleStep:
    return ModuleStep(module="dspy.Predict", signature="question -> answer", **extra)


def test_to_examples_marks_inputs_and_keeps_labels():
    (example, *_) = to_examples(qa_rows(), ["question"])
    assert dict(example.inputs()) == {"question": "<<q0>>"}
    assert dict(example.labels()) == {"answer": "Paris"}


def test_to_examples_rejects_empty_and_names_missing_fields_and_rows():
    with pytest.raises(InputValidationError, match="trainset is empty"):
        to_examples([], ["question"])
    rows = [{"question": "x"}, {"query": "y", "answer": "z"}, {"answer": "w"}]
    with pytest.raises(InputValidationError, match="valset row 1 lacks it: 'question'") as info:
        to_examples(rows, ["question"], "valset")
    assert [e["message"] for e in info.value.errors] == ["valset row 1 lacks it", "valset row 2 lacks it"]


def test_input_keys_come_from_the_signature_unless_given():
    step = ModuleStep(module="dspy.Predict", signature="context, question -> answer")
    assert input_keys_for(step) == ["context", "question"]
    assert input_keys_for(step, ["question"]) == ["question"]
    assert metric_field_for(step) == "answer"
    assert metric_field_for(ModuleStep(module="dspy.Predict", signature="q -> label")) == "label"


def test_native_metrics_resolve_to_dspy_metrics_on_the_answer_field():
    em = resolve_metric("exact_match")
    assert isinstance(em, Metric) and em.gold_field == em.prediction_field == "answer"
    assert em(dspy.Example(answer="The Paris"), dspy.Prediction(answer="paris")) == 1.0
    assert resolve_metric("f1", field="label").prediction_field == "label"
    assert resolve_metric("passage_match").prediction_field == "context"


def test_unknown_and_untrusted_metrics_are_typed_errors():
    with pytest.raises(MetricError, match="unknown metric 'accuracy'.*exact_match, f1, passage_match"):
        resolve_metric("accuracy")
    with pytest.raises(MetricError, match="DSPEX_TRUSTED_IMPORT_ROOTS"):
        resolve_metric("tests.tasks.test_evaluate:answer_length")


def test_import_path_metric_from_a_trusted_root(monkeypatch):
    monkeypatch.setenv("DSPEX_TRUSTED_IMPORT_ROOTS", '["tests"]')
    metric = resolve_metric("tests.tasks.test_evaluate:answer_length")
    assert metric(dspy.Example(answer="x"), dspy.Prediction(answer="short")) == 1.0


def test_evaluate_examples_scores_every_metric_and_equals_dspy_evaluate():
    program = dspy.Predict("question -> answer")
    examples = to_examples(qa_rows() + [{"question": "<<q1>>", "answer": "red"}], ["question"])
    metrics = {"exact_match": resolve_metric("exact_match"), "f1": resolve_metric("f1")}
    with ThreadPoolExecutor(4) as pool:
        results = evaluate_examples(program, examples, metrics, lm=qa_lm(), submit=pool.submit)
    assert [r.scores["exact_match"] for r in results] == [1.0, 1.0, 1.0, 0.0]
    assert results[0].prediction == {"answer": "Paris"} and results[0].labels == {"answer": "Paris"}
    (em, f1) = summarize_scores(results, ["exact_match", "f1"])
    assert (em.mean, em.n, em.failed) == (0.75, 4, 0)
    with dspy.context(lm=qa_lm()):
        direct = dspy.Evaluate(devset=examples, metric=metrics["exact_match"], num_threads=1)(program)
    assert em.mean * 100 == pytest.approx(direct.score)


def test_failures_are_kept_per_example_and_score_zero():
    program = dspy.Predict("question -> answer")
    examples = to_examples(qa_rows(), ["question"])

    def fussy(example, prediction, trace=None):
        if example.answer == "blue":
            raise MetricError("cannot score blue")
        return 1.0

    class Broken(dspy.Module):
        def forward(self, question):
            if question == "<<q2>>":
                raise RuntimeError("program failed on q2")
            return program(question=question)

    progress = ProgressCounter()
    progress.set_stage("evaluate", 3)
    results = evaluate_examples(Broken(), examples, {"fussy": fussy}, lm=qa_lm(), progress=progress)
    assert results[1].scores == {"fussy": None} and "cannot score blue" in results[1].metric_errors["fussy"]
    assert results[2].prediction is None and results[2].error == "RuntimeError: program failed on q2"
    assert summarize_scores(results, ["fussy"])[0].model_dump() == {
        "metric": "fussy",
        "mean": 1 / 3,
        "n": 3,
        "failed": 2,
    }
    assert progress.snapshot() == ("evaluate", 3, 3)
    assert isinstance(results[0], ExampleResult)


def test_saved_state_loads_back_from_the_json_file_and_from_the_payload_ref():
    program = dspy.Predict("question -> answer")
    program.demos = [dspy.Example(question="q", answer="a")]
    saved = save_program_state(program, "programs/unit-state")
    assert saved.uri.endswith("programs/unit-state.json") and saved.demos == {"self": 1}
    with open(saved.uri, encoding="utf-8") as handle:
        assert json.load(handle) == read_program_state(saved.ref.model_dump_json())
    for state in (saved.uri, saved.ref.model_dump_json()):
        loaded = load_program(predict_step(state=state))
        assert [dict(d) for d in loaded.demos] == [{"question": "q", "answer": "a"}]
    fresh = load_program(predict_step())
    assert fresh.demos == [] and fresh is not load_program(predict_step())


def test_bad_state_is_a_typed_error(tmp_path):
    with pytest.raises(PipelineSpecError, match="not found"):
        load_program(predict_step(state=str(tmp_path / "missing.json")))
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(PipelineSpecError, match="JSON object"):
        load_program(predict_step(state=str(tmp_path / "list.json")))
    (tmp_path / "wrong.json").write_text('{"nothing": 1}')
    with pytest.raises(PipelineSpecError, match="does not fit dspy.Predict"):
        load_program(predict_step(state=str(tmp_path / "wrong.json")))
