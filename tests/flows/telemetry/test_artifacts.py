"""Artifact keys per pipeline, and the pool column that tells which pool actually ran a step."""

from flows.engine.context import StepRecord
from flows.telemetry.artifacts import duration_key, duration_rows, pool_label, summary_key


def test_every_pipeline_has_its_own_duration_and_summary_keys():
    assert duration_key("QA v2") == "duration-estimates-qa-v2"
    assert duration_key("rag-qa") != duration_key("three-pools")
    assert summary_key("rag-qa") == "pipeline-summary-rag-qa"


def test_the_pool_column_shows_the_pool_that_ran_and_the_fallback():
    routed = StepRecord(step="a", kind="module", pool="gpu", reason="registry: dspy.Embeddings -> gpu")
    assert pool_label(routed) == "gpu"
    fallen = StepRecord(
        step="r",
        kind="retrieve",
        pool="general",
        reason="fallback: pool 'gpu' unavailable (no live worker in work pool 'gpu') -> 'general'",
    )
    assert pool_label(fallen) == "general (fallback from gpu)"
    assert duration_rows([routed, fallen])[1]["pool"] == "general (fallback from gpu)"


def test_batches_that_moved_at_run_time_are_shown_with_where_they_ran():
    moved = StepRecord(
        step="p",
        kind="module",
        pool="general",
        requested_pool="general",
        reason="registry: dspy.Predict -> general",
        actual_pool=["general", "optimizer", "general"],
    )
    assert pool_label(moved) == "general, optimizer (fallback from general)"
    stayed = StepRecord(step="p", kind="module", pool="gpu", requested_pool="gpu", actual_pool=["gpu"])
    assert pool_label(stayed) == "gpu"


def test_a_batch_step_shows_its_rounds_times_and_our_side_of_each_round():
    from flows.batch_api.jobs import LMBatchRecord

    batch = LMBatchRecord(
        job="j1",
        rounds=2,
        requests=20,
        batch_ids=["b1", "b2"],
        submitted_at=["2026-12-03T10:00:00+00:00", "2026-12-03T10:05:00+00:00"],
        completed_at=["2026-12-03T10:04:00+00:00", None],
        wait_s=540.0,
        replay_ms=[1200.0, 2500.0],
        io_ms=[300.0, 410.0],
        finish_ms=900.0,
        price="cost map batch price",
    )
    record = StepRecord(step="qa", kind="module", pool="provider-batch", rows=10, lm_batch=batch)
    (row,) = duration_rows([record])
    assert row["batch rounds"] == 2 and row["batch requests"] == 20
    assert row["batch submitted"] == "2026-12-03T10:00:00+00:00, 2026-12-03T10:05:00+00:00"
    assert row["batch completed"] == "2026-12-03T10:04:00+00:00, -"
    assert row["batch wait s"] == 540.0 and row["batch price"] == "cost map batch price"
    assert row["batch programs s"] == "1.20, 2.50, 0.90" and row["batch I/O s"] == "0.30, 0.41"
    online = duration_rows([StepRecord(step="qa", kind="module", pool="general", rows=10)])[0]
    assert not any(k.startswith("batch ") and k != "batch size" for k in online)
