"""Prefect artifacts of a pipeline run: estimated versus actual durations, a summary, progress.

Every key is per pipeline (``duration-estimates-<pipeline>``, ``pipeline-summary-<pipeline>``,
``progress-<pipeline>``) and stable across its runs, so the UI's timeline of a key is one pipeline's
history. The ``pool`` column names the pool that actually ran the step's batches: when a pool could
not take work and its batches went elsewhere (the fallback policy), it says so, e.g.
``general (fallback from gpu)``.

The duration table puts what a user reads first in its first columns (`DURATION_COLUMNS`: step,
pool, rows, estimated ms, actual ms, error %, estimate), so it fits a screen (17 columns were cut
off at 1400 px: issue 26.6); batch counts, failures, tokens and cost go to a second table
(``duration-details-<pipeline>``). The ``estimate`` column says where the estimate came from:
``seed`` (the catalogue's static value, used until enough runs were observed: often far off, and
labelled so), ``learned`` (earlier runs), ``reused`` (every row was reused from an earlier run, so
nothing ran and no estimate is judged), or ``none`` (native steps).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from dspex.redact import redact, redact_data
from flows.telemetry.metrics import metrics_markdown

__all__ = [
    "DURATION_ARTIFACT_KEY",
    "DURATION_COLUMNS",
    "artifact_key",
    "details_key",
    "duration_key",
    "duration_rows",
    "estimate_label",
    "pool_label",
    "progress_reporter",
    "summary_key",
    "write_duration_artifact",
    "write_summary_artifact",
]

DURATION_ARTIFACT_KEY = "duration-estimates"
#: The duration table's columns, in order; every other column of `duration_rows` is a detail.
DURATION_COLUMNS = ("step", "pool", "rows", "estimated ms", "actual ms", "error %", "estimate")


def summary_key(pipeline: str) -> str:
    """The summary artifact's key for a pipeline (Prefect keys: lowercase letters, digits, dashes)."""
    return "pipeline-summary-" + _slug(pipeline)


