"""run_pipeline through real Prefect flows (the session's test server) with DSPy's DummyLM."""

import threading

import dspy
import pytest
from dspy.utils.dummies import DummyLM
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from dspex.exceptions import InputValidationError, PoolUnavailableError, StepExecutionError
from flows import PipelineSpec, run_pipeline
from flows.engine.pools import shutdown_local_pools
from flows.telemetry.artifacts import duration_key

pytestmark = pytest.mark.integration

QA = {"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}


@pytest.fixture(autouse=True)
def _fresh_pools():
    yield
    shutdown_local_pools()


def keyed_lm(n, field="answer"):
    return DummyLM({f"<<q{i}>>": {field: f"a{i}"} for i in range(n)})


def rows(n):
    return [{"question": f"<<q{i}>>"} for i in range(n)]


def test_one_step_predict_pipeline_keeps_order_and_reports():
    result = run_pipeline(PipelineSpec.model_validate(QA), data=rows(30), lm=keyed_lm(30))
    out = result.rows()
    assert [r["answer"] for r in out] == [f"a{i}" for i in range(30)]
    summary = result.summary
    assert (summary.rows_in, summary.rows_out, summary.failed) == (30, 30, 0)
    (record,) = summary.steps
    assert record.pool == "general" and record.module == "dspy.Predict"
    assert record.batches >= 1 and record.estimated_ms is not None and record.actual_ms > 0


def test_same_predictions_as_running_the_module_directly():
    lm = keyed_lm(5)
    piped = run_pipeline(PipelineSpec.model_validate(QA), data=rows(5), lm=lm).rows()
    direct = []
    predict = dspy.Predict("question -> answer")
    with dspy.context(lm=lm):
        for r in rows(5):
            direct.append(predict(**r).answer)
    assert [r["answer"] for r in piped] == direct


def test_duration_artifact_is_readable_through_the_client():
    run_pipeline(PipelineSpec.model_validate(QA), data=rows(4), lm=keyed_lm(4))

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[duration_key(QA["name"])])),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )

    import asyncio

    artifacts = asyncio.run(read())
    assert artifacts
    table = artifacts[0].data
    assert "estimated ms" in str(table) and "actual ms" in str(table) and "predict" in str(table)


def test_missing_input_field_fails_before_any_lm_call():
    lm = keyed_lm(2)
    with pytest.raises(InputValidationError, match="question"):
        run_pipeline(PipelineSpec.model_validate(QA), data=[{"query": "x"}], lm=lm)
    assert lm.history == []


def test_bad_input_type_fails_before_any_lm_call():
    spec = PipelineSpec.model_validate(
        {
            "name": "typed",
            "steps": [{"module": "dspy.Predict", "signature": "question: str, n: int -> answer"}],
        }
    )
    lm = keyed_lm(2)
    with pytest.raises(InputValidationError, match="n"):
        run_pipeline(spec, data=[{"question": "<<q0>>", "n": "not a number"}], lm=lm)
    assert lm.history == []


class FlakyLM(DummyLM):
    """Fails a given question with the given error the first `times` calls."""

    def __init__(self, answers, fail_on, error, times=1):
        super().__init__(answers)
        self.fail_on, self.error, self.times = fail_on, error, times
        self.calls = {}
        self.lock = threading.Lock()

    def __call__(self, prompt=None, messages=None, **kwargs):
        text = str(messages)
        with self.lock:
            for key in self.answers:
                if key in text:
                    self.calls[key] = self.calls.get(key, 0) + 1
                    if key == self.fail_on and self.calls[key] <= self.times:
                        raise self.error
        return super().__call__(prompt=prompt, messages=messages, **kwargs)


def test_transient_errors_are_retried_and_completed_rows_are_not_recomputed(monkeypatch):
    monkeypatch.setenv("DSPEX_TASK_RETRY_DELAY_SECONDS", "0")
    monkeypatch.setenv("DSPEX_BATCH_SIZE", "10")
    lm = FlakyLM(keyed_lm(10).answers, "<<q3>>", dspy.LMRateLimitError("slow down"), times=1)
    result = run_pipeline(PipelineSpec.model_validate(QA), data=rows(10), lm=lm)
    assert result.summary.failed == 0
    assert lm.calls["<<q3>>"] == 2
    assert all(count == 1 for key, count in lm.calls.items() if key != "<<q3>>")


