"""Run metrics: throughput, row latency percentiles and error rate per step, orchestrator memory.

The engine reports each routed step's batch results here (`observe_batches`, one call per step);
the ``run-pipeline`` flow opens a `collect` block around its steps and turns what was observed,
plus the step records, into `RunMetrics` for `PipelineSummary` and the summary artifact. Outside a
`collect` block the observe functions do nothing.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Collector",
    "RunMetrics",
    "StepMetrics",
    "build_metrics",
    "collect",
    "metrics_markdown",
    "observe_batches",
    "observe_latencies",
    "peak_rss_mb",
    "percentile",
]


class StepMetrics(BaseModel):
    """How one step performed."""

    model_config = ConfigDict(extra="forbid")

    step: str
    pool: str
    rows: int
    failed: int
    error_rate: float = Field(description="Failed rows over rows the step processed (0..1).")
    rows_per_s: float | None = Field(description="Rows processed per second of the step's wall time.")
    p50_row_ms: float | None = Field(description="Median latency of one row (None: no row latencies).")
    p95_row_ms: float | None = Field(description="95th percentile latency of one row.")


class RunMetrics(BaseModel):
    """How the whole run performed."""

    model_config = ConfigDict(extra="forbid")

    rows_per_s: float = Field(description="Input rows per second of the run's wall time.")
    error_rate: float = Field(description="Failed rows over input rows (0..1).")
    peak_rss_mb: float = Field(description="Peak resident memory of the orchestrating process, in MiB.")
    steps: list[StepMetrics] = Field(default_factory=list)


class Collector:
    """Row latencies per step, gathered from the engine's threads (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.latencies: dict[str, list[float]] = {}

    def add(self, step: str, values: Iterable[float]) -> None:
        """Add row latencies (ms) of ``step``."""
        kept = [v for v in values if v > 0]
        with self._lock:
            self.latencies.setdefault(step, []).extend(kept)


_COLLECTOR: ContextVar[Collector | None] = ContextVar("dspex_metrics_collector", default=None)


@contextlib.contextmanager
def collect() -> Iterator[Collector]:
    """Collect row latencies of the steps run inside this block (threads that copy the context,
    as the engine's and Prefect's do, report into the same collector)."""
    collector = Collector()
    token = _COLLECTOR.set(collector)
    try:
        yield collector
    finally:
        _COLLECTOR.reset(token)


def observe_batches(step: str | None, results: Sequence[Any]) -> None:
    """Record the row latencies of a step's batch results (exceptions are skipped)."""
    collector = _COLLECTOR.get()
    if collector is None:
        return
    for result in results:
        latencies = getattr(result, "latencies_ms", None)
        errors = getattr(result, "errors", None)
        if latencies is None:
            continue
        if errors is None:
            collector.add(str(step), latencies)
        else:
            collector.add(
                str(step), (lat for lat, err in zip(latencies, errors, strict=False) if err is None)
            )


def observe_latencies(step: str | None, latencies: Iterable[float]) -> None:
    """Record row latencies (ms) measured some other way (e.g. a retrieval batch's per-query mean)."""
    collector = _COLLECTOR.get()
    if collector is not None:
        collector.add(str(step), latencies)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) by the nearest-rank method; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(math.ceil(q / 100 * len(ordered)), 1)
    return float(ordered[rank - 1])


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def build_metrics(
    records: Sequence[Any], collector: Collector | None, rows: int, failed: int, wall_ms: float
) -> RunMetrics:
    """Turn step records (`flows.engine.context.StepRecord`) and collected latencies into `RunMetrics`.

    Args:
        records: The engine's step records, in execution order.
        collector: What `collect` gathered (None: no row latencies).
        rows: Input rows of the run.
        failed: Rows that failed.
        wall_ms: The run's wall time.
    """
    latencies = collector.latencies if collector is not None else {}
    steps = []
    for record in records:
        row_ms = latencies.get(record.step, [])
        p50, p95 = percentile(row_ms, 50), percentile(row_ms, 95)
        steps.append(
            StepMetrics(
                step=record.step,
                pool=record.pool,
                rows=record.rows,
                failed=record.failed,
                error_rate=round(record.failed / record.rows, 4) if record.rows else 0.0,
                rows_per_s=round(record.rows / (record.actual_ms / 1000), 1)
                if record.actual_ms > 0
                else None,
                p50_row_ms=round(p50, 2) if p50 is not None else None,
                p95_row_ms=round(p95, 2) if p95 is not None else None,
            )
        )
    return RunMetrics(
        rows_per_s=round(rows / (wall_ms / 1000), 1) if wall_ms > 0 else 0.0,
        error_rate=round(failed / rows, 4) if rows else 0.0,
        peak_rss_mb=peak_rss_mb(),
        steps=steps,
    )


def metrics_markdown(run_metrics: RunMetrics | None) -> list[str]:
    """Markdown lines for the summary artifact: the run's figures and a table per step (empty for
    None)."""
    if run_metrics is None:
        return []

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines = [
        "",
        "## Run metrics",
        "",
        f"- throughput: **{run_metrics.rows_per_s:.1f} rows/s**, error rate: **{run_metrics.error_rate:.2%}**, "
        f"orchestrator peak RSS: **{run_metrics.peak_rss_mb:.0f} MiB**",
        "",
        "| step | pool | rows | rows/s | p50 row ms | p95 row ms | error rate |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {s.step} | {s.pool} | {s.rows} | {'-' if s.rows_per_s is None else f'{s.rows_per_s:.1f}'} | "
        f"{ms(s.p50_row_ms)} | {ms(s.p95_row_ms)} | {s.error_rate:.2%} |"
        for s in run_metrics.steps
    ]
    return lines
