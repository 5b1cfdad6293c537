"""The three work pools of distributed mode, created or updated idempotently.

``dspex pools create`` makes ``general``, ``optimizer`` and ``gpu`` exist on the Prefect server the
environment points at (``PREFECT_API_URL``), each with a concurrency limit equal to its capacity
(``DSPEX_POOL_<NAME>_CAPACITY``), and of the chosen worker type: ``dspex`` (warm worker processes,
`deployments.worker.DSPexWorker`, the fast default) or ``process`` (Prefect's process worker, one
Python per flow run). Running it again updates the limits and descriptions and changes nothing else.
Each pool's id is recorded as this project's own (`flows.engine.ownership`): auto mode dispatches only to
recorded pools (issue 23).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

import dspex.bootstrap  # noqa: F401  (defaults the Prefect environment before Prefect loads)
from dspex.exceptions import ConfigurationError
from dspex.settings import Settings, get_settings
from flows.engine.pools import POOL_NAMES

__all__ = [
    "POOL_DESCRIPTIONS",
    "PoolResult",
    "WorkerType",
    "base_job_template",
    "ensure_pools",
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
        # Lazy for start-up time: the worker module imports Prefect's worker machinery, which a
        # ``process`` pool does not need.
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

    from flows.engine.ownership import record_owned

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
