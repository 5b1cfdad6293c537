"""What ``dspex run`` prints and how it exits when a run stops early (a signal or its cost budget)."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console

from dspex.exceptions import RunInterruptedError, RunStoppedError

__all__ = ["EXIT_BUDGET", "EXIT_INTERRUPTED", "report_stopped", "usage_line"]

#: Exit status after SIGINT/SIGTERM (the shell's convention for SIGINT: 128 + 2).
EXIT_INTERRUPTED = 130
#: Exit status after the cost budget stopped the run.
EXIT_BUDGET = 3


def usage_line(usage: Any, reused_rows: int = 0) -> str:
    """One line: tokens, requests, cost (or why it is unknown) and reused rows."""
    if usage.cost_usd is None:
        cost = "cost unknown" if usage.requests else "cost $0"
    else:
        cost = f"cost ${usage.cost_usd:.6f}"
    if usage.unpriced_models:
        cost += f" (no price for {', '.join(usage.unpriced_models)})"
    line = (
        f"LM usage: {usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens, "
        f"{usage.requests} requests, {cost}"
    )
    return line + (f"; {reused_rows} row(s) reused from earlier runs" if reused_rows else "")


def report_stopped(error: RunStoppedError, console: Console) -> None:
    """Print why the run stopped, where the partial output is, and exit.

    An interrupted run exits with `EXIT_INTERRUPTED` without waiting for LM calls still running
    (its state and output are already persisted; the embedded server is stopped first); a budget
    stop exits with `EXIT_BUDGET`.
    """
    kind = "interrupted" if isinstance(error, RunInterruptedError) else "stopped"
    console.print(f"[yellow]{kind}[/yellow]: {error}")
    summary = error.summary or {}
    usage = summary.get("usage")
    if usage:
        from tasks.usage import Usage

        console.print(usage_line(Usage.model_validate(usage), int(summary.get("reused_rows") or 0)))
    if error.partial_ref:
        console.print(f"partial output: {error.partial_ref.get('uri')}")
    console.print("run the same command again to resume: completed rows are reused, not paid again")
    if isinstance(error, RunInterruptedError):
        from deployments.local.warm_runner import announce_exit
        from flows.guards.interrupts import exit_now

        announce_exit(EXIT_INTERRUPTED)  # served by the warm runner: its client hears the status first
        exit_now(EXIT_INTERRUPTED)
    raise typer.Exit(EXIT_BUDGET)
