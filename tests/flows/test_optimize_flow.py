"""The optimize flow, run for real on the test Prefect server with DSPy's DummyLM.

Every optimizer family runs through the flow with tiny settings (see tests/tasks/test_optimize.py
for how the DummyLM answers the optimizers' own prompts).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from dspy.utils.dummies import DummyLM
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from dspex.exceptions import InputValidationError, MetricError, PipelineSpecError
from flows.evaluate import evaluate_program
from flows.optimize import optimize_program
from tasks.evaluate import load_program
from tasks.payloads import read_payload

pytestmark = pytest.mark.integration

QA = {"<<q0>>": "Paris", "<<q1>>": "blue", "<<q2>>": "four", "<<q3>>": "Madrid"}
PROGRAM = {"module": "dspy.ChainOfThought", "signature": "question -> answer"}
TINY: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "LabeledFewShot": ({"k": 2}, {}),
    "BootstrapFewShot": ({"max_bootstrapped_demos": 2, "max_labeled_demos": 2}, {}),
    "BootstrapFewShotWithRandomSearch": (
        {"max_bootstrapped_demos": 1, "max_labeled_demos": 1, "num_candidate_programs": 2},
        {},
    ),
    "MIPROv2": ({"auto": None, "num_candidates": 2, "verbose": False}, {"num_trials": 2, "minibatch": False}),
    "COPRO": ({"breadth": 2, "depth": 1}, {}),
    "SIMBA": ({"bsize": 2, "num_candidates": 2, "max_steps": 1}, {}),
    "GEPA": ({"max_metric_calls": 12}, {}),
}


def qa_lm() -> DummyLM:
    answers = {f"[[ ## question ## ]]\n{q}": {"answer": a, "reasoning": "because"} for q, a in QA.items()}
    answers[""] = {  # the optimizers' own prompts
        "reasoning": "because",
        "answer": "unknown",
        "proposed_instruction": "Answer in one word.",
        "proposed_prefix_for_output_field": "Answer:",
        "discussion": "fine",
        "module_advice": "{}",
    }
    return DummyLM(answers)


def rows() -> list[dict[str, str]]:
    return [{"question": q, "answer": a} for q, a in QA.items()]


def latest_artifact(key: str):
    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )

    (artifact,) = asyncio.run(read())
    return artifact


@pytest.mark.parametrize("optimizer", list(TINY))
def test_each_optimizer_family_runs_through_the_flow(optimizer):
    options, compile_options = TINY[optimizer]
    result = optimize_program(
        PROGRAM,
        trainset=rows(),
        valset=rows()[:2],
        optimizer=optimizer,
        metric="exact_match",
        options=options,
        compile_options=compile_options,
        lm=qa_lm(),
    )
    assert result.optimizer == optimizer and result.pool == "optimizer"
    assert (result.score_before, result.score_after, result.scored_on) == (1.0, 1.0, "valset")
    assert (result.trainset_size, result.valset_size) == (4, 2)
    assert result.lm["model"] == "dummy" and result.program.state == result.state_uri
    state = read_payload(result.state_ref)
    with open(result.state_uri, encoding="utf-8") as handle:
        assert json.load(handle) == state  # one state, two forms
    assert set(state) == {"predict"}


def test_saved_state_loads_back_with_its_demos_and_evaluates():
    result = optimize_program(
        PROGRAM,
        trainset=rows(),
        optimizer="BootstrapFewShot",
        options={"max_bootstrapped_demos": 3, "max_labeled_demos": 3},
        lm=qa_lm(),
        name="qa-bootstrap",
    )
    assert result.state_uri.endswith("qa-bootstrap.json") and result.demos == {"predict": 3}
    program = load_program(result.program)
    assert [d["question"] for d in program.predict.demos] == ["<<q0>>", "<<q1>>", "<<q2>>"]
    evaluation = evaluate_program(result.program, devset=rows(), metrics=["exact_match"], lm=qa_lm())
    assert evaluation.score("exact_match") == 1.0 and evaluation.program["state"] == result.state_uri


def test_artifacts_hold_scores_progress_and_the_state():
    result = optimize_program(PROGRAM, trainset=rows(), optimizer="LabeledFewShot", metric="f1", lm=qa_lm())
    scores = latest_artifact("optimize-scores")
    assert [(r["stage"], r["score"]) for r in json.loads(scores.data)] == [("before", 1.0), ("after", 1.0)]
    assert "f1 of dspy.ChainOfThought before and after LabeledFewShot" in scores.description
    program = latest_artifact("optimized-program")
    assert result.state_uri in program.data and '"demos"' in program.data
    assert latest_artifact("optimize-progress").data == 100.0


def test_bad_inputs_fail_before_any_lm_call():
    lm = qa_lm()
    with pytest.raises(PipelineSpecError, match="unknown optimizer 'Adam'; valid optimizers: .*SIMBA"):
        optimize_program(PROGRAM, trainset=rows(), optimizer="Adam", lm=lm)
    with pytest.raises(MetricError, match="unknown metric 'accuracy'"):
        optimize_program(PROGRAM, trainset=rows(), metric="accuracy", lm=lm)
    with pytest.raises(InputValidationError, match="trainset is empty"):
        optimize_program(PROGRAM, trainset=[], lm=lm)
    with pytest.raises(InputValidationError, match="trainset row 1 lacks it: 'question'"):
        optimize_program(
            PROGRAM, trainset=[{"question": "q", "answer": "a"}, {"q": "x", "answer": "b"}], lm=lm
        )
    with pytest.raises(InputValidationError, match="valset row 0"):
        optimize_program(PROGRAM, trainset=rows(), valset=[{"answer": "b"}], lm=lm)
    with pytest.raises(PipelineSpecError, match="rejected its options"):
        optimize_program(PROGRAM, trainset=rows(), options={"max_demoz": 1}, lm=lm)
    with pytest.raises(PipelineSpecError, match="unknown module"):
        optimize_program({"module": "dspy.Nope", "signature": "q -> a"}, trainset=rows(), lm=lm)
    assert lm.history == []
