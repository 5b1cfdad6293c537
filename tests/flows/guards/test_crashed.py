"""`flows.guards.crashed`: what a run records for crash detection (the e2e kill is test_e2e_crash_resume)."""

from __future__ import annotations

import json
import os
import stat

from dspex.settings import get_settings
from flows.guards.crashed import KEEP_RUNS, mark_dead_runs_crashed, process_alive, record_run


def test_one_owner_only_file_per_process_keeps_its_newest_run_ids(tmp_path):
    settings = get_settings(home=tmp_path)
    record_run(settings, ["a", "", "b"])
    path = record_run(settings, ["b", "c"])
    assert path is not None and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["runs"] == ["a", "b", "c"]
    record_run(settings, [f"r{i}" for i in range(KEEP_RUNS + 5)])
    assert len(json.loads(path.read_text())["runs"]) == KEEP_RUNS
    assert list((tmp_path / "runs").iterdir()) == [path]


def test_a_live_process_is_not_judged_and_a_recycled_pid_is_not_the_same_process(tmp_path):
    assert process_alive(os.getpid())
    assert not process_alive(os.getpid(), started="0")  # same pid, another start time
    record_run(get_settings(home=tmp_path), ["x"])
    assert mark_dead_runs_crashed(get_settings(home=tmp_path)) == []  # this process is alive: no API call
