"""`ModuleRegistry`: the thread-safe store of module records, learned durations and usage.

Read-optimised by copy-on-write. All state lives in one immutable `Snapshot`; a reader takes
``self._snapshot`` once (a single attribute read, atomic in CPython) and answers from it without a
lock, so a lookup costs a dict access. Writers serialise on one lock, build a new snapshot that shares
every unchanged part with the old one, and swap it in; a reader that started before the swap simply
finishes on the old snapshot. Writes are rare (a registration, one duration per dispatched batch), so
their O(number of modules) copy is cheap next to the lock-free reads.
"""

from __future__ import annotations

import difflib
import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from dspex.exceptions import (
    InvalidModuleInfoError,
    RegistryPersistenceError,
    RegistryQueryError,
    UnknownModuleError,
)
from dspex.imports import refused_root
from dspex.settings import get_settings
from registry.catalogue import core_modules, pattern_modules
from registry.discovery import discover_modules
from registry.learning import (
    DurationEstimate,
    ObservationKey,
    Series,
    TokenEstimate,
    TokenKey,
    TokenSeries,
    Usage,
    UsageStats,
    estimate_for,
)
from registry.models import (
    Category,
    ModuleInfo,
    ModuleMetadata,
    PoolType,
    is_import_path,
    parse_module_info,
)
from registry.persistence import RegistryFile, read_registry_file, write_registry_file
from registry.routing import RoutingContext, RoutingRecommendation, context_bucket, parse_context, recommend
from registry.sizing import InputSize, size_bucket
from registry.snapshot import EMPTY, with_modules
from registry.sync import Pending, build_snapshot, file_of, file_state, locked

__all__ = ["DEFAULT_WINDOW", "ModuleRegistry"]

logger = logging.getLogger(__name__)

#: How many recent samples each duration series and usage record keeps.
DEFAULT_WINDOW = 256


def _parse_pool(pool: PoolType | str) -> PoolType:
    try:
        return PoolType(pool)
    except ValueError:
        valid = ", ".join(p.value for p in PoolType)
        raise RegistryQueryError(f"unknown pool {pool!r}; valid pools: {valid}") from None


