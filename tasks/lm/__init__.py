"""LM construction: the offline extractive default, and ``dspy.LM`` built from settings.

Build an LM inside each task with `build_lm` (never pass or persist one); log and record it with
`describe_lm`, which never holds the key.
"""

from tasks.lm.factory import NO_KEY_PLACEHOLDER, build_lm, configured_lm, describe_lm, resolve_api_key
from tasks.lm.offline import (
    AsyncOfflineExtractiveEngine,
    OfflineExtractiveEngine,
    build_offline_lm,
    is_offline_lm,
    respond,
)

__all__ = [
    "NO_KEY_PLACEHOLDER",
    "AsyncOfflineExtractiveEngine",
    "OfflineExtractiveEngine",
    "build_lm",
    "build_offline_lm",
    "configured_lm",
    "describe_lm",
    "is_offline_lm",
    "resolve_api_key",
    "respond",
]
