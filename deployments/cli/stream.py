"""``dspex run --stream``: output rows to stdout as JSONL the moment they complete.

Stdout carries only the rows (one JSON object per line, flushed per chunk, each with ``_row``, its
input position), so ``dspex run --stream spec.yaml data.jsonl | jq`` works; the summary, errors and
the interruption notice go to stderr. Ctrl+C stops the run: the rows already written stay written,
and the stream's spool file (named on stderr) holds the same rows.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console

__all__ = ["stream_rows"]

_stderr = Console(stderr=True)


def stream_rows(
    spec: Any, data: str, *, mode: str, continue_on_error: bool | None, lm_batch: bool | None = None
) -> None:
    """Run ``spec`` over ``data`` pipelined, writing each output row to stdout as it completes.

    Raises:
        typer.Exit: 2 for bad input (the message on stderr), 1 when rows failed under fail-fast,
            130 after Ctrl+C.
    """
    from dspex.exceptions import DSPexError, StepExecutionError
    from flows import stream_pipeline

    stream = stream_pipeline(spec, data, mode=mode, continue_on_error=continue_on_error, lm_batch=lm_batch)  # type: ignore[arg-type]  # the flow validates mode
    written = 0
    out = sys.stdout
    try:
        for row in stream:
            out.write(json.dumps(row, default=str) + "\n")
            written += 1
            out.flush()
    except KeyboardInterrupt:
        _stderr.print(f"interrupted: {written} rows written; the same rows are in {stream.partial_path}")
        raise typer.Exit(130) from None
    except StepExecutionError as exc:
        _stderr.print(f"[red]error[/red] ({type(exc).__name__}): {exc}")
        raise typer.Exit(1) from None
    except DSPexError as exc:
        _stderr.print(f"[red]error[/red] ({type(exc).__name__}): {exc}")
        raise typer.Exit(2) from None
    summary = stream.result.summary
    _stderr.print(
        f"{summary.rows_in} rows in, {summary.rows_out} completed, {summary.failed} failed; "
        f"output: {stream.result.output.uri}"
    )
