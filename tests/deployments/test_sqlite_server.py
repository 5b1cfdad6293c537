"""Issue 20: a Prefect server on SQLite cannot hold workers, and `dspex pools create` / `dspex worker`
say so once, with the docs section to follow; a PostgreSQL (JSONB) server gets no warning.

Prefect 3.8.8's ``/api/admin/settings`` masks the connection URL, so the check reads what the server
hands back: PostgreSQL's JSONB orders every object's keys (length, then bytes), SQLite keeps them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from deployments.database import server_database
from deployments.pools import base_job_template
from tests.deployments.cluster import BIN, Cluster

WARNING = "keeps its state in SQLite"
DOCS = "docs/deployment.md, section 2 'A Prefect server, on PostgreSQL'"


def _as_jsonb(value: Any) -> Any:
    """``value`` with every object's keys in JSONB's order, as a PostgreSQL server returns it."""
    if isinstance(value, dict):
        ordered = sorted(value, key=lambda key: (len(key.encode()), key.encode()))
        return {key: _as_jsonb(value[key]) for key in ordered}
    if isinstance(value, list):
        return [_as_jsonb(item) for item in value]
    return value


def test_server_database_reads_the_driver_or_the_json_order() -> None:
    template = base_job_template("dspex")
    assert server_database(None, [template]) == "sqlite"  # as written: not JSONB
    assert server_database(None, [_as_jsonb(template)]) == "postgresql"
    assert server_database(None, []) is None  # nothing to tell by: no warning
    by_parts = {"server": {"database": {"driver": "postgresql+asyncpg", "host": "db"}}}
    assert server_database(by_parts, [template]) == "postgresql"
    assert server_database({"server": {"database": {"driver": "sqlite+aiosqlite"}}}, []) == "sqlite"


@pytest.mark.e2e
@pytest.mark.slow
def test_pools_create_and_a_worker_say_once_that_workers_need_postgresql(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, extra_env={"COLUMNS": "400"})  # Prefect's default database: SQLite
    try:
        cluster.start_server()
        created = " ".join(cluster.run(str(BIN / "dspex"), "pools", "create").split())
        assert created.count(WARNING) == 1, created
        assert DOCS in created and cluster.api_url in created
        cluster.start_worker("general", "sqlite-w1")
        cluster.wait_workers(["sqlite-w1"])
        deadline = time.monotonic() + 60
        while WARNING not in cluster.log("worker-sqlite-w1") and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(5)  # two more heartbeats/syncs: it must not repeat
        log = " ".join(cluster.log("worker-sqlite-w1", tail=100_000).split())
        assert log.count(WARNING) == 1, log[-3000:]
        assert DOCS in log
    finally:
        cluster.close()
