"""Which database does the Prefect server keep its state in (issue 20)?

Workers need the server on PostgreSQL: SQLite allows one writer at a time and fails under load with
"database is locked". Both `dspex pools create` (`deployments.cli.distributed`) and a starting dspex
worker (`deployments.worker.DSPexWorker`) ask, from what the server's API shows, and warn with
`SQLITE_WORKERS`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any, Literal

__all__ = ["SQLITE_WORKERS", "server_database", "sqlite_warning"]

#: What `sqlite_warning` says: workers need PostgreSQL, and where the docs say how.
SQLITE_WORKERS = (
    "the Prefect server at {url} keeps its state in SQLite, which allows one writer at a time: with "
    "workers heartbeating and runs reporting, it fails under load with 'database is locked'. Workers "
    "need the server on PostgreSQL: docs/deployment.md, section 2 'A Prefect server, on PostgreSQL' "
    "(SQLite is fine for one laptop, without workers)."
)


def server_database(
    admin_settings: dict[str, Any] | None, templates: Iterable[Any] = ()
) -> Literal["sqlite", "postgresql"] | None:
    """The database a Prefect 3.8.8 server runs on, from what its API shows (None: cannot tell).

    ``GET /api/admin/settings`` masks the connection URL, but names the driver or host when the
    database was configured by parts. Otherwise the JSON the server hands back tells: PostgreSQL
    stores it as JSONB, which orders every object's keys by length, then bytes; SQLite keeps them as
    written. So a work pool's base job template (dozens of objects) with any object out of JSONB's
    order was not stored in JSONB.

    Args:
        admin_settings: The server's ``/admin/settings`` answer (None when it could not be read).
        templates: Base job templates of work pools read back from the server.
    """
    database = ((admin_settings or {}).get("server") or {}).get("database") or {}
    driver = str(database.get("driver") or "")
    if driver.startswith("sqlite"):
        return "sqlite"
    if driver.startswith("postgresql") or database.get("host"):
        return "postgresql"
    orders = [_jsonb_ordered(template) for template in templates]
    if any(order is False for order in orders):
        return "sqlite"
    return "postgresql" if any(order is True for order in orders) else None


def _jsonb_ordered(value: Any) -> bool | None:
    """Whether every object in ``value`` has its keys in JSONB's order (None: no object with two keys)."""
    seen = False
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            keys = [str(key).encode() for key in item]
            if len(keys) > 1:
                seen = True
                if keys != sorted(keys, key=lambda key: (len(key), key)):
                    return False
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True if seen else None


def sqlite_warning(client: Any, pools: Iterable[str]) -> str | None:
    """`SQLITE_WORKERS` when the server behind ``client`` (a sync Prefect client) runs on SQLite.

    Reads ``/admin/settings`` and the named pools; anything that cannot be read counts as unknown
    (no warning): this check must never stop a worker or a pool setup.
    """
    from prefect.exceptions import ObjectNotFound

    try:
        answer = client._client.get("/admin/settings")  # no public method for this route in 3.8.8
        admin = answer.json() if answer.status_code == 200 else None
    except Exception:  # an old or locked-down server: unknown, not an error
        admin = None
    templates = []
    for name in pools:
        # A missing pool or an unreachable server: unknown, not an error.
        with contextlib.suppress(ObjectNotFound, Exception):
            templates.append(client.read_work_pool(name).base_job_template)
    if server_database(admin, templates) != "sqlite":
        return None
    return SQLITE_WORKERS.format(url=str(client.api_url).rstrip("/"))
