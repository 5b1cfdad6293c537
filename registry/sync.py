"""Keeping one registry file true for many processes: read-merge-write under a file lock.

Every process that runs pipelines learns durations and may register modules, and they all share one
registry file. Writing back "the registry as this process loaded it, plus what it learned" would
erase what another process saved meanwhile (a ``dspex registry register`` made during a run, or a
concurrent pipeline's learned estimates). So a registry keeps what it learned *since its last sync*
as `Pending` changes, and a save is:

1. take the file's lock (``<file>.lock``, `filelock`, owner-only);
2. read the file as it is now;
3. apply this process's pending changes on top: its registrations replace records of the same name,
   its duration, usage and token samples are *appended* to the file's (each series keeps its most
   recent ``window`` samples), its call counts are *added*;
4. write the result atomically, adopt it as this process's state, and clear the pending changes.

`build_snapshot` is that merge; the same function serves `ModuleRegistry.load` (the file alone) and
`ModuleRegistry.refresh` (the file plus unsaved changes, so a long-running process sees what others
registered without losing what it learned).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

from filelock import FileLock, Timeout

from dspex.exceptions import RegistryPersistenceError
from dspex.private import make_private_dirs
from registry.learning import ObservationKey, Series, TokenKey, TokenSample, TokenSeries, Usage
from registry.models import ModuleInfo
from registry.persistence import ObservationRecord, RegistryFile, TokenRecord, UsageRecord
from registry.snapshot import Snapshot, with_modules

__all__ = [
    "LOCK_TIMEOUT_SECONDS",
    "Pending",
    "build_snapshot",
    "file_lock",
    "file_of",
    "file_state",
    "locked",
]

logger = logging.getLogger("registry.store")

#: How long a save waits for another process's save before it gives up with a clear error.
LOCK_TIMEOUT_SECONDS = 60.0


@dataclass
class Pending:
    """What a registry learned or was told since it last synced with its file.

    Attributes:
        modules: Records registered here, by name (they win over the file's on save).
        durations: Successful durations (ms) by module and (pool, bucket), oldest first.
        calls: Every recorded call by module: (duration ms, success), oldest first.
        tokens: Per-row token samples by (module, model), oldest first.
    """

    modules: dict[str, ModuleInfo] = field(default_factory=dict)
    durations: dict[str, dict[ObservationKey, list[float]]] = field(default_factory=dict)
    calls: dict[str, list[tuple[float, bool]]] = field(default_factory=dict)
    tokens: dict[TokenKey, list[TokenSample]] = field(default_factory=dict)

    def add_call(self, name: str, duration_ms: float, success: bool, key: ObservationKey) -> None:
        """Remember one recorded call (its duration feeds the estimates only when it succeeded)."""
        self.calls.setdefault(name, []).append((duration_ms, success))
        if success:
            self.durations.setdefault(name, {}).setdefault(key, []).append(duration_ms)


def file_lock(path: Path) -> FileLock:
    """The inter-process lock guarding the registry file at ``path`` (``<path>.lock``, 0600)."""
    return FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_SECONDS, mode=0o600)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold `file_lock`; a `RegistryPersistenceError` if another process holds it too long."""
    lock = file_lock(path)
    try:
        make_private_dirs(path.parent)
        lock.acquire()
    except Timeout as exc:
        raise RegistryPersistenceError(
            f"registry file {path} stayed locked by another process for {LOCK_TIMEOUT_SECONDS:.0f} s "
            f"(lock file {path}.lock)"
        ) from exc
    except OSError as exc:
        raise RegistryPersistenceError(f"cannot write registry file {path}: {exc}") from exc
    try:
        yield
    finally:
        lock.release()


def build_snapshot(
    data: RegistryFile | None,
    base: Mapping[str, ModuleInfo],
    pending: Pending,
    window: int,
    source: Path,
) -> Snapshot:
    """The registry state of a file plus pending changes (see the module docstring).

    Args:
        data: The file's content; None when there is no file yet.
        base: The catalogue (core and discovered records), rebuilt by every process.
        pending: Changes not yet in the file (empty for a plain load).
        window: How many recent samples each series keeps.
        source: The file, named in the warning about dropped state.
    """
    data = data or RegistryFile()
    modules = dict(base)
    registered = {record.name for record in data.modules} | set(pending.modules)
    for record in data.modules:
        modules[record.name] = record
    modules.update(pending.modules)
    dropped: set[str] = set()

    observations: dict[str, dict[ObservationKey, tuple[float, ...]]] = {}
    for obs in data.observations:
        if obs.module not in modules:
            dropped.add(obs.module)
            continue
        observations.setdefault(obs.module, {})[(obs.pool, obs.bucket)] = tuple(obs.samples_ms)
    for name, by_key in pending.durations.items():
        for key, samples in by_key.items():
            mine = observations.setdefault(name, {})
            mine[key] = (*mine.get(key, ()), *samples)

    usage: dict[str, Usage] = {}
    for item in data.usage:
        if item.module not in modules:
            dropped.add(item.module)
            continue
        usage[item.module] = Usage(item.calls, item.failures, tuple(item.durations_ms[-window:]))
    for name, calls in pending.calls.items():
        current = usage.get(name, Usage())
        for duration_ms, success in calls:
            current = current.add(duration_ms, success=success, window=window)
        usage[name] = current

    tokens: dict[TokenKey, TokenSeries] = {}
    for learned in data.tokens:
        if learned.module not in modules:
            dropped.add(learned.module)
            continue
        learned_samples: list[TokenSample] = list(
            zip(learned.prompt_tokens, learned.completion_tokens, learned.cost_usd, strict=True)
        )
        tokens[(learned.module, learned.model)] = TokenSeries(tuple(learned_samples[-window:]))
    for token_key, token_samples in pending.tokens.items():
        series = tokens.get(token_key)
        for sample in token_samples:
            series = series.add(sample, window) if series else TokenSeries((sample,))
        if series is not None:
            tokens[token_key] = series

    if dropped:
        logger.warning("registry file %s: dropped state of unknown modules %s", source, sorted(dropped))
    snapshot = with_modules(None, modules, frozenset(registered))
    return replace(
        snapshot,
        observations=MappingProxyType(
            {
                name: MappingProxyType(
                    {key: Series.of(samples[-window:]) for key, samples in by_key.items() if samples}
                )
                for name, by_key in observations.items()
                if name in modules
            }
        ),
        usage=MappingProxyType({k: v for k, v in usage.items() if k in modules}),
        tokens=MappingProxyType({k: v for k, v in tokens.items() if k[0] in modules}),
    )


def file_state(path: Path) -> tuple[int, int] | None:
    """The file's (mtime ns, size), to tell whether another process wrote it; None when absent."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (stat.st_mtime_ns, stat.st_size)


def file_of(snapshot: Snapshot) -> RegistryFile:
    """What a registry file holds of a state: registered modules, observations, usage, tokens."""
    return RegistryFile(
        modules=[snapshot.modules[name] for name in snapshot.modules if name in snapshot.registered],
        observations=[
            ObservationRecord(module=name, pool=pool, bucket=bucket, samples_ms=list(series.samples))
            for name, by_key in snapshot.observations.items()
            for (pool, bucket), series in by_key.items()
        ],
        usage=[
            UsageRecord(module=name, calls=u.calls, failures=u.failures, durations_ms=list(u.durations))
            for name, u in snapshot.usage.items()
        ],
        tokens=[
            TokenRecord(
                module=name,
                model=model,
                prompt_tokens=[p for p, _, _ in series.samples],
                completion_tokens=[c for _, c, _ in series.samples],
                cost_usd=[cost for _, _, cost in series.samples],
            )
            for (name, model), series in snapshot.tokens.items()
        ],
    )
