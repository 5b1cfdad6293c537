"""Issue 23 (also found): two processes taking turns on one session through ``dspex session turn``
lose none: two command lines, 4 turns each, at the same time, leave a history of 8 turns.

Entered where the user enters: the ``dspex`` console script as subprocesses, on the embedded SQLite
session store under one DSPEX_HOME, with the bundled offline LM.
"""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.deployments.cluster import BIN

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_two_command_lines_taking_four_turns_each_leave_eight(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DSPEX_"))}
    env["DSPEX_HOME"] = str(tmp_path / "home")

    def dspex(*args: str) -> str:
        done = subprocess.run(
            [str(BIN / "dspex"), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    session = dspex("session", "open", "--signature", "question, context -> answer", "--ttl", "600").strip()

    def turns(tag: str) -> None:
        for n in range(4):
            dspex("session", "turn", session, f"question={tag}-{n}?", "context=Paris is in France.")

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(turns, ("a", "b")))
    shown = json.loads(dspex("session", "show", session, "--json"))
    assert shown["version"] == 8
    assert sorted(t["question"] for t in shown["history"]) == sorted(
        f"{t}-{n}?" for t in "ab" for n in range(4)
    )
