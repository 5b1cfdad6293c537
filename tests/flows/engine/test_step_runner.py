"""The run-step flow: a batch in by reference, its result out by key, idempotent per batch key."""

import threading

import pytest
from dspy.utils.dummies import DummyLM

import tasks.lm
from dspex.exceptions import InputValidationError, PayloadError, PipelineSpecError
from flows.engine import step_runner
from flows.engine.executors.base import BatchRequest
from flows.engine.pools import shutdown_local_pools
from flows.engine.spec import PipelineSpec
from flows.engine.step_runner import (
    parse_step,
    read_batch_result,
    result_ref_uri,
    run_step,
    write_batch_result,
)
from flows.guards.resume import BatchJournals, ResumeStore
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


class _LM(DummyLM):
    """Answers ``a<i>`` for ``<<q<i>>>`` and counts the calls per question; with ``answer_first``,
    only that many calls are answered, the others fail (a worker dying mid-batch)."""

    def __init__(self, n, answer_first=None):
        super().__init__({f"<<q{i}>>": {"answer": f"a{i}"} for i in range(n)})
        self.answer_first = answer_first
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, prompt=None, messages=None, **kwargs):
        key = next((k for k in self.answers if k in str(messages)), None)
        with self.lock:
            self.calls.append(key)
            calls = len(self.calls)
        if self.answer_first is not None and calls > self.answer_first:
            raise InputValidationError("the worker died")  # not retried: the row just fails
        return super().__call__(prompt=prompt, messages=messages, **kwargs)


def _resume_key(step, rows):
    """The key the orchestrator sends with a module batch (`ResumeStore.worker_rows`)."""
    request = BatchRequest(step=step, rows=rows, pool="general", batch_key="dispatch-key")
    journals = ResumeStore("openai/test-model").worker_rows(request)
    assert journals is not None
    return journals.key


@pytest.mark.integration
def test_a_batch_whose_worker_died_after_n_rows_runs_only_the_other_rows_when_dispatched_again(
    monkeypatch,
):
    monkeypatch.setenv("DSPEX_POOL_GENERAL_CAPACITY", "1")  # rows in order: the first N complete
    step = module_step()
    rows = [{"question": f"<<q{i}>>"} for i in range(5)]
    batch = write_payload(rows)
    key = _resume_key(step, rows)
    first = _LM(5, answer_first=2)
    monkeypatch.setattr(tasks.lm, "build_lm", lambda settings: first)

    def killed(*args, **kwargs):  # the worker dies before it stores the batch's result
        raise RuntimeError("SIGKILL")

    monkeypatch.setattr(step_runner, "write_batch_result", killed)
    try:
        with pytest.raises(RuntimeError, match="SIGKILL"):
            run_step(step.model_dump(mode="json"), batch, "batch-killed", resume_key=key)
    finally:
        shutdown_local_pools()
    assert first.calls[:2] == ["<<q0>>", "<<q1>>"]  # two rows completed, then the worker "died"
    assert read_batch_result("batch-killed") is None

    monkeypatch.setattr(step_runner, "write_batch_result", write_batch_result)
    again = _LM(5)
    monkeypatch.setattr(tasks.lm, "build_lm", lambda settings: again)
    try:
        ref = run_step(step.model_dump(mode="json"), batch, "batch-killed", resume_key=key)
    finally:
        shutdown_local_pools()
    assert sorted(again.calls) == ["<<q2>>", "<<q3>>", "<<q4>>"]  # the journaled rows were not run
    found = read_batch_result("batch-killed")
    assert found is not None and found[0] == ref
    result = found[1]
    assert [o["answer"] for o in result.outputs] == ["a0", "a1", "a2", "a3", "a4"]  # each once, in order
    assert result.errors == [None] * 5 and result.reused == 2
    assert result.latencies_ms[:2] == [0.0, 0.0] and all(ms > 0 for ms in result.latencies_ms[2:])

    # A third attempt (the second worker died after storing): the stored result, nothing run.
    third = _LM(5)
    monkeypatch.setattr(tasks.lm, "build_lm", lambda settings: third)
    assert run_step(step.model_dump(mode="json"), batch, "batch-killed", resume_key=key) == ref
    assert third.calls == []


@pytest.mark.integration
def test_a_batch_whose_rows_were_all_journaled_runs_nothing_and_old_parameter_sets_still_run(monkeypatch):
    step = module_step()
    rows = [{"question": "<<q0>>"}, {"question": "<<q1>>"}]
    key = _resume_key(step, rows)
    journals = BatchJournals(key)
    keys = journals.row_keys(step, rows)
    assert keys is not None
    journal = journals.writer(keys)  # an earlier attempt completed both rows, then died
    journal.add(0, {"answer": "kept-0"})
    journal.add(1, {"answer": "kept-1"})
    journal.close(remove=False)
    lm = _LM(2)
    monkeypatch.setattr(tasks.lm, "build_lm", lambda settings: lm)
    run_step(step.model_dump(mode="json"), write_payload(rows), "batch-all-kept", resume_key=key)
    found = read_batch_result("batch-all-kept")
    assert found is not None and lm.calls == []
    assert [o["answer"] for o in found[1].outputs] == ["kept-0", "kept-1"] and found[1].reused == 2
    # Without a resume key (an older orchestrator's parameters) the batch runs whole, as before.
    run_step(step.model_dump(mode="json"), write_payload(rows), "batch-no-key")
    assert sorted(lm.calls) == ["<<q0>>", "<<q1>>"]
    # Rows that do not make up the key's batch (another worker's keying) are run, not mismatched.
    other = [{"question": "<<q1>>"}, {"question": "<<q0>>"}]
    run_step(step.model_dump(mode="json"), write_payload(other), "batch-other", resume_key=key)
    found = read_batch_result("batch-other")
    assert found is not None and [o["answer"] for o in found[1].outputs] == ["a1", "a0"]
    assert found[1].reused == 0


def test_a_malformed_resume_key_is_a_payload_error():
    with pytest.raises(PayloadError, match="resume key"):
        BatchJournals("not-a-step-key")
    with pytest.raises(PayloadError, match="batch key"):
        BatchJournals("../escape")
