"""The ``dspex`` command line: ``dspex --help`` lists the commands."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import dspex.bootstrap  # noqa: F401  (defaults the Prefect environment before Prefect loads)
from deployments.cli.registry import app as registry_app
from dspex.redact import redact_exception
from dspex.settings import get_settings

__all__ = ["app", "main"]

app = typer.Typer(
    name="dspex",
    help="DSPex on Prefect: run DSPy pipelines as Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
app.add_typer(registry_app, name="registry")


@app.command("settings")
def settings_command(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Print the effective DSPEX_* settings, secrets masked."""
    values = get_settings().masked()
    if as_json:
        typer.echo(json.dumps(values, indent=2, sort_keys=True))
        return
    table = Table(title="DSPex settings (DSPEX_* environment, .env)")
    table.add_column("setting")
    table.add_column("value")
    for key in sorted(values):
        table.add_row(key, "" if values[key] is None else escape(str(values[key])))
    console.print(table)


def _register_commands() -> None:
    from deployments.cli import (
        automations,
        demo,
        distributed,
        estimate,
        health,
        registry_stats,
        server,
        session,
        show,
    )

    demo.register(app)
    distributed.register(app)
    show.register(app)
    health.register(app)
    automations.register(app)
    registry_stats.register(registry_app)
    estimate.register(app)
    session.register(app)
    server.register(app)


_register_commands()


def main() -> None:
    """Entry point of the ``dspex`` console script."""
    import sys

    from deployments.cli.server import prepare

    prepare(sys.argv[1:])  # flow-running commands use the shared local server (issue 15)
    try:
        app()
    except Exception as exc:  # an unexpected error's traceback is printed as is: mask it (issue 20)
        redact_exception(exc)
        raise
