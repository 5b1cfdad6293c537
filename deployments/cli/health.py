"""``dspex health``: is everything up? A table (or ``--json``), exit status 1 on any failed check."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from tasks.health import check_health

__all__ = ["health", "register"]

_STYLE = {"ok": "green", "fail": "bold red", "skip": "yellow"}


def health(
    no_lm: bool = typer.Option(False, "--no-lm", help="Skip the LM call (no tokens spent)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON (for machines)."),
) -> None:
    """Check the Prefect API, the three pools, their live workers and run-step deployments, payload
    storage, the registry file and the LM; exit 1 if any check fails."""
    report = check_health(no_lm=no_lm)
    if as_json:
        typer.echo(json.dumps(report.model_dump(mode="json"), indent=2))
    else:
        table = Table(title="DSPex health")
        table.add_column("check", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("ms", justify="right", no_wrap=True)
        table.add_column("detail", overflow="fold")
        for check in report.checks:
            table.add_row(
                check.name, f"[{_STYLE[check.status]}]{check.status}[/]", f"{check.ms:.0f}", check.detail
            )
        console = Console()
        console.print(table)
        failed = len(report.failed)
        console.print(f"{'healthy' if report.ok else f'UNHEALTHY: {failed} check(s) failed'}")
    if not report.ok:
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    """Add ``dspex health`` to the CLI."""
    app.command("health")(health)
