"""``dspex show REF_OR_PATH``: print or export any payload or row file.

It accepts whatever a run hands a user: the output path ``dspex run`` prints (JSONL/CSV/Parquet), a
stored payload file (``.msgpack``/``.arrow``), a `PayloadRef`'s JSON, or a ``.json`` file holding one.
Rows print as a table (or JSONL with ``--jsonl``); ``--output PATH`` exports them by extension.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dspex.exceptions import DSPexError

__all__ = ["register", "show"]

_CELL_CHARS = 80


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= _CELL_CHARS else text[: _CELL_CHARS - 1] + "…"


def show(
    location: str = typer.Argument(
        ..., help="A payload ref (JSON), a payload file, or a JSONL/CSV/Parquet file."
    ),
    output: str | None = typer.Option(
        None, "--output", "-o", help="Export the rows to this file: .jsonl, .parquet or .csv."
    ),
    limit: int = typer.Option(20, "--limit", "-n", min=0, help="Rows to print (0: all)."),
    jsonl: bool = typer.Option(False, "--jsonl", help="Print the rows as JSON Lines instead of a table."),
) -> None:
    """Print (or export) the rows of a payload or a row file."""
    from deployments.cli.output import print_error
    from tasks.payloads import export_rows, read_rows

    console = Console(width=None if sys.stdout.isatty() else 160)
    try:
        rows = read_rows(location)
        if output:
            written = export_rows(rows, output)
            console.print(f"{len(rows)} rows written to [bold]{escape(written)}[/bold]")
            return
    except DSPexError as exc:
        print_error(console, exc)
        raise typer.Exit(2) from None
    shown = rows if limit == 0 else rows[:limit]
    if jsonl:
        for row in shown:
            typer.echo(json.dumps(row, ensure_ascii=False, default=str))
        return
    columns = list(dict.fromkeys(key for row in shown for key in row))
    table = Table(title=escape(f"{location if len(location) < 100 else 'payload'}: {len(rows)} rows"))
    for column in columns:
        table.add_column(escape(column), overflow="fold")
    for row in shown:
        table.add_row(*(escape(_cell(row[c])) if c in row else "" for c in columns))
    console.print(table)
    if len(shown) < len(rows):
        console.print(f"... {len(rows) - len(shown)} more rows (--limit 0 prints all, --output exports)")


def register(app: typer.Typer) -> None:
    """Add ``show`` to the CLI."""
    app.command("show")(show)
