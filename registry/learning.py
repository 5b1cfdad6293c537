"""Learning from actual runs: observed durations, usage statistics, and the estimates made from them.

Every value here is immutable, so a registry snapshot can share them with readers without locks; a
write makes a new `Series` or `Usage` and the registry swaps its snapshot.

How an estimate is chosen (`estimate_for`), for a module, an input-size bucket and a pool:

1. The samples recorded for exactly that (pool, bucket): once there are at least ``min_samples`` of
   them, their median is the estimate (``source="learned"``). The median, over a window of the most
   recent samples, follows drift and ignores the odd slow outlier.
2. Otherwise the samples of every bucket of that pool, each normalised to a ``normal``-sized run by its
   bucket's factor and scaled back to the requested bucket, again once there are ``min_samples``.
3. When no pool was named, 1 and 2 are tried on the module's own pool, then on all pools together (a
   step may have been rerouted to the general pool by the fallback policy).
4. Otherwise the static catalogue value times the bucket's factor (``source="static"``), exactly the
   seed's ``estimate_duration``; so the seed's examples hold on a fresh registry.

Failed runs count in the usage statistics but never in estimates: a call that failed fast says nothing
about how long a successful one takes.

Tokens and cost are learned the same way, per (module, LM model): each finished batch adds one sample,
its prompt tokens, completion tokens and cost *per row*, and `TokenSeries.estimate` is the median of
the recent samples (from the first sample on: any figure beats none for a budget). A cost the cost map
does not know stays unknown (None) rather than zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from registry.models import ModuleInfo, PoolType
from registry.sizing import SIZE_FACTORS, SizeBucket

__all__ = [
    "DurationEstimate",
    "ObservationKey",
    "Series",
    "TokenEstimate",
    "TokenKey",
    "TokenSample",
    "TokenSeries",
    "Usage",
    "UsageStats",
    "estimate_for",
    "percentile",
]

#: (pool, bucket): where, inside one module's observations, a series of samples belongs.
ObservationKey = tuple[PoolType, SizeBucket]
#: (module, LM model): whose token and cost samples a `TokenSeries` holds.
TokenKey = tuple[str, str]
#: One row's (prompt tokens, completion tokens, cost in USD or None when unknown).
TokenSample = tuple[float, float, float | None]


def percentile(sorted_values: tuple[float, ...] | list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of sorted values, linearly interpolated.

    Args:
        sorted_values: At least one value, ascending.
        q: The percentile, between 0 and 100.
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    position = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


@dataclass(frozen=True, slots=True)
class Series:
    """The most recent observed durations (ms) of one (module, pool, bucket), and their median.

    Attributes:
        samples: The durations, oldest first, at most ``window`` of them.
        median: Their median, computed once at write time so reads stay cheap.
    """

    samples: tuple[float, ...]
    median: float

    @classmethod
    def of(cls, samples: Iterable[float]) -> Series:
        """A series of the given samples.

        Args:
            samples: Durations in milliseconds, oldest first.
        """
        values = tuple(samples)
        return cls(values, percentile(sorted(values), 50) if values else 0.0)

    def add(self, duration_ms: float, window: int) -> Series:
        """A new series with one more sample, the oldest dropped beyond ``window``.

        Args:
            duration_ms: The observed duration.
            window: How many samples to keep.
        """
        return Series.of((*self.samples, duration_ms)[-window:])


@dataclass(frozen=True, slots=True)
class Usage:
    """The usage of one module: every call counted, durations of the recent successful ones.

    Attributes:
        calls: Every recorded call.
        failures: The recorded calls that failed.
        durations: Recent successful durations (ms), oldest first, bounded by the window.
    """

    calls: int = 0
    failures: int = 0
    durations: tuple[float, ...] = ()

    def add(self, duration_ms: float, *, success: bool, window: int) -> Usage:
        """A new `Usage` with one more call.

        Args:
            duration_ms: The call's duration.
            success: Whether it succeeded (only successful durations are kept).
            window: How many durations to keep.
        """
        durations = (*self.durations, duration_ms)[-window:] if success else self.durations
        return Usage(self.calls + 1, self.failures + (0 if success else 1), durations)


class DurationEstimate(BaseModel):
    """A duration estimate and where it came from.

    Attributes:
        ms: The estimated duration of one call, in milliseconds.
        source: ``static`` (the catalogue value) or ``learned`` (observed runs).
        samples: How many observed runs the estimate rests on (for ``static``, how many there were,
            fewer than needed).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ms: int = Field(ge=0)
    source: Literal["static", "learned"]
    samples: int = Field(ge=0)


