"""The immutable state a `registry.store.ModuleRegistry` swaps on every write.

Every mapping in a `Snapshot` is read-only (``MappingProxyType``) and never changed after the
snapshot is published, which is what lets readers use it without a lock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from registry.learning import ObservationKey, Series, TokenKey, TokenSeries, Usage
from registry.models import Category, ModuleInfo, expand_capabilities

__all__ = ["EMPTY", "Snapshot", "build_indexes", "with_modules"]

EMPTY: Mapping[Any, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One immutable state of a registry: records, indexes, observations, usage, memoised answers."""

    modules: Mapping[str, ModuleInfo]
    by_capability: Mapping[str, tuple[str, ...]]
    by_category: Mapping[Category, tuple[str, ...]]
    registered: frozenset[str] = frozenset()
    observations: Mapping[str, Mapping[ObservationKey, Series]] = field(default_factory=lambda: EMPTY)
    usage: Mapping[str, Usage] = field(default_factory=lambda: EMPTY)
    tokens: Mapping[TokenKey, TokenSeries] = field(default_factory=lambda: EMPTY)
    # Answers computed from this snapshot, keyed by query. Readers add to it without a lock (a dict
    # store is atomic in CPython, and two racing readers store the same value); a new snapshot starts
    # with an empty one (init=False: `replace` does not carry it over), so no stale answer survives.
    memo: dict[tuple[Any, ...], Any] = field(init=False, default_factory=dict, compare=False)


def build_indexes(
    modules: Mapping[str, ModuleInfo],
) -> tuple[Mapping[str, tuple[str, ...]], Mapping[Category, tuple[str, ...]]]:
    """The capability index (implied capabilities included) and the category index, in record order.

    Args:
        modules: The records by name.
    """
    by_capability: dict[str, list[str]] = {}
    by_category: dict[Category, list[str]] = {}
    for name, info in modules.items():
        for capability in expand_capabilities(info.capabilities):
            by_capability.setdefault(capability, []).append(name)
        by_category.setdefault(info.category, []).append(name)
    return (
        MappingProxyType({k: tuple(v) for k, v in by_capability.items()}),
        MappingProxyType({k: tuple(v) for k, v in by_category.items()}),
    )


def with_modules(
    snapshot: Snapshot | None, modules: dict[str, ModuleInfo], registered: frozenset[str]
) -> Snapshot:
    """A snapshot with new records (and indexes), keeping the rest of ``snapshot``.

    Args:
        snapshot: The current snapshot, or ``None`` to start an empty one.
        modules: The new records by name; owned by the snapshot from now on.
        registered: The names registered at run time (the ones persisted).
    """
    by_capability, by_category = build_indexes(modules)
    frozen = MappingProxyType(modules)
    if snapshot is None:
        return Snapshot(frozen, by_capability, by_category, registered)
    return replace(
        snapshot, modules=frozen, by_capability=by_capability, by_category=by_category, registered=registered
    )
