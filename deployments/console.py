"""Which process runs a ``dspex`` command: the warm runner, or this one?

`main` is the ``dspex`` console script. A command the warm runner takes
(`deployments.local.warm_runner.try_warm_run`) runs there, in a process that has already imported
Prefect and DSPy; any other runs here, through the CLI (`deployments.cli.main`). So this module
imports only what the hand-over needs, and the CLI when it is this process's turn.

``python -m deployments.console IDLE_SECONDS`` is the warm runner's own process, which the shared
local server starts (`deployments.local.server.RUNNER_MODULE`): it hands
`deployments.local.warm_runner.serve` the CLI to serve, so the runner never imports the CLI itself.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from deployments.local.warm_runner import serve, try_warm_run

__all__ = ["cli_entry", "main"]


def cli_entry() -> Callable[[], None]:
    """Import the CLI and return its entry, `deployments.cli.main`."""
    # Lazy for start-up time: the CLI (Typer, Rich, every command module, Prefect's defaults) is
    # what a command handed to the warm runner never loads in the process the user started.
    from deployments.cli import main as cli_main

    return cli_main


def main() -> None:
    """Entry point of the ``dspex`` console script: the warm runner when it can take the command,
    else the CLI in this process."""
    code = try_warm_run(sys.argv[1:])
    if code is not None:
        raise SystemExit(code)
    cli_entry()()


if __name__ == "__main__":
    raise SystemExit(serve(float(sys.argv[1]), load_entry=cli_entry))
