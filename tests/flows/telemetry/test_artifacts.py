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
