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
from registry.persistence import (
    ObservationRecord,
    RegistryFile,
    TokenRecord,
    UsageRecord,
    read_registry_file,
    write_registry_file,
)
from registry.routing import RoutingContext, RoutingRecommendation, context_bucket, parse_context, recommend
from registry.sizing import InputSize, size_bucket
from registry.snapshot import EMPTY, with_modules

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
        core = (*core_modules(), *pattern_modules()) if include_core else ()
        for info in (*core, *(discover_modules() if discover else ())):
            base.setdefault(info.name, info)  # core first, so core wins
        self._base: Mapping[str, ModuleInfo] = MappingProxyType(base)
        self._write_lock = threading.Lock()
        self._snapshot = with_modules(None, dict(base), frozenset())

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
            if success:
                key: ObservationKey = (parsed_pool or info.pool_type, bucket)
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

    def token_estimate(self, name: str, model: str) -> TokenEstimate | None:
        """Expected tokens and cost of one row of ``name`` on ``model``; None before any was recorded."""
        series = self._snapshot.tokens.get((name, str(model)))
        return series.estimate() if series is not None else None

    # --- persistence ----------------------------------------------------------------------------
    def to_file(self) -> RegistryFile:
        """The registry's persistent state: registered modules, observations, usage."""
        snapshot = self._snapshot
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

    def save(self, path: Path | str | None = None) -> Path:
        """Write the persistent state to the registry file, atomically.

        Args:
            path: Where to write; defaults to `path`.

        Returns:
            The file written.

        Raises:
            RegistryPersistenceError: The file cannot be written.
        """
        target = Path(path) if path is not None else self.path
        write_registry_file(target, self.to_file())
        return target

    def load(self, path: Path | str | None = None) -> None:
        """Replace the registered modules, observations and usage with those of a registry file.

        The catalogue (core and discovered) stays; persisted registrations override it. Observations
        or usage of a module that no longer exists (a ``dspy`` upgrade removed it) are dropped, with a
        warning.

        Args:
            path: The file; defaults to `path`.

        Raises:
            RegistryPersistenceError: The file is missing, unreadable or corrupt (a backup is kept).
        """
        source = Path(path) if path is not None else self.path
        if not source.exists():
            raise RegistryPersistenceError(f"no registry file at {source}")
        data = read_registry_file(source)
        with self._write_lock:
            modules = dict(self._base)
            for record in data.modules:
                modules[record.name] = record
            observations: dict[str, dict[ObservationKey, Series]] = {}
            usage: dict[str, Usage] = {}
            dropped: set[str] = set()
            for obs in data.observations:
                if obs.module not in modules:
                    dropped.add(obs.module)
                    continue
                samples = obs.samples_ms[-self.window :]
                if samples:
                    observations.setdefault(obs.module, {})[(obs.pool, obs.bucket)] = Series.of(samples)
            for item in data.usage:
                if item.module not in modules:
                    dropped.add(item.module)
                    continue
                usage[item.module] = Usage(
                    item.calls, item.failures, tuple(item.durations_ms[-self.window :])
                )
            tokens: dict[TokenKey, TokenSeries] = {}
            for learned in data.tokens:
                if learned.module not in modules:
                    dropped.add(learned.module)
                    continue
                token_samples = list(
                    zip(learned.prompt_tokens, learned.completion_tokens, learned.cost_usd, strict=True)
                )
                tokens[(learned.module, learned.model)] = TokenSeries(tuple(token_samples[-self.window :]))
            if dropped:
                logger.warning(
                    "registry file %s: dropped state of unknown modules %s", source, sorted(dropped)
                )
            snapshot = with_modules(None, modules, frozenset(r.name for r in data.modules))
            self._snapshot = replace(
                snapshot,
                observations=MappingProxyType({k: MappingProxyType(v) for k, v in observations.items()}),
                usage=MappingProxyType(usage),
                tokens=MappingProxyType(tokens),
            )
