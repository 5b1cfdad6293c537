"""The three work pools of distributed mode, created or updated idempotently.

``dspex pools create`` makes ``general``, ``optimizer`` and ``gpu`` exist on the Prefect server the
environment points at (``PREFECT_API_URL``), each with a concurrency limit equal to its capacity
(``DSPEX_POOL_<NAME>_CAPACITY``), and of the chosen worker type: ``dspex`` (warm worker processes,
`deployments.worker.DSPexWorker`, the fast default) or ``process`` (Prefect's process worker, one
Python per flow run). Running it again updates the limits and descriptions and changes nothing else.
Each pool's id is recorded as this project's own (`flows.ownership`): auto mode dispatches only to
recorded pools (issue 23).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from dspex.exceptions import ConfigurationError
from dspex.settings import Settings, get_settings
from flows.pools import POOL_NAMES

__all__ = [
    "POOL_DESCRIPTIONS",
    "SQLITE_WORKERS",
    "PoolResult",
    "WorkerType",
    "base_job_template",
    "ensure_pools",
    "server_database",
    "sqlite_warning",
]

WorkerType = Literal["dspex", "process"]

POOL_DESCRIPTIONS = {
    "general": "DSPex general pool: Predict, ChainOfThought, ReAct and other LM-bound modules.",
    "optimizer": "DSPex optimizer pool: long-running optimizers (MIPROv2, BootstrapFewShot, ...).",
    "gpu": "DSPex gpu pool: embeddings and retrieval (CUDA when the worker has it).",
}


class PoolResult(BaseModel):
    """What `ensure_pools` did to one pool."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    type: str
    concurrency_limit: int
    action: Literal["created", "updated"]


def base_job_template(worker_type: WorkerType) -> dict[str, Any]:
    """The default base job template of a worker type."""
    if worker_type == "dspex":
        from deployments.worker import DSPexWorker

        return DSPexWorker.get_default_base_job_template()
    from prefect.workers.process import ProcessWorker

    return ProcessWorker.get_default_base_job_template()


def ensure_pools(
    settings: Settings | None = None,
    worker_type: WorkerType = "dspex",
    pools: tuple[str, ...] = POOL_NAMES,
    client: Any = None,
) -> list[PoolResult]:
    """Create the pools that are missing and update the limits of those that exist.

    Args:
        settings: Capacities come from here (default: the environment).
        worker_type: ``dspex`` or ``process`` for pools that are created.
        pools: Which pools (default all three).
        client: A synchronous Prefect client (default: one for ``PREFECT_API_URL``).

    Raises:
        ConfigurationError: An unknown pool name, or an existing pool of another worker type (a pool's
            type cannot change; delete it with ``prefect work-pool delete NAME`` first).
    """
    from prefect.client.orchestration import get_client

    settings = settings or get_settings()
    unknown = [p for p in pools if p not in POOL_NAMES]
    if unknown:
        raise ConfigurationError(f"unknown pool(s) {unknown}; pools are {', '.join(POOL_NAMES)}")
    if client is None:
        with get_client(sync_client=True) as owned:
            return _ensure(owned, settings, worker_type, pools)
    return _ensure(client, settings, worker_type, pools)


def _ensure(
    client: Any, settings: Settings, worker_type: WorkerType, pools: tuple[str, ...]
) -> list[PoolResult]:
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    from flows.ownership import record_owned

    results = []
    for name in pools:
        limit = settings.pool_capacity(name)
        try:
            existing = client.read_work_pool(name)
        except ObjectNotFound:
            existing = None
        if existing is None:
            created = client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type=worker_type,
                    description=POOL_DESCRIPTIONS[name],
                    base_job_template=base_job_template(worker_type),
                    concurrency_limit=limit,
                )
            )
            record_owned("pools", created.id, name, settings)
            results.append(PoolResult(name=name, type=worker_type, concurrency_limit=limit, action="created"))
            continue
        if existing.type != worker_type:
            raise ConfigurationError(
                f"work pool {name!r} exists with type {existing.type!r}, not {worker_type!r}; a pool's type "
                f"cannot change: delete it (prefect work-pool delete {name}) or pass --type {existing.type}"
            )
        client.update_work_pool(
            name, WorkPoolUpdate(description=POOL_DESCRIPTIONS[name], concurrency_limit=limit)
        )
        # The user ran `dspex pools create` against this server and pool: it is theirs from now on.
        record_owned("pools", existing.id, name, settings)
        results.append(PoolResult(name=name, type=existing.type, concurrency_limit=limit, action="updated"))
    return results


# --- which database the server keeps its state in (issue 20) ----------------------------------------
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