class UsageStats(BaseModel):
    """How a module has been used.

    Attributes:
        name: The module.
        calls: Recorded calls.
        failures: Recorded failed calls.
        p50_ms: Median duration of the recent successful calls; ``None`` before the first one.
        p95_ms: 95th percentile of the same; ``None`` before the first one.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    calls: int = Field(ge=0)
    failures: int = Field(ge=0)
    p50_ms: float | None = None
    p95_ms: float | None = None

    @property
    def failure_rate(self) -> float:
        """Failures over calls (0.0 with no calls)."""
        return self.failures / self.calls if self.calls else 0.0

    @classmethod
    def of(cls, name: str, usage: Usage | None) -> UsageStats:
        """The statistics of a `Usage` record.

        Args:
            name: The module.
            usage: Its record, or ``None`` when it was never used.
        """
        if usage is None:
            return cls(name=name, calls=0, failures=0)
        ordered = sorted(usage.durations)
        if not ordered:
            return cls(name=name, calls=usage.calls, failures=usage.failures)
        return cls(
            name=name,
            calls=usage.calls,
            failures=usage.failures,
            p50_ms=round(percentile(ordered, 50), 3),
            p95_ms=round(percentile(ordered, 95), 3),
        )


_ALL_POOLS: tuple[PoolType, ...] = tuple(PoolType)


@lru_cache(maxsize=8192)
def _make(ms: int, source: Literal["static", "learned"], samples: int) -> DurationEstimate:
    # Estimates are immutable values that repeat (the same median and count after most writes), so
    # sharing them keeps the first query after a write cheap; a validated build costs microseconds.
    return DurationEstimate(ms=ms, source=source, samples=samples)


def _learned(ms: float, samples: int) -> DurationEstimate:
    # At least 1 ms: callers size batches by dividing by the estimate.
    return _make(max(1, round(ms)), "learned", samples)


def _from_series(
    series: Mapping[ObservationKey, Series], pools: tuple[PoolType, ...], bucket: SizeBucket, min_samples: int
) -> tuple[DurationEstimate | None, int]:
    exact = [s for pool in pools if (s := series.get((pool, bucket))) is not None]
    exact_count = sum(len(s.samples) for s in exact)
    if exact_count >= min_samples:
        if len(exact) == 1:
            return _learned(exact[0].median, exact_count), exact_count
        merged = sorted(v for s in exact for v in s.samples)
        return _learned(percentile(merged, 50), exact_count), exact_count
    normalised = sorted(
        value / SIZE_FACTORS[key[1]] for key, s in series.items() if key[0] in pools for value in s.samples
    )
    if len(normalised) >= min_samples:
        return _learned(percentile(normalised, 50) * SIZE_FACTORS[bucket], len(normalised)), len(normalised)
    return None, len(normalised)


def estimate_for(
    info: ModuleInfo,
    series: Mapping[ObservationKey, Series] | None,
    bucket: SizeBucket,
    pool: PoolType | None,
    min_samples: int,
) -> DurationEstimate:
    """The duration estimate of one call of a module (see the module docstring for the rules).

    Args:
        info: The module's record (its static duration and pool).
        series: The module's observed durations, by (pool, bucket); ``None`` when there are none.
        bucket: The input-size bucket asked about.
        pool: The pool asked about; ``None`` means the module's own pool, then any pool.
        min_samples: Observed runs needed before a learned estimate replaces the static one.
    """
    seen = 0
    if series:
        own = pool or info.pool_type
        # The common case first: enough samples for exactly this pool and bucket.
        exact = series.get((own, bucket))
        if exact is not None and len(exact.samples) >= min_samples:
            return _learned(exact.median, len(exact.samples))
        scopes: list[tuple[PoolType, ...]] = [(own,)]
        if pool is None:
            scopes.append(_ALL_POOLS)
        for pools in scopes:
            estimate, count = _from_series(series, pools, bucket, min_samples)
            if estimate is not None:
                return estimate
            seen = max(seen, count)
    return _make(round(info.estimated_duration_ms * SIZE_FACTORS[bucket]), "static", seen)


class TokenEstimate(BaseModel):
    """Expected LM usage of one row of a module on one LM model.

    Attributes:
        prompt_tokens: Median prompt tokens per row.
        completion_tokens: Median completion tokens per row.
        cost_usd: Median cost per row in USD; None when the model's price is unknown.
        samples: How many batches the figures rest on.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt_tokens: float = Field(ge=0)
    completion_tokens: float = Field(ge=0)
    cost_usd: float | None = Field(default=None, ge=0)
    samples: int = Field(ge=1)


@dataclass(frozen=True, slots=True)
class TokenSeries:
    """The most recent per-row token and cost samples of one (module, model), oldest first."""

    samples: tuple[TokenSample, ...]

    def add(self, sample: TokenSample, window: int) -> TokenSeries:
        """A new series with one more sample, the oldest dropped beyond ``window``.

        Args:
            sample: Per-row prompt tokens, completion tokens and cost (None: unknown).
            window: How many samples to keep.
        """
        return TokenSeries((*self.samples, sample)[-window:])

    def estimate(self) -> TokenEstimate | None:
        """The medians of the samples (None with no sample)."""
        if not self.samples:
            return None
        costs = sorted(c for _, _, c in self.samples if c is not None)
        return TokenEstimate(
            prompt_tokens=round(percentile(sorted(p for p, _, _ in self.samples), 50), 3),
            completion_tokens=round(percentile(sorted(c for _, c, _ in self.samples), 50), 3),
            # Unknown unless most samples were priced: a half-priced median would understate.
            cost_usd=percentile(costs, 50) if len(costs) * 2 > len(self.samples) else None,
            samples=len(self.samples),
        )