def test_permanent_errors_keep_completed_rows(monkeypatch):
    lm = FlakyLM(keyed_lm(6).answers, "<<q2>>", dspy.LMAuthError("bad key"), times=99)
    with pytest.raises(StepExecutionError) as info:
        run_pipeline(PipelineSpec.model_validate(QA), data=rows(6), lm=lm, continue_on_error=False)
    from tasks.payloads import PayloadRef, read_rows

    # continue_on_error is false (no longer the default, issue 24): the failed row stops the run; rows not tried yet are kept, marked
    # not attempted (retryable), and every completed row is kept.
    kept = read_rows(PayloadRef.model_validate(info.value.partial_ref))
    assert kept[2]["_error"]["type"] == "LMAuthError" and kept[2]["_error"]["retryable"] is False
    done = [r for r in kept if "_error" not in r]
    skipped = [r for r in kept if r.get("_error", {}).get("not_attempted")]
    assert info.value.completed == len(done) and len(done) + len(skipped) == 5
    assert all(r["answer"] == f"a{r['_row']}" for r in done)
    assert all(r["_error"]["retryable"] and "answer" not in r for r in skipped)


def test_continue_on_error_reports_failed_rows(monkeypatch):
    lm = FlakyLM(keyed_lm(6).answers, "<<q2>>", dspy.LMAuthError("bad key"), times=99)
    result = run_pipeline(PipelineSpec.model_validate(QA), data=rows(6), lm=lm, continue_on_error=True)
    assert (result.summary.rows_out, result.summary.failed) == (5, 1)
    (failure,) = result.summary.failures
    assert (failure.row, failure.step, failure.type) == (2, "predict", "LMAuthError")


def test_api_key_never_reaches_parameters_results_or_artifacts(caplog):
    lm = keyed_lm(3)
    lm.kwargs["api_key"] = "sk-super-secret-value"
    result = run_pipeline(PipelineSpec.model_validate(QA), data=rows(3), lm=lm)
    assert "sk-super-secret-value" not in result.model_dump_json()
    assert "sk-super-secret-value" not in caplog.text
    from flows.engine.params import summarize_parameter

    assert "sk-super-secret" not in str(summarize_parameter(lm))


def test_composite_steps_parallel_conditional_map():
    spec = PipelineSpec.model_validate(
        {
            "name": "composite",
            "steps": [
                {
                    "parallel": {
                        "short": [{"module": "dspy.Predict", "signature": "question -> answer"}],
                        "shout": [
                            {"native": "template", "template": "{{ question | upper }}", "output": "loud"}
                        ],
                    }
                },
                {
                    "when": {"field": "short.answer", "op": "eq", "value": "a1"},
                    "then": [{"native": "template", "template": "yes", "output": "picked"}],
                    "otherwise": [{"native": "template", "template": "no", "output": "picked"}],
                },
                {
                    "map": "items",
                    "item": "item",
                    "steps": [{"native": "template", "template": "<{{ item }}>", "output": "wrapped"}],
                    "collect": "wrapped",
                },
            ],
        }
    )
    data = [{"question": f"<<q{i}>>", "items": ["x", "y"]} for i in range(3)]
    out = run_pipeline(spec, data=data, lm=keyed_lm(3)).rows()
    assert [r["short"]["answer"] for r in out] == ["a0", "a1", "a2"]
    assert out[0]["shout"]["loud"] == "<<Q0>>"
    assert [r["picked"] for r in out] == ["no", "yes", "no"]
    assert [r["conditional_path"] for r in out] == ["otherwise", "then", "otherwise"]
    assert out[0]["map"] == ["<x>", "<y>"]


def test_fallback_policy_reroutes_or_fails(monkeypatch):
    monkeypatch.setenv("DSPEX_POOL_OPTIMIZER_CAPACITY", "0")
    spec = PipelineSpec.model_validate(
        {
            "name": "fb",
            "steps": [{"module": "dspy.Predict", "signature": "question -> answer", "pool": "optimizer"}],
        }
    )
    result = run_pipeline(spec, data=rows(2), lm=keyed_lm(2))
    (record,) = result.summary.steps
    assert record.pool == "general" and "fallback" in record.reason
    monkeypatch.setenv("DSPEX_FALLBACK_POLICY", "fail")
    with pytest.raises(PoolUnavailableError, match="optimizer"):
        run_pipeline(spec, data=rows(2), lm=keyed_lm(2))


def test_learned_estimates_improve_by_the_third_run(monkeypatch):
    monkeypatch.setenv("DSPEX_BATCH_SIZE", "8")
    errors = []
    for _ in range(3):
        result = run_pipeline(PipelineSpec.model_validate(QA), data=rows(32), lm=keyed_lm(32))
        (record,) = result.summary.steps
        errors.append((record.estimate_source, record.error_pct))
    assert errors[0][0] == "static"
    assert errors[2][0] == "learned"
    assert errors[2][1] < errors[0][1]
