"""Tests of `flows.guards.resume.RowJournal`: rows kept as they complete, read back by the next run."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from flows.engine.executors.base import BatchRequest
from flows.engine.spec import PipelineSpec
from flows.guards.resume import BatchJournals, ResumeStore
from tasks.batch import BatchResult, not_attempted_result


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


def test_a_workers_journals_stay_until_the_result_is_kept_even_when_every_row_came_from_them(
    tmp_path: Path,
) -> None:
    """Issue 26: the journals of a dispatched batch (written by its workers) go once the orchestrator
    keeps the batch's result, and not before: a crashed dispatch keeps them for the next run."""
    step = _step()
    rows = [{"question": "q0"}, {"question": "q1"}]
    store = ResumeStore("lm", str(tmp_path))
    request = BatchRequest(step=step, rows=rows, pool="general", batch_key="k")
    journals = store.worker_rows(request)
    assert isinstance(journals, BatchJournals)
    keys = journals.row_keys(step, rows)
    assert keys is not None
    journal = journals.writer(keys)  # a worker journals both rows, then dies
    journal.add(0, {"answer": "a0"})
    journal.add(1, {"answer": "a1"})
    journal.close(remove=False)
    sent = BatchRequest(step=step, rows=rows, pool="general", batch_key="k", rows_sink=journals)
    crashed = not_attempted_result(2, "every dispatch crashed")
    store.store(sent, crashed)  # nothing completed: the journals are all there is
    assert Path(journal.uri).exists()
    # The re-dispatched batch took both rows from the journals (reused == every row): still kept.
    both = BatchResult(
        outputs=[{"answer": "a0"}, {"answer": "a1"}],
        errors=[None, None],
        latencies_ms=[0.0, 0.0],
        wall_ms=0.0,
        reused=2,
    )
    store.store(sent, both)
    assert not Path(journal.uri).exists()
    later = ResumeStore("lm", str(tmp_path))
    assert later.split(step, rows, [0, 1]) == ({0: {"answer": "a0"}, 1: {"answer": "a1"}}, [])
    assert later.batches.read(journals.key) is not None  # kept as a batch result, not in a journal
