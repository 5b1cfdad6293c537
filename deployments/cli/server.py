"""``dspex server status|stop``, and the shared local server's hooks for ``dspex run``/``demo``/``ui``.

See `deployments.local.server`: CLI commands that run flows use one local Prefect server, started on first
use and stopped when idle, instead of starting Prefect's embedded server in every process.
"""

from __future__ import annotations

import json
import time

import typer
from rich.console import Console

from deployments.local.server import (
    auth_file,
    authenticate_for_shared_server,
    server_status,
    stop_shared_server,
    use_shared_server,
)

__all__ = ["FLOW_COMMANDS", "app", "hold_ui", "prepare", "register"]

#: Commands that run flows, and so use the shared server (the others never start it).
FLOW_COMMANDS = frozenset({"run", "demo"})

app = typer.Typer(
    help="The shared local Prefect server that CLI runs and `dspex ui` use.", no_args_is_help=True
)
_stderr = Console(stderr=True)


def prepare(argv: list[str]) -> None:
    """Before a flow-running command: point Prefect at the shared local server (start it if needed).

    Args:
        argv: The command line after the program name.
    """
    from dspex.exceptions import ConfigurationError

    # Any command pointed at the shared server by hand (`dspex worker`, `pools create`, `deploy`)
    # sends its auth string, read from the owner-only file (issue 20).
    authenticate_for_shared_server()
    if not argv or argv[0] not in FLOW_COMMANDS or "--help" in argv:
        return
    try:
        use_shared_server()
    except ConfigurationError as exc:  # the run still works on Prefect's own embedded server
        _stderr.print(f"[yellow]warning[/yellow]: {exc}; using a server for this process only")


def hold_ui(console: Console) -> bool:
    """``dspex ui`` on the shared server: start or reuse it, print the URL, hold it until Ctrl+C.

    Returns:
        False when the shared server is not in use here (a user's PREFECT_API_URL, or it is off).
    """
    import sys

    url = use_shared_server()
    if url is None:
        return False
    console.print(
        f"Prefect UI: {url.removesuffix('/api')} (the shared local server; CLI runs show up here live). "
        "Ctrl+C leaves it running until it is idle; `dspex server stop` stops it."
    )
    # The UI asks for the server's auth string. It is shown only on the owner's own terminal, never
    # into a pipe or a log file; otherwise the file (readable by its owner only) is named.
    where = auth_file()
    if sys.stdout.isatty():
        console.print(f"Log in with: {where.read_text(encoding='utf-8').strip()}", highlight=False)
    else:
        console.print(f"Log in with the auth string in {where} (readable by you only)", soft_wrap=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return True


@app.command("status")
def status_command() -> None:
    """Print the shared server's URL and process (JSON), or that none is running."""
    state = server_status()
    typer.echo(json.dumps(state) if state else "no shared server running")


@app.command("stop")
def stop_command() -> None:
    """Stop the shared server now."""
    typer.echo("stopped" if stop_shared_server() else "no shared server running")


def register(parent: typer.Typer) -> None:
    """Add ``dspex server ...`` to the CLI."""
    parent.add_typer(app, name="server")
