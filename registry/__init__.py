"""What exists, and where should it run? The DSPy module registry.

The registry knows every DSPy module a pipeline may name (the seed's core catalogue, everything the
installed ``dspy`` exports, and users' own modules registered by import path), what each needs, which
work pool serves it (``general``, ``optimizer`` or ``gpu``), and how long it takes: statically at
first, then learned from the durations the pipeline engine records.

    from registry import get_module, routing_recommendation
    get_module("dspy.ChainOfThought").capabilities   # ('reasoning', 'step_by_step', 'explanation')
    routing_recommendation("dspy.ColBERTv2", {"input_size": 5000}).timeout_ms   # 900

Importing this package does no work: the default registry is built on first use.
"""

from registry.catalogue import CORE_MODULE_NAMES, core_modules
from registry.default import (
    default_registry,
    estimate,
    estimate_duration,
    find_by_capability,
    find_by_category,
    get_module,
    get_pool_type,
    has_native,
    list_modules,
    load,
    record_duration,
    record_tokens,
    register_module,
    register_user_module,
    reset_default_registry,
    routing_recommendation,
    save,
    token_estimate,
    usage_stats,
)
from registry.discovery import discover_modules
from registry.learning import DurationEstimate, TokenEstimate, UsageStats
from registry.models import Category, ModuleInfo, ModuleMetadata, PoolType, Requirements
from registry.routing import RoutingContext, RoutingRecommendation
from registry.sizing import SIZE_FACTORS, InputSize, SizeBucket, size_bucket
from registry.store import ModuleRegistry

__all__ = [
    "CORE_MODULE_NAMES",
    "SIZE_FACTORS",
    "Category",
    "DurationEstimate",
    "InputSize",
    "ModuleInfo",
    "ModuleMetadata",
    "ModuleRegistry",
    "PoolType",
    "Requirements",
    "RoutingContext",
    "RoutingRecommendation",
    "SizeBucket",
    "TokenEstimate",
    "UsageStats",
    "core_modules",
    "default_registry",
    "discover_modules",
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
    "size_bucket",
    "token_estimate",
    "usage_stats",
]
