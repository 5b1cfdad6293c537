"""Which work pools and ``run-step`` deployments this project created: the only ones auto mode uses.

On a Prefect server other accounts can reach (a user's own unauthenticated server, a shared one),
anybody can create a pool named ``general``, a ``run-step/run-step-general`` deployment and a worker
heartbeat on it; auto mode, which dispatches to whatever looks ready, would then hand them the
user's batches (issue 23). So ``dspex pools create`` records the id of each pool it creates or
updates, and ``dspex deploy`` the id of each ``run-step`` deployment it deploys, in
``<DSPEX_HOME>/owned.json`` (0600, its owner's alone: anything on the server, a name, a tag, a
description, another account can copy). Auto mode (`flows.engine.modes`) takes a pool only when both ids
are recorded, and otherwise runs locally with one log line that says so. An explicit
``mode="distributed"`` / ``DSPEX_MODE=distributed`` is the user's own choice and is obeyed as before.

Ids are UUIDs the server made, so one file serves every server the project talks to.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dspex.settings import Settings, get_settings

__all__ = ["OwnedObjects", "load_owned", "owned_file", "record_owned"]

Kind = Literal["pools", "deployments"]


def owned_file(settings: Settings | None = None) -> Path:
    """Where the ids are kept: ``<DSPEX_HOME>/owned.json``."""
    return (settings or get_settings()).home.resolve() / "owned.json"


@dataclass(frozen=True)
class OwnedObjects:
    """The ids this project recorded: id -> name, per kind."""

    pools: dict[str, str] = field(default_factory=dict)
    deployments: dict[str, str] = field(default_factory=dict)

    def owns_pool(self, pool_id: object) -> bool:
        """Whether ``dspex pools create`` made or updated the pool with this id."""
        return str(pool_id) in self.pools

    def owns_deployment(self, deployment_id: object) -> bool:
        """Whether ``dspex deploy`` deployed the deployment with this id."""
        return str(deployment_id) in self.deployments


def load_owned(settings: Settings | None = None) -> OwnedObjects:
    """The recorded ids (none when the file is missing, unreadable, or not this user's own)."""
    path = owned_file(settings)
    try:
        if path.stat().st_uid != os.getuid():
            return OwnedObjects()  # another account's file: it could list its own pools
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return OwnedObjects()
    if not isinstance(data, dict):
        return OwnedObjects()
    return OwnedObjects(
        pools={str(k): str(v) for k, v in dict(data.get("pools") or {}).items()},
        deployments={str(k): str(v) for k, v in dict(data.get("deployments") or {}).items()},
    )


def record_owned(kind: Kind, object_id: object, name: str, settings: Settings | None = None) -> None:
    """Record that this project created (or deployed) ``name`` with server id ``object_id``.

    Args:
        kind: ``pools`` or ``deployments``.
        object_id: The server's id of it.
        name: Its name (for people reading the file).
        settings: Where ``DSPEX_HOME`` is.
    """
    path = owned_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.with_name("owned.lock")):  # two `dspex pools create` at once lose nothing
        current = load_owned(settings)
        data = {"pools": dict(current.pools), "deployments": dict(current.deployments)}
        data[kind][str(object_id)] = name
        tmp = path.with_name(f"owned.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
        tmp.replace(path)  # readers see the old file or the new one, never half of one


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    descriptor = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)
