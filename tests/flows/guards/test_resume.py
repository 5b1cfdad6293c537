"""Tests of `flows.guards.resume`: the batch-result store and row-level resume (no Prefect needed)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from dspex.exceptions import PayloadError
from flows.engine.spec import PipelineSpec
from flows.guards.resume import (
    BatchStore,
    ResumeStore,
    batch_key,
    read_batch_result,
    row_key,
    step_key,
    write_batch_result,
)
from tasks.batch import BatchResult, RowError


def _step(signature: str = "question -> answer", **extra: object) -> object:
    spec = PipelineSpec.model_validate(
        {"name": "qa", "steps": [{"module": "dspy.Predict", "signature": signature, **extra}]}
    )
    return spec.steps[0]


def _result(outputs: list[dict | None], errors: list[RowError | None] | None = None) -> BatchResult:
    n = len(outputs)
    return BatchResult(outputs=outputs, errors=errors or [None] * n, latencies_ms=[1.0] * n, wall_ms=1.0)


def test_step_key_ignores_name_batch_size_and_pool_but_not_lm_or_signature() -> None:
    base = step_key(_step(), "lm-a")
    assert step_key(_step(name="other", batch_size=3), "lm-a") == base
    assert step_key(_step(), "lm-b") != base
    assert step_key(_step("question -> short_answer"), "lm-a") != base
    assert step_key(_step(), "lm-a", salt="run-1") != base


def test_row_key_depends_only_on_the_fields_read() -> None:
    step = _step()
    assert row_key(step, {"question": "q", "noise": 1}) == row_key(step, {"question": "q", "noise": 2})
    assert row_key(step, {"question": "q"}) != row_key(step, {"question": "r"})


def test_store_round_trip_by_batch_key(tmp_path: Path) -> None:
    key = batch_key("a" * 32, ["r1", "r2"])
    result = _result([{"answer": "x"}, None], [None, RowError(type="E", message="m", retryable=True)])
    assert read_batch_result(key, str(tmp_path)) is None
    write_batch_result(result, key, str(tmp_path), row_keys=["r1", "r2"])
    found = read_batch_result(key, str(tmp_path))
    assert found is not None and found[1] == result
    # Only completed rows are offered for resume.
    assert BatchStore(str(tmp_path)).completed("a" * 32) == {"r1": {"answer": "x"}}


def test_bad_keys_and_mismatched_row_keys_are_typed_errors(tmp_path: Path) -> None:
    store = BatchStore(str(tmp_path))
    with pytest.raises(PayloadError, match="batch key"):
        store.read("../../etc/passwd")
    with pytest.raises(PayloadError, match="row keys"):
        store.write(batch_key("b" * 32, ["x"]), _result([{"a": 1}]), ["x", "y"])


def test_a_corrupt_stored_file_is_skipped_not_reused(tmp_path: Path) -> None:
    store = BatchStore(str(tmp_path))
    good = batch_key("c" * 32, ["r1"])
    store.write(good, _result([{"answer": "ok"}]), ["r1"])
    bad = batch_key("c" * 32, ["r2"])
    store.write(bad, _result([{"answer": "lost"}]), ["r2"])
    Path(store.ref_uri(bad)).write_text("{not json")
    assert store.completed("c" * 32) == {"r1": {"answer": "ok"}}
    with pytest.raises(PayloadError, match="corrupt"):
        store.read(bad)


def test_resume_store_reuses_completed_rows_whatever_the_batching(tmp_path: Path) -> None:
    step = _step()
    rows = [{"question": f"q{i}"} for i in range(6)]
    first = ResumeStore("lm", str(tmp_path))
    # The first run completed rows 0-3 in two batches of two, row 4 failed, row 5 never ran.
    for chunk in ([0, 1], [2, 3, 4]):
        batch = [rows[i] for i in chunk]
        outputs = [{"answer": f"a{i}"} if i != 4 else None for i in chunk]
        errors = [None if i != 4 else RowError(type="E", message="m", retryable=True) for i in chunk]
        first.store(SimpleNamespace(step=step, rows=batch), _result(outputs, errors))

    second = ResumeStore("lm", str(tmp_path))
    reused, remaining = second.split(step, rows, list(range(6)))
    assert reused == {i: {"answer": f"a{i}"} for i in range(4)}
    assert remaining == [4, 5] and second.reused_rows == 4
    # A batch of completed rows (batched differently than before) is answered whole...
    whole = second.lookup(SimpleNamespace(step=step, rows=[rows[3], rows[0]]))
    assert whole is not None and whole.outputs == [{"answer": "a3"}, {"answer": "a0"}] and whole.reused == 2
    # ...one with an unfinished row is not.
    assert second.lookup(SimpleNamespace(step=step, rows=[rows[0], rows[5]])) is None
    # Another LM, or reuse turned off, reuses nothing.
    assert ResumeStore("other-lm", str(tmp_path)).split(step, rows, list(range(6)))[0] == {}
    assert ResumeStore("lm", str(tmp_path), reuse=False, salt="run-9").split(step, rows, [0, 1])[0] == {}


def test_a_batch_with_nothing_completed_is_not_kept_so_a_later_good_result_is(tmp_path: Path) -> None:
    step = _step()
    rows = [{"question": "q1"}, {"question": "q2"}]
    outage = RowError(type="ServiceUnavailableError", message="503", retryable=True)
    store = ResumeStore("lm", str(tmp_path))
    store.store(SimpleNamespace(step=step, rows=rows), _result([None, None], [outage, outage]))
    # The same batch (same key) succeeds in the next run: that result is the one kept.
    ResumeStore("lm", str(tmp_path)).store(
        SimpleNamespace(step=step, rows=rows), _result([{"answer": "1"}, {"answer": "2"}])
    )
    reused, remaining = ResumeStore("lm", str(tmp_path)).split(step, rows, [0, 1])
    assert reused == {0: {"answer": "1"}, 1: {"answer": "2"}} and remaining == []
