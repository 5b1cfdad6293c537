"""``dspex automations create``: the example automations on DSPex events, idempotently."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["automations_app", "create", "register"]

automations_app = typer.Typer(
    help="Prefect automations on DSPex events (breaker opened, estimate drift, health failed).",
    no_args_is_help=True,
)


@automations_app.command("create")
def create(
    notify_block: str | None = typer.Option(
        None,
        "--notify-block",
        help="Notification block '<block-type-slug>/<name>' (e.g. slack-webhook/ops); without it only "
        "the breaker automation (pause the deployment) is created.",
    ),
) -> None:
    """Create the automations, or update those that exist (matched by name)."""
    from deployments.automations import ensure_automations
    from dspex.exceptions import ConfigurationError

    try:
        results = ensure_automations(notify_block)
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    table = Table(title="DSPex automations")
    table.add_column("automation", no_wrap=True)
    table.add_column("action", no_wrap=True)
    table.add_column("id / why", overflow="fold")
    for result in results:
        table.add_row(result.name, result.action, str(result.id) if result.id else result.detail)
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add ``dspex automations`` to the CLI."""
    app.add_typer(automations_app, name="automations")
