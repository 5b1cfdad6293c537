"""tasks.optimize: the optimizer allowlist, options, and a compile with each optimizer family.

Every optimizer the flow offers runs here with DSPy's DummyLM and tiny settings. The DummyLM answers
the QA questions by key, and a catch-all entry answers the optimizers' own prompts (instruction
proposals for COPRO and MIPROv2, SIMBA's advice, GEPA's reflection) with a superset of fields.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import dspy
import pytest
from dspy.utils.dummies import DummyLM

from dspex.exceptions import ConfigurationError, PipelineSpecError
from tasks.evaluate import ProgressCounter, resolve_metric, to_examples
from tasks.optimize import OPTIMIZERS, build_optimizer, compile_program, optimizer_names, resolve_optimizer

QA = {"<<q0>>": "Paris", "<<q1>>": "blue", "<<q2>>": "four", "<<q3>>": "Madrid"}
_ANY = {
    "reasoning": "because",
    "answer": "unknown",
    "proposed_instruction": "Answer in one word.",
    "proposed_prefix_for_output_field": "Answer:",
    "discussion": "fine",
    "module_advice": "{}",
    "program_description": "QA",
    "module_description": "QA",
    "observations": "none",
    "summary": "none",
    "new_instruction": "Answer in one word.",
}

# Tiny settings per optimizer: (constructor options, compile options).
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
    answers[""] = _ANY  # the optimizers' own prompts
    return DummyLM(answers)


def trainset() -> list[dspy.Example]:
    return to_examples([{"question": q, "answer": a} for q, a in QA.items()], ["question"])


def test_the_registry_is_the_allowlist():
    assert optimizer_names() == list(OPTIMIZERS)
    assert resolve_optimizer("dspy.BootstrapFewShot") is dspy.BootstrapFewShot
    with pytest.raises(
        PipelineSpecError, match="unknown optimizer 'Ensemble'; valid optimizers: LabeledFewShot"
    ):
        resolve_optimizer("Ensemble")  # in the registry, but not an optimizer this flow calls
    with pytest.raises(PipelineSpecError, match="unknown optimizer 'dspy.Predict'"):
        resolve_optimizer("dspy.Predict")


@pytest.mark.parametrize(("name", "package"), [("GEPA", "gepa"), ("MIPROv2", "optuna")])
def test_a_missing_optional_dependency_says_what_to_install(monkeypatch, name, package):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda mod, *a: None if mod == package else real(mod, *a)
    )
    with pytest.raises(ConfigurationError, match=f"needs the optional package '{package}'.*pip install"):
        resolve_optimizer(name)


def test_rejected_options_and_a_missing_metric_are_typed_errors():
    with pytest.raises(PipelineSpecError, match=r"BootstrapFewShot rejected its options \['max_demoz'\]"):
        build_optimizer("BootstrapFewShot", lambda *a: 1.0, {"max_demoz": 3}, lm=None, num_threads=1)
    with pytest.raises(PipelineSpecError, match="COPRO needs a metric"):
        build_optimizer("COPRO", None, {}, lm=None, num_threads=1)
    with pytest.raises(PipelineSpecError, match="rejected its options"):
        build_optimizer("COPRO", lambda *a: 1.0, {"breadth": 1}, lm=None, num_threads=1)  # DSPy: breadth > 1


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_compiles_a_copy_and_scores_before_and_after(name):
    options, compile_options = TINY[name]
    program = dspy.ChainOfThought("question -> answer")
    progress = ProgressCounter()
    compiled, outcome = compile_program(
        program,
        name,
        trainset(),
        None,
        resolve_metric("exact_match"),
        lm=qa_lm(),
        options=options,
        compile_options=compile_options,
        progress=progress,
    )
    assert program.predict.demos == []  # the student is left as it was
    assert compiled is not program and isinstance(compiled, dspy.ChainOfThought)
    assert outcome.optimizer == name and outcome.scored_on == "trainset"
    assert outcome.score_before == outcome.score_after == 1.0  # the DummyLM knows every answer
    assert progress.snapshot() == ("score-after", len(QA), len(QA))
    if name == "LabeledFewShot":
        assert outcome.metric_calls == 0 and len(compiled.predict.demos) == 2
    else:
        assert outcome.metric_calls > 0
    if name == "BootstrapFewShot":
        assert len(compiled.predict.demos) == 2
    if name == "COPRO":
        assert compiled.predict.signature.instructions == "Answer in one word."


def test_bootstrap_gives_the_same_program_as_dspy_directly():
    metric = resolve_metric("exact_match")
    ours, _ = compile_program(
        dspy.ChainOfThought("question -> answer"),
        "BootstrapFewShot",
        trainset(),
        None,
        metric,
        lm=qa_lm(),
        options={"max_bootstrapped_demos": 3, "max_labeled_demos": 3},
    )
    with dspy.context(lm=qa_lm()):
        theirs = dspy.BootstrapFewShot(metric=metric, max_bootstrapped_demos=3, max_labeled_demos=3).compile(
            dspy.ChainOfThought("question -> answer"), trainset=trainset()
        )
    assert ours.dump_state() == theirs.dump_state()


def test_scores_use_the_valset_when_given():
    val = to_examples(
        [{"question": "<<q0>>", "answer": "Rome"}, {"question": "<<q1>>", "answer": "blue"}], ["question"]
    )
    _, outcome = compile_program(
        dspy.Predict("question -> answer"),
        "LabeledFewShot",
        trainset(),
        val,
        None,
        lm=qa_lm(),
        options={"k": 1},
    )
    assert outcome.scored_on == "valset" and outcome.score_before == outcome.score_after == 0.5
