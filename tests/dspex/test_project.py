"""Issue 25 (minor): run from a subfolder, DSPex silently made a second ``.dspex`` there.

The project folder is found as git and Prefect find theirs (`dspex.project`), and the CLI says which
home it uses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dspex.project import find_project_root

REPO = Path(__file__).resolve().parents[2]


def test_the_nearest_project_marker_is_the_root_and_an_existing_home_below_it_wins(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    deep = root / "src" / "pkg"
    deep.mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert find_project_root(deep) == (root, "project root: has pyproject.toml")
    (root / "src" / ".dspex").mkdir()  # an earlier run's home in a subfolder keeps its data
    assert find_project_root(deep) == (root / "src", "has .dspex")


def test_a_home_in_a_parent_outside_any_project_is_never_taken(tmp_path: Path) -> None:
    (tmp_path / ".dspex").mkdir()  # e.g. /tmp/.dspex: not a project of this folder
    here = tmp_path / "a" / "b"
    here.mkdir(parents=True)
    assert find_project_root(here) == (here.resolve(), "current folder")


@pytest.mark.e2e
@pytest.mark.slow
def test_dspex_run_from_a_subfolder_uses_the_projects_home_and_says_so(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    sub = root / "notebooks"
    sub.mkdir(parents=True)
    (root / "prefect.yaml").write_text("name: proj\n")
    (sub / "spec.yaml").write_text(
        "name: sub\nsteps:\n  - module: dspy.Predict\n    signature: 'question -> answer'\n"
    )
    (sub / "q.jsonl").write_text(json.dumps({"question": "Where is the box? The box is in Paris."}) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DSPEX_"))} | {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONPATH": str(REPO),
    }
    dspex = Path(sys.executable).with_name("dspex")
    done = subprocess.run(  # noqa: S603 (our own venv's dspex)
        [str(dspex), "run", "spec.yaml", "q.jsonl"],
        cwd=sub,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert not (sub / ".dspex").exists()
    assert (root / ".dspex" / "prefect").is_dir()
    said = " ".join(done.stderr.split())
    assert f"DSPex home: {(root / '.dspex').resolve()}" in said and "prefect.yaml" in said, done.stderr
