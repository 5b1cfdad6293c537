"""The run-step flow: a batch in by reference, its result out by key, idempotent per batch key."""

import pytest

from dspex.exceptions import PayloadError, PipelineSpecError
from flows.engine import step_runner
from flows.engine.spec import PipelineSpec
from flows.engine.step_runner import (
    parse_step,
    read_batch_result,
    result_ref_uri,
    run_step,
    write_batch_result,
)
from tasks.batch import BatchResult
from tasks.payloads import write_payload


def module_step():
    spec = PipelineSpec.model_validate(
        {"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}
    )
    return spec.steps[0]


def test_parse_step_round_trips_a_module_step_and_rejects_other_kinds():
    step = module_step()
    assert parse_step(step.model_dump(mode="json")) == step
    with pytest.raises(PipelineSpecError, match="module and retrieve steps"):
        parse_step({"kind": "native", "native": "metric", "name": "m"})
    with pytest.raises(PipelineSpecError, match="invalid step"):
        parse_step({"kind": "module", "name": "x", "module": "dspy.Predict", "bogus": 1})


def test_result_written_by_key_reads_back_equal():
    result = BatchResult(
        outputs=[{"answer": "a"}, None], errors=[None, None], latencies_ms=[1.0, 0.0], wall_ms=2.0
    )
    ref = write_batch_result(result, "key-1")
    found = read_batch_result("key-1")
    assert found is not None and found[0] == ref and found[1] == result
    assert read_batch_result("other-key") is None
    assert result_ref_uri("key-1").endswith("results/key-1.ref.json")


def test_unsafe_batch_keys_are_refused():
    with pytest.raises(PayloadError, match="batch key"):
        result_ref_uri("../escape")


@pytest.mark.integration
def test_run_step_runs_the_batch_on_the_offline_lm_and_stores_the_result():
    rows = [{"question": "What is the capital of France?"}, {"question": "Who wrote Hamlet?"}]
    ref = run_step(module_step().model_dump(mode="json"), write_payload(rows), "batch-a", pool="general")
    found = read_batch_result("batch-a")
    assert found is not None and found[0] == ref
    result = found[1]
    assert len(result.outputs) == 2 and all(o is not None and "answer" in o for o in result.outputs)
    assert result.errors == [None, None]


@pytest.mark.integration
def test_a_re_dispatched_batch_returns_the_stored_result_without_running(monkeypatch):
    stored = BatchResult(outputs=[{"answer": "kept"}], errors=[None], latencies_ms=[3.0], wall_ms=3.0)
    first = write_batch_result(stored, "batch-b")

    def must_not_run(*args, **kwargs):
        raise AssertionError("a batch with a stored result was recomputed")

    monkeypatch.setattr(step_runner, "execute_step_batch", must_not_run)
    again = run_step(module_step().model_dump(mode="json"), write_payload([{"question": "q"}]), "batch-b")
    assert again == first
