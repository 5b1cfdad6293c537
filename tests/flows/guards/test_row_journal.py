"""Tests of `flows.guards.resume.RowJournal`: rows kept as they complete, read back by the next run."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from flows.engine.executors.base import BatchRequest
from flows.engine.spec import PipelineSpec
from flows.guards.resume import ResumeStore
from tasks.batch import BatchResult


def _step() -> object:
    spec = PipelineSpec.model_validate(
        {"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}
    )
    return spec.steps[0]


def test_journaled_rows_of_a_killed_batch_are_reused_and_a_cut_line_is_skipped(tmp_path: Path) -> None:
    step = _step()
    rows = [{"question": f"q{i}"} for i in range(3)]
    request = BatchRequest(step=step, rows=rows, pool="general", batch_key="k")
    journal = ResumeStore("lm", str(tmp_path)).row_sink(request)
    assert journal is not None
    journal.add(0, {"answer": "a0"})
    journal.add(2, {"answer": "a2"})
    assert stat.S_IMODE(os.stat(journal.uri).st_mode) == 0o600
    with open(journal.uri, "ab") as handle:  # the kill cut the next line short
        handle.write(b'{"k":"abc","o":{"ans')
    # The process dies here: no batch result. The next run reuses the two journaled rows.
    later = ResumeStore("lm", str(tmp_path))
    reused, remaining = later.split(step, rows, [0, 1, 2])
    assert reused == {0: {"answer": "a0"}, 2: {"answer": "a2"}} and remaining == [1]


def test_a_stored_batch_result_removes_its_journal(tmp_path: Path) -> None:
    step = _step()
    rows = [{"question": "q"}]
    store = ResumeStore("lm", str(tmp_path))
    journal = store.row_sink(BatchRequest(step=step, rows=rows, pool="general", batch_key="k"))
    assert journal is not None
    journal.add(0, {"answer": "a"})
    request = BatchRequest(step=step, rows=rows, pool="general", batch_key="k", rows_sink=journal)
    store.store(
        request, BatchResult(outputs=[{"answer": "a"}], errors=[None], latencies_ms=[1.0], wall_ms=1.0)
    )
    assert not Path(journal.uri).exists()
    journal.add(0, {"answer": "late"})  # a row abandoned at a timeout that finishes later: ignored
    assert not Path(journal.uri).exists()
    assert ResumeStore("lm", str(tmp_path)).split(step, rows, [0])[0] == {0: {"answer": "a"}}
