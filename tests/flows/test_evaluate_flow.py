"""The evaluate flow, run for real on the test Prefect server with DSPy's DummyLM."""

from __future__ import annotations

import asyncio
import json

import dspy
import pytest
from dspy.utils.dummies import DummyLM
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from dspex.exceptions import InputValidationError, MetricError, PipelineSpecError
from flows.evaluate import evaluate_program
from tasks.optimize import save_program_state

pytestmark = pytest.mark.integration

QA = {"<<q0>>": "Paris", "<<q1>>": "blue", "<<q2>>": "four"}
PROGRAM = {"module": "dspy.Predict", "signature": "question -> answer"}


def qa_lm() -> DummyLM:
    return DummyLM({q: {"answer": a} for q, a in QA.items()})


def devset() -> list[dict[str, str]]:
    return [{"question": q, "answer": a} for q, a in QA.items()] + [
        {"question": "<<q1>>", "answer": "light blue"}
    ]


def starts_with_capital(example, prediction, trace=None):
    """A custom metric the tests name by import path."""
    return float(prediction.answer[:1].isupper())


def test_native_and_import_path_metrics_score_every_example(monkeypatch):
    monkeypatch.setenv("DSPEX_TRUSTED_IMPORT_ROOTS", '["tests"]')
    custom = "tests.flows.test_evaluate_flow:starts_with_capital"
    result = evaluate_program(PROGRAM, devset=devset(), metrics=["exact_match", "f1", custom], lm=qa_lm())
    assert [(s.metric, s.n, s.failed) for s in result.scores] == [
        ("exact_match", 4, 0),
        ("f1", 4, 0),
        (custom, 4, 0),
    ]
    assert result.score("exact_match") == 0.75
    assert result.score("f1") == pytest.approx((3 + 2 / 3) / 4)  # "blue" vs "light blue": F1 2/3
    assert result.score(custom) == 0.25  # of Paris, blue, four, blue only "Paris" is capitalised
    out = result.rows()
    assert out[3]["inputs"] == {"question": "<<q1>>"} and out[3]["labels"] == {"answer": "light blue"}
    assert out[3]["prediction"] == {"answer": "blue"} and out[3]["scores"]["exact_match"] == 0.0
    assert (result.examples, result.failed, result.pool) == (4, 0, "general")

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["evaluate-scores"])),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )

    (artifact,) = asyncio.run(read())
    table = json.loads(artifact.data)
    assert {row["metric"] for row in table} == {"exact_match", "f1", custom}


def test_compiled_state_is_loaded_before_evaluating(tmp_path):
    program = dspy.Predict("question -> answer")
    program.demos = [dspy.Example(question="<<demo>>", answer="demo answer")]
    saved = save_program_state(program, "programs/eval-state")
    lm = qa_lm()
    evaluate_program({**PROGRAM, "state": saved.uri}, devset=devset()[:1], lm=lm)
    assert "<<demo>>" in json.dumps(lm.history[0]["messages"])  # the demo reached the prompt


def test_failed_examples_are_kept_and_counted():
    # Keyed by question (examples run concurrently); row 1's reply has no answer field: unparsable.
    lm = DummyLM({"<<q0>>": {"answer": "Paris"}, "<<q1>>": {"wrong": "x"}, "<<q2>>": {"answer": "four"}})
    result = evaluate_program(PROGRAM, devset=devset()[:3], metrics=["exact_match"], lm=lm)
    (row,) = result.scores
    assert (row.n, row.failed) == (3, 1) and result.failed == 1
    assert [r["error"] is None for r in result.rows()] == [True, False, True]


def test_bad_inputs_fail_before_any_lm_call():
    lm = qa_lm()
    with pytest.raises(MetricError, match="unknown metric 'bleu'"):
        evaluate_program(PROGRAM, devset=devset(), metrics=["bleu"], lm=lm)
    with pytest.raises(InputValidationError, match="devset is empty"):
        evaluate_program(PROGRAM, devset=[], lm=lm)
    with pytest.raises(InputValidationError, match="devset row 0 lacks it: 'question'"):
        evaluate_program(PROGRAM, devset=[{"answer": "x"}], lm=lm)
    with pytest.raises(PipelineSpecError, match="optimizer"):
        evaluate_program({"module": "dspy.BootstrapFewShot", "signature": "q -> a"}, devset=devset(), lm=lm)
    assert lm.history == []
