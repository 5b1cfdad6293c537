"""Run metrics: percentiles, per-step figures, the summary artifact's metrics table."""

import asyncio

import pytest
from dspy.utils.dummies import DummyLM
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from flows import PipelineSpec, run_pipeline
from flows.engine.context import StepRecord
from flows.engine.pools import shutdown_local_pools
from flows.telemetry.artifacts import summary_key
from flows.telemetry.metrics import build_metrics, collect, metrics_markdown, observe_batches, percentile
from tasks.batch import BatchResult, RowError

SPEC = {
    "name": "metrics-qa",
    "steps": [
        {"name": "answer", "module": "dspy.Predict", "signature": "question -> answer"},
        {"name": "shout", "native": "template", "template": "{{ answer }}!", "output": "loud"},
    ],
}


def test_percentile_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 95) == 95.0
    assert percentile([7.0], 95) == 7.0 and percentile([], 50) is None


def test_per_step_figures_skip_failed_rows_latencies():
    ok = RowError(type="ValueError", message="bad", retryable=False)
    result = BatchResult(
        outputs=[{}, {}, None], errors=[None, None, ok], latencies_ms=[10.0, 30.0, 999.0], wall_ms=40.0
    )
    with collect() as collected:
        observe_batches("answer", [result, RuntimeError("whole batch failed")])
    record = StepRecord(step="answer", kind="module", pool="general", rows=4, failed=2, actual_ms=500.0)
    metrics = build_metrics([record], collected, rows=4, failed=2, wall_ms=1000.0)
    (step,) = metrics.steps
    assert (step.p50_row_ms, step.p95_row_ms) == (10.0, 30.0)  # the failed row's 999 ms is not a latency
    assert step.error_rate == 0.5 and step.rows_per_s == 8.0
    assert metrics.rows_per_s == 4.0 and metrics.error_rate == 0.5 and metrics.peak_rss_mb > 10
    table = "\n".join(metrics_markdown(metrics))
    assert "| answer | general | 4 | 8.0 | 10.0 | 30.0 | 50.00% |" in table


def test_observing_outside_a_run_does_nothing():
    observe_batches("answer", [])  # no collector: no error, nothing kept
    assert metrics_markdown(None) == []


@pytest.mark.integration
def test_run_metrics_are_in_the_summary_and_its_artifact():
    lm = DummyLM({f"<<q{i}>>": {"answer": f"a{i}"} for i in range(8)})
    result = run_pipeline(
        PipelineSpec.model_validate(SPEC), data=[{"question": f"<<q{i}>>"} for i in range(8)], lm=lm
    )
    shutdown_local_pools()
    metrics = result.summary.metrics
    assert metrics is not None
    assert metrics.rows_per_s > 0 and metrics.error_rate == 0 and metrics.peak_rss_mb > 10
    answer = next(s for s in metrics.steps if s.step == "answer")
    assert answer.rows == 8 and answer.error_rate == 0
    assert answer.p50_row_ms is not None and answer.p95_row_ms is not None
    assert 0 < answer.p50_row_ms <= answer.p95_row_ms

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[summary_key("metrics-qa")])),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )

    (artifact,) = asyncio.run(read())
    assert (
        "## Run metrics" in artifact.data
        and "p95 row ms" in artifact.data
        and "| answer | general | 8 |" in artifact.data
    )