class ModuleRegistry:
    """The registry of DSPy modules: what exists, what it needs, where it runs, how long it takes.

    Args:
        include_core: Start with the seed's core catalogue.
        discover: Add every module the installed ``dspy`` exports (core entries win).
        path: The registry file for `save` and `load`; defaults to the setting
            ``DSPEX_REGISTRY_PATH`` (``<DSPEX_HOME>/registry.json``).
        min_samples: Observed runs needed before a learned estimate replaces the static one;
            defaults to the setting ``DSPEX_REGISTRY_MIN_SAMPLES``.
        window: How many recent durations each series and usage record keeps.

    A fresh registry answers exactly as the seed does (static estimates); it learns once durations
    are recorded with `record_duration`. Nothing is read from disk until `load` is called.
    """

    def __init__(
        self,
        *,
        include_core: bool = True,
        discover: bool = True,
        path: Path | str | None = None,
        min_samples: int | None = None,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        settings = get_settings()
        self.path: Path = Path(path) if path is not None else settings.resolved_registry_path
        self.min_samples: int = min_samples if min_samples is not None else settings.registry_min_samples
        if self.min_samples < 1 or window < 1:
            raise RegistryQueryError(
                f"min_samples and window must be >= 1, got {self.min_samples} and {window}"
            )
        self.window = window
        base: dict[str, ModuleInfo] = {}
        # DSPex's own patterns come with discovery: a registry of the seed's catalogue alone stays the seed's.
        found = (*pattern_modules(), *discover_modules()) if discover else ()
        for info in (*(core_modules() if include_core else ()), *found):
            base.setdefault(info.name, info)  # core first, so core wins
        self._base: Mapping[str, ModuleInfo] = MappingProxyType(base)
        self._write_lock = threading.Lock()
        self._snapshot = with_modules(None, dict(base), frozenset())
        # Changes since the last sync with the file, merged into it on save (registry.sync).
        self._pending = Pending()
        self._synced: tuple[int, int] | None = None

    # --- registration ---------------------------------------------------------------------------
    def register_module(self, info: ModuleInfo | Mapping[str, Any]) -> ModuleInfo:
        """Insert a module, or update the record of one with the same name.

        Args:
            info: A `ModuleInfo`, or a mapping validated into one.

        Returns:
            The stored record.

        Raises:
            InvalidModuleInfoError: The mapping is not a valid record.
        """
        record = parse_module_info(info, where="register_module record")
        with self._write_lock:
            current = self._snapshot
            modules = dict(current.modules)
            modules[record.name] = record
            self._snapshot = with_modules(current, modules, current.registered | {record.name})
            self._pending.modules[record.name] = record
        return record

    def register_user_module(self, import_path: str, **fields: Any) -> ModuleInfo:
        """Register a user's module by its import path, without importing it.

        Args:
            import_path: ``"pkg.mod:Class"``; it becomes the module's registry name.
            **fields: Any other `ModuleInfo` fields (``category`` defaults to ``custom``,
                ``estimated_duration_ms`` to 1000); ``metadata`` may be a partial mapping.

        Raises:
            InvalidModuleInfoError: A malformed import path or fields.
        """
        if not isinstance(import_path, str) or not is_import_path(import_path):
            raise InvalidModuleInfoError(
                f"user module import path must look like 'pkg.mod:Class', got {import_path!r}"
            )
        reason = refused_root(import_path.split(":")[0].split(".")[0])
        if reason:
            raise InvalidModuleInfoError(
                f"user module {import_path!r} is refused: {reason}; a user module is a dspy.Module "
                "subclass in your own package"
            )
        if "name" in fields:
            raise InvalidModuleInfoError("register_user_module takes no 'name': the import path is the name")
        given = fields.pop("metadata", None) or {}
        if isinstance(given, ModuleMetadata):
            given = given.model_dump()
        if not isinstance(given, Mapping):
            raise InvalidModuleInfoError(f"metadata must be a mapping, got {type(given).__name__}")
        record: dict[str, Any] = {"category": Category.CUSTOM, "estimated_duration_ms": 1000, **fields}
        record["name"] = import_path
        record["metadata"] = {**given, "source": "user", "import_path": import_path}
        return self.register_module(record)

    # --- queries (lock-free) --------------------------------------------------------------------
    def get_module(self, name: str) -> ModuleInfo:
        """The record of a module.

        Args:
            name: Its registry name.

        Raises:
            UnknownModuleError: No such module; the error lists close names.
        """
        try:
            return self._snapshot.modules[name]
        except (KeyError, TypeError):
            pass
        # Another process may have registered it since this one last read the file.
        if isinstance(name, str) and self.refresh():
            found = self._snapshot.modules.get(name)
            if found is not None:
                return found
        raise self._unknown(name) from None

    def _unknown(self, name: object) -> UnknownModuleError:
        names = list(self._snapshot.modules)
        text = str(name)
        by_lower = {n.lower(): n for n in names}
        # A case slip or a missing "dspy." prefix is the commonest mistake; then fuzzy matches.
        exact = [by_lower[c] for c in (text.lower(), f"dspy.{text}".lower()) if c in by_lower]
        fuzzy = difflib.get_close_matches(text, names, n=3, cutoff=0.6)
        return UnknownModuleError(text, list(dict.fromkeys([*exact, *fuzzy]))[:3])

    def __contains__(self, name: object) -> bool:
        return name in self._snapshot.modules

    def __len__(self) -> int:
        return len(self._snapshot.modules)

    def names(self) -> list[str]:
        """Every registered name: the core catalogue first, then discovered, then user modules."""
        return list(self._snapshot.modules)

    def list_modules(self) -> list[ModuleInfo]:
        """Every record, in the order of `names`."""
        return list(self._snapshot.modules.values())

    def find_by_capability(self, capability: str) -> list[str]:
        """The names of the modules with a capability, in registry order.

        A specialised capability also answers for its general one (see `CAPABILITY_IMPLIES`): the
        seed's ``find_by_capability(:reasoning)`` finds ProgramOfThought through ``complex_reasoning``.

        Args:
            capability: A capability word (case-insensitive); an unknown one finds nothing.
        """
        return list(self._snapshot.by_capability.get(str(capability).strip().lower(), ()))

    def find_by_category(self, category: Category | str) -> list[str]:
        """The names of the modules in a category, in registry order.

        Args:
            category: A `Category` or its value.

        Raises:
            RegistryQueryError: Not a category; the message lists the valid ones.
        """
        try:
            key = Category(category)
        except ValueError:
            valid = ", ".join(c.value for c in Category)
            raise RegistryQueryError(f"unknown category {category!r}; valid categories: {valid}") from None
        return list(self._snapshot.by_category.get(key, ()))

    def get_pool_type(self, name: str) -> PoolType:
        """The pool that serves a module.

        Raises:
            UnknownModuleError: No such module.
        """
        return self.get_module(name).pool_type

    def has_native(self, name: str) -> bool:
        """Whether a native implementation exists; ``False`` for an unknown name, as in the seed."""
        info = self._snapshot.modules.get(name) if isinstance(name, str) else None
        return bool(info and info.native_available)

    def estimate(
        self, name: str, input_size: InputSize | str = "normal", pool: PoolType | str | None = None
    ) -> DurationEstimate:
        """The duration estimate of one call, and whether it is static or learned.

        Args:
            name: The module.
            input_size: A named size (small, normal, large, very_large) or an int (see `registry.sizing`).
            pool: The pool it will run in; ``None`` means the module's own pool, then any pool.

        Raises:
            UnknownModuleError: No such module.
            RegistryQueryError: A bad input size or pool.
        """
        snapshot = self._snapshot
        key = ("estimate", name, input_size, pool)
        try:
            return snapshot.memo[key]
        except (KeyError, TypeError):  # not computed yet, or an unhashable (bad) argument
            pass
        info = snapshot.modules.get(name) if isinstance(name, str) else None
        if info is None:
            raise self._unknown(name)
        bucket = size_bucket(input_size)
        result = estimate_for(
            info,
            snapshot.observations.get(name),
            bucket,
            None if pool is None else _parse_pool(pool),
            self.min_samples,
        )
        if isinstance(input_size, str):  # int sizes vary per call: memoising them would grow unbounded
            snapshot.memo[key] = result
        return result

    def estimate_duration(self, name: str, input_size: InputSize | str = "normal") -> int:
        """The seed's ``estimate_duration``: milliseconds for one call of a module.

        On a fresh registry this is exactly the seed's static base times the size factor (small 0.5,
        normal 1.0, large 2.0, very_large 5.0); once ``min_samples`` durations were recorded it is
        the learned estimate (see `estimate`).

        Raises:
            UnknownModuleError: No such module.
            RegistryQueryError: A bad input size.
        """
        return self.estimate(name, input_size).ms

    def routing_recommendation(
        self, name: str, context: RoutingContext | Mapping[str, Any] | None = None
    ) -> RoutingRecommendation:
        """Where and how to run one call of a module (see `registry.routing`).

        Args:
            name: The module.
            context: ``input_size`` (int) and ``optimize_latency`` (bool), as a mapping or model.

        Raises:
            UnknownModuleError: No such module.
            RegistryQueryError: A bad context.
        """
        snapshot = self._snapshot
        input_size, optimize_latency = parse_context(context)
        bucket = context_bucket(input_size)
        # The answer depends on the input size only through its bucket, so the memo stays small.
        key = ("route", name, bucket, optimize_latency)
        try:
            return snapshot.memo[key]
        except (KeyError, TypeError):
            pass
        info = snapshot.modules.get(name) if isinstance(name, str) else None
        if info is None:
            raise self._unknown(name)
        estimate = estimate_for(info, snapshot.observations.get(name), bucket, None, self.min_samples)
        result = recommend(info, estimate, input_size, optimize_latency)
        snapshot.memo[key] = result
        return result

    def usage_stats(self, name: str) -> UsageStats:
        """Calls, failures and p50/p95 duration of a module's recorded runs.

        Raises:
            UnknownModuleError: No such module.
        """
        snapshot = self._snapshot
        if name not in snapshot.modules:
            raise self._unknown(name)
        return UsageStats.of(name, snapshot.usage.get(name))

    # --- learning (writes) ----------------------------------------------------------------------
    def record_duration(
        self,
        name: str,
        duration_ms: float,
        *,
        pool: PoolType | str | None = None,
        input_size: InputSize | str = "normal",
        success: bool = True,
    ) -> None:
        """Record the actual duration of one call (or one example of a batch).

        Args:
            name: The module that ran.
            duration_ms: How long it took, in milliseconds.
            pool: The pool it ran in; ``None`` means the module's own pool.
            input_size: Its input size, named or int; stored by bucket.
            success: Whether it succeeded; failures count in the usage statistics only.

        Raises:
            UnknownModuleError: No such module.
            RegistryQueryError: A negative or non-finite duration, a bad pool or input size.
        """
        if isinstance(duration_ms, bool) or not isinstance(duration_ms, int | float):
            raise RegistryQueryError(f"duration_ms must be a number, got {type(duration_ms).__name__}")
        if not math.isfinite(duration_ms) or duration_ms < 0:
            raise RegistryQueryError(f"duration_ms must be finite and >= 0, got {duration_ms!r}")
        bucket = size_bucket(input_size)
        parsed_pool = None if pool is None else _parse_pool(pool)
        value = float(duration_ms)
        with self._write_lock:
            current = self._snapshot
            info = current.modules.get(name) if isinstance(name, str) else None
            if info is None:
                raise self._unknown(name)
            usage = dict(current.usage)
            usage[name] = usage.get(name, Usage()).add(value, success=success, window=self.window)
            observations = current.observations
            key: ObservationKey = (parsed_pool or info.pool_type, bucket)
            self._pending.add_call(name, value, success, key)
            if success:
                series = dict(observations.get(name, EMPTY))
                old = series.get(key)
                series[key] = old.add(value, self.window) if old else Series.of((value,))
                observations = MappingProxyType({**observations, name: MappingProxyType(series)})
            self._snapshot = replace(current, usage=MappingProxyType(usage), observations=observations)

    def record_tokens(
        self,
        name: str,
        model: str,
        *,
        prompt_tokens: float,
        completion_tokens: float,
        cost_usd: float | None,
    ) -> None:
        """Record the LM usage of one row of ``name`` on ``model`` (a batch's per-row average).

        Args:
            name: The module that ran.
            model: The LM model it called.
            prompt_tokens: Prompt tokens per row.
            completion_tokens: Completion tokens per row.
            cost_usd: Cost per row in USD; None when the model's price is unknown.

        Raises:
            UnknownModuleError: No such module.
            RegistryQueryError: A negative or non-finite figure.
        """
        values = [prompt_tokens, completion_tokens, *([] if cost_usd is None else [cost_usd])]
        if any(
            isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0
            for v in values
        ):
            raise RegistryQueryError(f"token and cost figures must be finite and >= 0, got {values!r}")
        sample = (
            float(prompt_tokens),
            float(completion_tokens),
            None if cost_usd is None else float(cost_usd),
        )
        with self._write_lock:
            current = self._snapshot
            if not isinstance(name, str) or name not in current.modules:
                raise self._unknown(name)
            key: TokenKey = (name, str(model))
            old = current.tokens.get(key)
            tokens = dict(current.tokens)
            tokens[key] = old.add(sample, self.window) if old else TokenSeries((sample,))
            self._snapshot = replace(current, tokens=MappingProxyType(tokens))
            self._pending.tokens.setdefault(key, []).append(sample)

    def token_estimate(self, name: str, model: str) -> TokenEstimate | None:
        """Expected tokens and cost of one row of ``name`` on ``model``; None before any was recorded."""
        series = self._snapshot.tokens.get((name, str(model)))
        return series.estimate() if series is not None else None

    # --- persistence ----------------------------------------------------------------------------
    def to_file(self) -> RegistryFile:
        """The registry's persistent state: registered modules, observations, usage, tokens."""
        return file_of(self._snapshot)

    def save(self, path: Path | str | None = None) -> Path:
        """Merge this registry's changes into the registry file, under its lock (`registry.sync`).

        The file is read as it is now (another process may have saved since), this process's
        registrations and samples since its last sync are applied on top, and the result is
        written atomically and becomes this registry's state: nothing another process saved is
        erased, and this process sees it from now on.

        Args:
            path: Where to write; defaults to `path` (another path gets the merge too, but this
                registry keeps its pending changes for its own file).

        Returns:
            The file written.

        Raises:
            RegistryPersistenceError: The file is corrupt (a backup is kept), locked too long, or
                cannot be written.
        """
        target = Path(path) if path is not None else self.path
        own = target == self.path
        with locked(target), self._write_lock:
            data = read_registry_file(target) if target.exists() else None
            snapshot = build_snapshot(data, self._base, self._pending, self.window, target)
            write_registry_file(target, file_of(snapshot))
            if own:
                self._snapshot = snapshot
                self._pending = Pending()
                self._synced = file_state(target)
        return target

    def load(self, path: Path | str | None = None) -> None:
        """Replace the registered modules, observations and usage with those of a registry file.

        The catalogue (core and discovered) stays; persisted registrations override it; changes not
        saved yet are dropped (`refresh` keeps them). Observations or usage of a module that no
        longer exists (a ``dspy`` upgrade removed it) are dropped, with a warning.

        Args:
            path: The file; defaults to `path`.

        Raises:
            RegistryPersistenceError: The file is missing, unreadable or corrupt (a backup is kept).
        """
        source = Path(path) if path is not None else self.path
        if not source.exists():
            raise RegistryPersistenceError(f"no registry file at {source}")
        state = file_state(source)
        data = read_registry_file(source)
        with self._write_lock:
            self._snapshot = build_snapshot(data, self._base, Pending(), self.window, source)
            self._pending = Pending()
            self._synced = state if source == self.path else None

    def refresh(self) -> bool:
        """Take in what other processes saved to the registry file since this one last synced.

        Unsaved changes of this process are kept (applied on top of the file's state). Cheap when
        nothing changed: one ``stat``.

        Returns:
            Whether the file had changed (and was read).

        Raises:
            RegistryPersistenceError: The file changed and is now corrupt (a backup is kept).
        """
        state = file_state(self.path)
        if state is None or state == self._synced:
            return False
        data = read_registry_file(self.path)
        with self._write_lock:
            self._snapshot = build_snapshot(data, self._base, self._pending, self.window, self.path)
            self._synced = state
        return True
