"""Item 10 of issue 13: what DSPex stores is owner-only: the Prefect home and its database, the
payload store's folders (0700) and files (0600), whatever the umask.

The original failure: ``prefect.db`` was created 0644, readable by every local user, and payload
files followed the umask too.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tasks.payloads import write_payload


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask():
    old = os.umask(0o022)  # the common default, under which files are world-readable
    yield
    os.umask(old)


def test_payload_files_and_folders_are_owner_only(tmp_path, open_umask):
    base = tmp_path / "store" / "payloads"
    small = write_payload([{"q": "x" * 64}] * 400, base_url=str(base))  # MessagePack, written whole
    large = write_payload(np.zeros((2000, 64), dtype=np.float32), base_url=str(base))  # Arrow, streamed
    named = write_payload([{"q": 1}], base_url=str(base), name="runs/batch-1")
    for ref in (small, large, named):
        assert ref.is_stored
        assert _mode(Path(ref.uri)) == 0o600, ref.uri
    assert _mode(base) == 0o700 and _mode(base.parent) == 0o700 and _mode(base / "runs") == 0o700
    assert not [p for p in base.rglob("*.tmp-*")]


@pytest.mark.slow
def test_embedded_prefect_database_is_owner_only(tmp_path):
    home = tmp_path / "dspex-home"
    # A fresh process, as a user's first run: DSPex's bootstrap, then Prefect creating its database
    # (its schema, through SQLite) under the project's Prefect home.
    script = textwrap.dedent(
        """
        import asyncio
        import os

        os.umask(0o022)
        import dspex.bootstrap  # noqa: F401
        from prefect.server.database import provide_database_interface

        asyncio.run(provide_database_interface().create_db())
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DSPEX_", "PREFECT_"))}
    env.update(DSPEX_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    database = home / "prefect" / "prefect.db"
    assert database.stat().st_size > 0  # Prefect really created its tables in it
    assert _mode(home / "prefect") == 0o700
    for path in [database, *database.parent.glob("prefect.db-*")]:
        assert _mode(path) & 0o077 == 0, (path, oct(_mode(path)))


def test_existing_world_readable_database_is_tightened(tmp_path, monkeypatch):
    from dspex import bootstrap

    home = tmp_path / "prefect"
    home.mkdir(mode=0o755)
    database = home / "prefect.db"
    database.write_bytes(b"")
    database.chmod(0o644)
    monkeypatch.delenv("PREFECT_API_DATABASE_CONNECTION_URL", raising=False)
    bootstrap._private_prefect_home(home)
    assert _mode(home) == 0o700 and _mode(database) == 0o600


# --- issue 25.3: everything under DSPEX_HOME is owner-only, and @file inputs obey the read rules ---
def _dspex(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The dspex command under the common 022 umask, with the project's .dspex as its home."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DSPEX_", "PREFECT_"))}
    base.update(DSPEX_HOME=str(cwd / ".dspex"), DSPEX_SHARED_SERVER="false", **env)
    return subprocess.run(  # noqa: S603 - our own venv's dspex
        [str(Path(sys.executable).parent / "dspex"), *args],
        cwd=cwd,
        env=base,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.umask(0o022),  # noqa: PLW1509 - only sets the child's umask
    )


def _loose_paths(home: Path) -> list[str]:
    """Every path under ``home`` (and itself) that is not 0700 (folders) or 0600 (files)."""
    loose = []
    for path in [home, *home.rglob("*")]:
        wanted = 0o700 if path.is_dir() else 0o600
        if _mode(path) != wanted:
            loose.append(f"{oct(_mode(path))} {path}")
    return loose


def test_a_session_from_the_cli_leaves_only_owner_only_paths(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("Hamlet was written by William Shakespeare.", encoding="utf-8")
    opened = _dspex(tmp_path, "session", "open", "--signature", "question, context -> answer")
    assert opened.returncode == 0, opened.stderr[-3000:]
    session_id = opened.stdout.strip()
    turn = _dspex(tmp_path, "session", "turn", session_id, "question=Who wrote Hamlet?", f"context=@{notes}")
    assert turn.returncode == 0, turn.stderr[-3000:]
    home = tmp_path / ".dspex"
    assert (home / "sessions.db").is_file()
    assert _loose_paths(home) == []


def test_an_at_file_input_obeys_the_read_fence(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "shadow"
    secret.write_text("root:secret-hash", encoding="utf-8")
    project = tmp_path / "project"
    project.mkdir()
    opened = _dspex(project, "session", "open")
    session_id = opened.stdout.strip()
    refused = _dspex(project, "session", "turn", session_id, f"question=@{secret}", DSPEX_READ_FENCE="all")
    assert refused.returncode == 2 and "PayloadAccessError" in refused.stderr, refused.stderr[-3000:]
    assert b"secret-hash" not in (project / ".dspex" / "sessions.db").read_bytes()
    shown = _dspex(project, "session", "show", session_id, "--json")
    assert json.loads(shown.stdout)["history"] == []


def test_an_older_world_readable_home_and_session_database_are_tightened(tmp_path, monkeypatch):
    from dspex.settings import get_settings
    from flows.sessions.store import store_url

    home = tmp_path / ".dspex"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    database = home / "sessions.db"
    database.write_bytes(b"")
    database.chmod(0o644)
    monkeypatch.setenv("DSPEX_HOME", str(home))
    assert store_url(get_settings()).endswith("sessions.db")
    assert _mode(home) == 0o700 and _mode(database) == 0o600


@pytest.mark.slow
@pytest.mark.integration
def test_a_streamed_cli_run_leaves_only_owner_only_paths(tmp_path):
    (tmp_path / "spec.json").write_text(
        json.dumps(
            {"name": "modes", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}
        )
    )
    (tmp_path / "d.jsonl").write_text('{"question": "q1?"}\n{"question": "q2?"}\n', encoding="utf-8")
    done = _dspex(tmp_path, "run", "--stream", "spec.json", "d.jsonl")
    assert done.returncode == 0, done.stderr[-3000:]
    home = tmp_path / ".dspex"
    # the Prefect database, payloads, batch results, the registry and its lock, the stream's spool
    for name in ("prefect/prefect.db", "registry.json", "streams", "payloads/results"):
        assert (home / name).exists(), name
    assert _loose_paths(home) == []
