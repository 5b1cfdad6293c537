"""Issue 13 item 12: a user program's inputs come from its ``forward`` parameters, and a step's
signature must fit the program, before any row runs.

Original failure: a user-program step without a ``signature`` validated, then every row failed with
``forward() missing 1 required positional argument: 'question'``; a signature whose outputs the
program did not produce gave a silent empty ``answer`` field.
"""

from __future__ import annotations

import pytest
from dspy.utils.dummies import DummyLM

import registry
from dspex.exceptions import InputValidationError, PipelineSpecError
from flows import PipelineSpec, run_pipeline
from flows.engine.pools import shutdown_local_pools
from tasks.modules import ProgramFields, program_fields

PKG = "fixtures_pkg.programs_io"


@pytest.fixture(autouse=True)
def _programs(monkeypatch):
    monkeypatch.setenv("DSPEX_TRUSTED_IMPORT_ROOTS", '["fixtures_pkg"]')
    for name in ("Answerer", "Declared", "KwargsOnly", "Silent"):
        registry.register_user_module(f"{PKG}:{name}")


def spec(step, **extra):
    return PipelineSpec.model_validate({"name": "p", "steps": [step], **extra})


def test_fields_are_read_from_the_class():
    assert program_fields(f"{PKG}:Answerer") == ProgramFields(("question",), ("context",), False, None)
    assert program_fields(f"{PKG}:Declared").outputs == ("verdict",)
    assert program_fields(f"{PKG}:KwargsOnly").open


def test_inputs_are_inferred_from_forward():
    pipeline = spec({"module": f"{PKG}:Answerer"})
    assert pipeline.required_inputs() == ["question"]


def test_uninferable_inputs_are_rejected_up_front():
    with pytest.raises((PipelineSpecError, ValueError), match="cannot be inferred"):
        spec({"module": f"{PKG}:KwargsOnly"})
    spec({"module": f"{PKG}:KwargsOnly", "inputs": {"question": "question"}})  # a mapping says it


def test_signature_must_fit_the_program():
    with pytest.raises((PipelineSpecError, ValueError), match=r"outputs \['answer'\] are not produced"):
        spec({"module": f"{PKG}:Declared", "signature": "question -> answer"})
    with pytest.raises((PipelineSpecError, ValueError), match=r"inputs \['topic'\] are not parameters"):
        spec({"module": f"{PKG}:Answerer", "signature": "topic -> answer"})
    spec({"module": f"{PKG}:Declared", "signature": "question -> verdict"})


@pytest.mark.integration
def test_program_without_signature_runs_and_missing_fields_fail_up_front():
    try:
        result = run_pipeline(
            spec({"module": f"{PKG}:Answerer"}), data=[{"question": "q1"}, {"question": "q2"}], lm=DummyLM([])
        )
        assert result.summary.failed == 0
        assert [r["answer"] for r in result.rows()] == ["A:q1", "A:q2"]
        with pytest.raises(InputValidationError, match="question"):
            run_pipeline(spec({"module": f"{PKG}:Answerer"}), data=[{"topic": "x"}], lm=DummyLM([]))
        silent = run_pipeline(
            spec({"module": f"{PKG}:Silent", "signature": "question -> answer"}, continue_on_error=True),
            data=[{"question": "q"}],
            lm=DummyLM([]),
        )
        (failure,) = silent.summary.failures
        assert "not the output(s) ['answer']" in failure.message
        assert "answer" not in silent.rows()[0]
    finally:
        shutdown_local_pools()
