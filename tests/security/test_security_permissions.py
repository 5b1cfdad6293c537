"""Item 10 of issue 13: what DSPex stores is owner-only: the Prefect home and its database, the
payload store's folders (0700) and files (0600), whatever the umask.

The original failure: ``prefect.db`` was created 0644, readable by every local user, and payload
files followed the umask too.
"""

from __future__ import annotations

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
