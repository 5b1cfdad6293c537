"""Batch sizing once estimates are learned (issue 26.1): 12,000 rows went as 1 batch to one worker.

`plan_batch_size` is a pure function; the last test enters through `run_pipeline` and reads the
route log line.
"""

from __future__ import annotations

import logging
import math

import pytest
from dspy.utils.dummies import DummyLM

import registry
from dspex.settings import get_settings
from flows import PipelineSpec, run_pipeline
from flows.engine.pools import shutdown_local_pools
from flows.engine.router import plan_batch_size, route_step


def test_a_fast_learned_estimate_no_longer_makes_one_batch_of_everything() -> None:
    # The case: 12,000 rows, ~5 ms per row learned, two live general workers.
    size = plan_batch_size(12_000, 5.0, 8, slots=2, target_seconds=20.0, max_rows=1000, max_seconds=60.0)
    assert size == 1000  # capped in rows: 12 batches, both workers busy, a lost batch costs 1000 rows
    # Without the row cap, still at least one batch per live worker.
    size = plan_batch_size(12_000, 5.0, 8, slots=2, target_seconds=20.0, max_rows=10**9, max_seconds=10**6)
    assert math.ceil(12_000 / size) >= 2


def test_the_seconds_cap_bounds_a_batch_of_slow_rows() -> None:
    # 2 s per row on 8 rows at once: 60 s of work is 240 rows (a 300 s target would make 1200).
    assert plan_batch_size(5000, 2000.0, 8, target_seconds=300.0, max_rows=10_000, max_seconds=60.0) == 240


@pytest.mark.parametrize(
    ("rows", "slots"), [(1, 1), (7, 3), (100, 1), (100, 4), (12_000, 2), (40_000, 3), (10**6, 16)]
)
def test_sizes_stay_in_range_and_every_slot_gets_a_batch(rows: int, slots: int) -> None:
    size = plan_batch_size(rows, 1.0, 8, slots=slots, max_rows=1000)
    assert 1 <= size <= min(rows, 1000)
    assert math.ceil(rows / size) >= min(slots, rows)


def test_route_step_gives_each_live_worker_a_batch() -> None:
    spec = PipelineSpec.model_validate(
        {"name": "p", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}
    )
    settings = get_settings(mode="distributed", batch_max_rows=10**6, batch_max_seconds=10**6)
    for _ in range(settings.registry_min_samples):
        registry.record_duration("dspy.Predict", 5.0, pool="general")
    decision = route_step(spec.steps[0], 12_000, settings, lambda _p: (True, ""), slots=lambda _p: 2)
    assert decision.estimate_source == "learned" and decision.slots == 2
    assert decision.batches >= 2


@pytest.mark.integration
def test_run_pipeline_route_line_shows_capped_batches(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DSPEX_BATCH_MAX_ROWS", "25")
    monkeypatch.setenv("DSPEX_RESUME", "false")
    for _ in range(3):  # a learned estimate of 1 ms per row: before, all 100 rows went as one batch
        registry.record_duration("dspy.Predict", 1.0, pool="general")
    spec = PipelineSpec.model_validate(
        {"name": "sized", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}
    )
    rows = [{"question": f"q{i}"} for i in range(100)]
    try:
        with caplog.at_level(logging.INFO):
            result = run_pipeline(spec, data=rows, lm=DummyLM([{"answer": "a"}] * 100))
    finally:
        shutdown_local_pools()
    assert result.summary.rows_out == 100
    route = [r.getMessage() for r in caplog.records if r.getMessage().startswith("route ")]
    assert route and "(100 rows in 4 batches: 4 x 25)" in route[0], route