def _slug(pipeline: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", pipeline.lower()).strip("-")


def duration_key(pipeline: str) -> str:
    """The duration table's key for a pipeline: ``duration-estimates-<pipeline>``."""
    return f"{DURATION_ARTIFACT_KEY}-{_slug(pipeline)}"[:100]


def details_key(pipeline: str) -> str:
    """The second duration table's key: ``duration-details-<pipeline>`` (batches, tokens, cost)."""
    return f"duration-details-{_slug(pipeline)}"[:100]


def estimate_label(record: Any) -> str:
    """Where a step's estimate came from, as the table says it (see the module docstring)."""
    reused: int = getattr(record, "reused_rows", 0) or 0
    if not record.rows and reused:
        return "reused"
    return {"static": "seed"}.get(str(record.estimate_source), str(record.estimate_source))


def pool_label(record: Any) -> str:
    """The pool(s) that actually ran a step, with the fallback shown.

    The engine records the pool it routed to (``pool``), the one the registry or the step asked for
    (from the route's reason) and, per dispatched batch, where it actually ran (``actual_pool``, a
    name or a list of names).
    """
    routed = str(record.pool)
    actual = getattr(record, "actual_pool", None) or routed
    ran = [actual] if isinstance(actual, str) else sorted(set(actual)) or [routed]
    requested = getattr(record, "requested_pool", None)
    if not requested and str(getattr(record, "reason", "")).startswith("fallback: pool '"):
        requested = str(record.reason).split("'", 2)[1]
    requested = requested or routed
    label = ", ".join(ran)
    moved = [p for p in ran if p != requested]
    return f"{label} (fallback from {requested})" if moved else label


def duration_rows(records: list[Any]) -> list[dict[str, Any]]:
    """The duration table: one row per executed step, `DURATION_COLUMNS` first, then the details.

    ``rows`` counts the rows that ran; reused rows are in ``reused rows``, never in the estimate's
    error (issue 26.2).
    """
    return [
        {
            "step": r.step,
            "pool": pool_label(r),
            "rows": r.rows,
            "estimated ms": r.estimated_ms if r.estimated_ms is not None and r.rows else "-",
            "actual ms": r.actual_ms,
            "error %": r.error_pct if r.error_pct is not None and r.rows else "-",
            "estimate": estimate_label(r),
            "kind": r.kind,
            "module": r.module or "-",
            "batch size": r.batch_size,
            "batches": r.batches,
            "failed": r.failed,
            # Tokens and cost, estimated (learned per module and model) vs actual (issue 12).
            **_usage_columns(r),
            **_batch_columns(r),
        }
        for r in records
    ]


def _batch_columns(record: Any) -> dict[str, Any]:
    """A batch-mode step's provider batches (issue 21): rounds, submitted and completed times."""
    batch = getattr(record, "lm_batch", None)
    if batch is None:
        return {}
    return {
        "batch rounds": batch.rounds,
        "batch requests": batch.requests,
        "batch submitted": ", ".join(t or "-" for t in batch.submitted_at) or "-",
        "batch completed": ", ".join(t or "-" for t in batch.completed_at) or "-",
        "batch wait s": batch.wait_s,
        "batch price": batch.price,
        # Our side of each round (the rows' programs, then files and calls), and the last pass.
        "batch programs s": _seconds([*batch.replay_ms, batch.finish_ms]),
        "batch I/O s": _seconds(batch.io_ms),
    }


def _seconds(values: list[float]) -> str:
    return ", ".join(f"{ms / 1000:.2f}" for ms in values) or "-"


def _usage_lines(summary: Any) -> list[str]:
    """The summary's LM usage lines (tokens, cost, reused rows, why the run stopped)."""
    usage = getattr(summary, "usage", None)
    if usage is None:
        return []
    cost = f"${usage.cost_usd:.6f}" if usage.cost_usd is not None else "unknown"
    if usage.unpriced_models:
        cost += f" (no price for {', '.join(usage.unpriced_models)})"
    lines = [
        f"- LM usage: **{usage.prompt_tokens}** prompt + **{usage.completion_tokens}** completion tokens, "
        f"{usage.requests} requests, cost **{cost}**; reused rows: {getattr(summary, 'reused_rows', 0)}"
    ]
    if getattr(summary, "stopped", None):
        lines.append(f"- stopped early: {summary.stopped} ({summary.not_attempted} rows not attempted)")
    return lines


def _usage_columns(record: Any) -> dict[str, Any]:
    usage = getattr(record, "usage", None)
    if usage is None:
        return {}
    estimated_tokens = getattr(record, "estimated_tokens", None)
    estimated_cost = getattr(record, "estimated_cost_usd", None)
    return {
        "estimated tokens": round(estimated_tokens) if estimated_tokens is not None else "-",
        "actual tokens": usage.prompt_tokens + usage.completion_tokens,
        "estimated cost USD": round(estimated_cost, 6) if estimated_cost is not None else "-",
        "actual cost USD": round(usage.cost_usd, 6) if usage.cost_usd is not None else "-",
        "reused rows": getattr(record, "reused_rows", 0),
    }


def write_duration_artifact(records: list[Any], pipeline: str, lm_name: str) -> Any:
    """Create this run's duration tables: `duration_key` (`DURATION_COLUMNS`) and `details_key`."""
    rows = duration_rows(records)
    first = [{c: row[c] for c in DURATION_COLUMNS} for row in rows]
    details = [
        {"step": row["step"], **{c: v for c, v in row.items() if c not in DURATION_COLUMNS}} for row in rows
    ]
    artifact = create_table_artifact(
        key=duration_key(pipeline),
        table=redact_data(first),  # no credentials in the database (issue 20)
        description=redact(
            f"Estimated vs actual step durations of pipeline '{pipeline}' (LM: {lm_name}). estimate: "
            "'seed' is the registry catalogue's static value, used until enough runs were observed "
            "(often far off); 'learned' comes from earlier runs; 'reused' means every row was reused "
            f"from an earlier run. Batches, tokens and cost: artifact '{details_key(pipeline)}'."
        ),
    )
    create_table_artifact(
        key=details_key(pipeline),
        table=redact_data(details),
        description=redact(f"Per-step details of pipeline '{pipeline}': batches, failures, tokens, cost."),
    )
    return artifact


def write_summary_artifact(summary: Any, records: list[Any], lm: dict[str, Any], output_uri: str) -> Any:
    """Create the markdown summary artifact (totals, failures, routing reasons)."""
    estimated = sum(r.estimated_ms or 0 for r in records if r.estimate_source != "none")
    actual = sum(r.actual_ms for r in records if r.estimate_source != "none")
    lines = [
        f"# Pipeline `{summary.pipeline}`",
        "",
        f"- LM: `{lm.get('model')}`" + (" (offline, extractive, deterministic)" if lm.get("offline") else ""),
        f"- rows in: **{summary.rows_in}**, completed: **{summary.rows_out}**, failed: **{summary.failed}**",
        f"- routed steps: estimated **{estimated:.0f} ms**, actual **{actual:.0f} ms**",
        f"- wall time: **{summary.wall_ms:.0f} ms**",
        *_usage_lines(summary),
        f"- output payload: `{output_uri}`",
        "",
        "| step | pool | why |",
        "|---|---|---|",
        *[f"| {r.step} | {pool_label(r)} | {r.reason} |" for r in records],
        *metrics_markdown(getattr(summary, "metrics", None)),
    ]
    if summary.failures:
        lines += ["", "## Failed rows (first 20)", "", "| row | step | error |", "|---|---|---|"]
        lines += [
            f"| {f.row} | {f.step} | {f.type}: {f.message[:120].replace('|', '/')} |"
            for f in summary.failures[:20]
        ]
    return create_markdown_artifact(
        key=summary_key(summary.pipeline),
        markdown=redact("\n".join(lines)),  # credentials in URLs or error text never reach the database
        description="Pipeline run summary",
    )


def progress_reporter(pipeline: str) -> Callable[[float], None]:
    """Create a progress artifact and return a callback that updates it (0.0 to 1.0)."""
    artifact_id = create_progress_artifact(
        progress=0.0, key=f"progress-{summary_key(pipeline)[17:]}", description="Batches done"
    )
    last = [0.0]

    def report(fraction: float) -> None:
        percent = round(fraction * 100, 1)
        if (artifact_id is not None and percent - last[0] >= 5) or percent >= 100:
            last[0] = percent
            update_progress_artifact(artifact_id=artifact_id, progress=percent)  # type: ignore[arg-type]

    return report


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) from free text."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]
