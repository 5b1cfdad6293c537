"""The process-wide default registry and the module-level API that delegates to it.

The default registry is built lazily, on the first call that needs it, never at import time: the core
catalogue, discovery from the installed ``dspy``, and then the registry file at
``settings.resolved_registry_path`` when that file exists (a corrupt file raises
`RegistryPersistenceError` and keeps a backup; it is never silently reset).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from registry.learning import DurationEstimate, TokenEstimate, UsageStats
from registry.models import Category, ModuleInfo, PoolType
from registry.routing import RoutingContext, RoutingRecommendation
from registry.sizing import InputSize
from registry.store import ModuleRegistry

__all__ = [
    "default_registry",
    "estimate",
    "estimate_duration",
    "find_by_capability",
    "find_by_category",
    "get_module",
    "get_pool_type",
    "has_native",
    "list_modules",
    "load",
    "record_duration",
    "record_tokens",
    "register_module",
    "register_user_module",
    "reset_default_registry",
    "routing_recommendation",
    "save",
    "token_estimate",
    "usage_stats",
]

_lock = threading.Lock()
_default: ModuleRegistry | None = None


def default_registry() -> ModuleRegistry:
    """The process-wide registry, created on first use from the current settings."""
    registry = _default
    if registry is not None:
        return registry
    return _create()


def _create() -> ModuleRegistry:
    global _default
    with _lock:
        if _default is None:  # another thread may have built it while this one waited
            registry = ModuleRegistry()
            if registry.path.exists():
                registry.load()
            _default = registry
        return _default


def reset_default_registry() -> None:
    """Forget the default registry, so the next call builds a new one (for tests, changed settings)."""
    global _default
    with _lock:
        _default = None


def register_module(info: ModuleInfo | Mapping[str, Any]) -> ModuleInfo:
    """Insert or update a module in the default registry; see `ModuleRegistry.register_module`."""
    return default_registry().register_module(info)


def register_user_module(import_path: str, **fields: Any) -> ModuleInfo:
    """Register a user module by import path; see `ModuleRegistry.register_user_module`."""
    return default_registry().register_user_module(import_path, **fields)


def get_module(name: str) -> ModuleInfo:
    """A module's record; see `ModuleRegistry.get_module`."""
    return default_registry().get_module(name)


def list_modules() -> list[ModuleInfo]:
    """Every record of the default registry; see `ModuleRegistry.list_modules`."""
    return default_registry().list_modules()


def find_by_capability(capability: str) -> list[str]:
    """Names of modules with a capability; see `ModuleRegistry.find_by_capability`."""
    return default_registry().find_by_capability(capability)


def find_by_category(category: Category | str) -> list[str]:
    """Names of modules in a category; see `ModuleRegistry.find_by_category`."""
    return default_registry().find_by_category(category)


def get_pool_type(name: str) -> PoolType:
    """The pool that serves a module; see `ModuleRegistry.get_pool_type`."""
    return default_registry().get_pool_type(name)


def has_native(name: str) -> bool:
    """Whether a native implementation exists; see `ModuleRegistry.has_native`."""
    return default_registry().has_native(name)


def estimate(
    name: str, input_size: InputSize | str = "normal", pool: PoolType | str | None = None
) -> DurationEstimate:
    """A duration estimate with its source; see `ModuleRegistry.estimate`."""
    return default_registry().estimate(name, input_size, pool)


def estimate_duration(name: str, input_size: InputSize | str = "normal") -> int:
    """The seed's duration estimate in ms; see `ModuleRegistry.estimate_duration`."""
    return default_registry().estimate_duration(name, input_size)


def routing_recommendation(
    name: str, context: RoutingContext | Mapping[str, Any] | None = None
) -> RoutingRecommendation:
    """Where and how to run a module; see `ModuleRegistry.routing_recommendation`."""
    return default_registry().routing_recommendation(name, context)


def record_duration(
    name: str,
    duration_ms: float,
    *,
    pool: PoolType | str | None = None,
    input_size: InputSize | str = "normal",
    success: bool = True,
) -> None:
    """Record an actual duration; see `ModuleRegistry.record_duration`."""
    default_registry().record_duration(name, duration_ms, pool=pool, input_size=input_size, success=success)


def record_tokens(
    name: str, model: str, *, prompt_tokens: float, completion_tokens: float, cost_usd: float | None
) -> None:
    """Record one row's LM usage; see `ModuleRegistry.record_tokens`."""
    default_registry().record_tokens(
        name, model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost_usd=cost_usd
    )


def token_estimate(name: str, model: str) -> TokenEstimate | None:
    """Expected tokens and cost of one row; see `ModuleRegistry.token_estimate`."""
    return default_registry().token_estimate(name, model)


def usage_stats(name: str) -> UsageStats:
    """A module's usage statistics; see `ModuleRegistry.usage_stats`."""
    return default_registry().usage_stats(name)


def save(path: Path | str | None = None) -> Path:
    """Save the default registry's state; see `ModuleRegistry.save`."""
    return default_registry().save(path)


def load(path: Path | str | None = None) -> None:
    """Reload the default registry's state from its file; see `ModuleRegistry.load`."""
    default_registry().load(path)
