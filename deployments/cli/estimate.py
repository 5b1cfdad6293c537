"""``dspex estimate``: expected duration, tokens and cost of a run, per step, before running it."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["estimate", "register"]

console = Console()


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "unknown"
    return f"{value:,.{digits}f}"


def estimate(
    spec_file: Path = typer.Argument(..., exists=True, dir_okay=False, help="Pipeline spec (JSON or YAML)."),
    data: str = typer.Argument(..., help="Dataset path or URL (JSONL, CSV, Parquet)."),
    sample_rows: int = typer.Option(
        5,
        "--sample-rows",
        min=0,
        help="When a step has no learned tokens/cost yet, run this many rows for real to learn them "
        "(0: never run anything; such steps then say 'unknown').",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Print the expected duration, tokens and cost of each step, from the registry's learned figures."""
    import yaml
    from pydantic import ValidationError

    from dspex.documents import load_document
    from dspex.exceptions import DSPexError
    from dspex.settings import get_settings
    from flows import PipelineSpec
    from flows.estimate import estimate_pipeline
    from flows.pipeline import load_rows

    try:
        text = spec_file.read_text(encoding="utf-8")
        yaml_name = spec_file.suffix.lower() in {".yaml", ".yml"}
        raw = load_document(  # bounded (issue 20)
            text, source=f"spec file {str(spec_file)!r}", fmt="yaml" if yaml_name else "json"
        )
        spec = PipelineSpec.model_validate(raw)
        rows = load_rows(data)
        result = estimate_pipeline(spec, rows, settings=get_settings(), sample_rows=sample_rows)
    except (ValidationError, DSPexError, yaml.YAMLError, json.JSONDecodeError) as exc:
        console.print(f"[red]error[/red] ({type(exc).__name__}): {exc}")
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
        return
    table = Table(title=f"Estimate: pipeline '{result.pipeline}', {result.rows} rows, LM {result.model}")
    for column in ("step", "module", "pool", "batches", "duration ms", "prompt tokens", "completion tokens"):
        table.add_column(column, justify="left" if column in ("step", "module", "pool") else "right")
    table.add_column("cost USD", justify="right")
    table.add_column("batch cost USD", justify="right")
    table.add_column("batch wait", justify="right")
    table.add_column("source (duration / usage)")
    for s in result.steps:
        table.add_row(
            s.step,
            s.module,
            s.pool,
            str(s.batches),
            _num(s.duration_ms),
            _num(s.prompt_tokens),
            _num(s.completion_tokens),
            _num(s.cost_usd, 6),
            _num(s.batch_cost_usd, 6),
            f"~{_num(s.batch_wait_s)} s/round" if s.batch_wait_s is not None else f"<= {result.batch_window}",
            f"{s.duration_source} / {s.usage_source}",
        )
    console.print(table)
    console.print(
        f"total: ~{_num(result.duration_ms)} ms of step time, {_num(result.prompt_tokens)} prompt + "
        f"{_num(result.completion_tokens)} completion tokens, cost {_num(result.cost_usd, 6)} USD"
        + (f" (learned from a sample run of {result.sampled_rows} rows)" if result.sampled_rows else "")
    )
    console.print(  # issue 21: what the provider's batch API would cost, and how long it may take
        f"batch API (lm_batch / --batch-api): cost {_num(result.batch_cost_usd, 6)} USD, answered within "
        f"the {result.batch_window} completion window per round (learned waits per step above)"
    )


def register(app: typer.Typer) -> None:
    """Add ``estimate`` to the CLI."""
    app.command("estimate")(estimate)
