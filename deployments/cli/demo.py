"""``dspex demo``, ``dspex run`` and ``dspex ui``: run pipelines from the terminal, then look at them."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from deployments.local.server import server_status

__all__ = ["demo", "register", "run", "ui"]

console = Console(width=None if sys.stdout.isatty() else 120)


def _duration_table(records: list[Any], pipeline: str) -> Table:
    from flows.telemetry.artifacts import duration_key, duration_rows

    rows = duration_rows(records)
    table = Table(title=f"Estimated vs actual durations (artifact '{duration_key(pipeline)}')")
    for column in ("step", "pool", "rows", "batches", "estimated ms", "actual ms", "error %", "estimate"):
        table.add_column(column, justify="right" if column not in ("step", "pool", "estimate") else "left")
    for row in rows:
        table.add_row(
            *(
                str(row[c])
                for c in (
                    "step",
                    "pool",
                    "rows",
                    "batches",
                    "estimated ms",
                    "actual ms",
                    "error %",
                    "estimate",
                )
            )
        )
    return table


def _run_artifact_keys(pipeline: str) -> list[str]:
    """The keys of the artifacts a `run_pipeline` run of ``pipeline`` writes (what the closing lines name)."""
    from flows.telemetry.artifacts import details_key, duration_key, summary_key

    return [duration_key(pipeline), details_key(pipeline), summary_key(pipeline)]


def _where_to_look(keys: list[str]) -> None:
    from dspex.bootstrap import embedded

    named = ", ".join(f"'{key}'" for key in keys)
    if embedded():
        console.print(
            "Artifacts and runs are stored in the project's Prefect database "
            f"([bold]{os.environ.get('PREFECT_HOME')}[/bold]).\n"
            "See them in the Prefect UI: [bold]dspex ui[/bold], then open "
            f"http://127.0.0.1:4200/artifacts (keys {named})."
        )
    elif (ui_url := _shared_ui_url()) is not None:
        # The shared server stops when idle and may not be on its usual port: name the command that
        # opens it and the URL `dspex ui` serves, not this moment's port (issue 26.5).
        console.print(
            f"See runs and artifacts in the Prefect UI: [bold]dspex ui[/bold], then {ui_url}/artifacts (keys {named})."
        )
    else:
        from dspex.redact import redact_url

        url = redact_url(os.environ.get("PREFECT_API_URL", "").removesuffix("/api"))
        console.print(f"Artifacts: {url}/artifacts (keys {named}).")


def _shared_ui_url() -> str | None:
    """The UI URL `dspex ui` serves when this process runs on the shared local server, else None:
    the configured port (DSPEX_SHARED_SERVER_PORT, 4200), or the one it took when that was busy."""
    from dspex.settings import get_settings

    state = server_status()
    api = os.environ.get("PREFECT_API_URL", "").rstrip("/")
    if state is None or str(state.get("url", "")).rstrip("/") != api:
        return None
    port = get_settings().shared_server_port
    return f"http://127.0.0.1:{port}" if int(state.get("port", port)) == port else api.removesuffix("/api")


def _say_home() -> None:
    """Say which DSPex home a run uses when it is not in this folder (found up the tree: issue 25)."""
    from dspex.project import home_note
    from dspex.settings import get_settings

    settings = get_settings()
    note = None if "home" in settings.model_fields_set else home_note(settings.home)
    if note:  # on stderr: `dspex run --stream` writes rows to stdout
        Console(stderr=True).print(escape(note), soft_wrap=True)


def demo(
    limit: int | None = typer.Option(None, help="Only the first N questions."),
    k: int = typer.Option(3, help="Passages retrieved per question."),
) -> None:
    """Run the demo: retrieval-augmented QA over the bundled corpus, scored, on the embedded Prefect."""
    from flows.rag import rag_qa

    _say_home()
    console.print(
        "[bold]DSPex demo[/bold]: retrieve (gpu pool) -> ChainOfThought (general pool) -> EM/F1 (native)"
    )
    result = rag_qa(limit=limit, k=k)
    lm = result.lm
    console.print(_duration_table(result.pipeline.summary.steps, result.pipeline.summary.pipeline))
    label = (
        " (offline, extractive, deterministic; set DSPEX_LM_MODEL for a real model)"
        if lm.get("offline")
        else ""
    )
    console.print(f"LM: [bold]{lm.get('model')}[/bold]{label}")
    console.print(
        f"Scores over {result.questions} questions: exact match [bold]{result.exact_match:.3f}[/bold], "
        f"F1 [bold]{result.f1:.3f}[/bold], failed {result.failed}"
    )
    console.print(f"Output rows: {result.pipeline.output.uri}")
    _where_to_look([*_run_artifact_keys(result.pipeline.summary.pipeline), "rag-qa-scores"])


def run(
    spec_file: Path = typer.Argument(..., exists=True, dir_okay=False, help="Pipeline spec (JSON or YAML)."),
    data: str = typer.Argument(..., help="Dataset path or URL (JSONL, CSV, Parquet)."),
    output: str | None = typer.Option(
        None,
        "--output",
        "-o",
        help="Write the output rows here: .jsonl, .parquet or .csv (default: <DSPEX_HOME>/outputs/<pipeline>-<time>.jsonl).",
    ),
    mode: str = typer.Option(
        "auto", help="auto (pools with live workers, else here; DSPEX_MODE wins), local or distributed."
    ),
    continue_on_error: bool | None = typer.Option(None, "--continue-on-error/--fail-fast"),
    resume: bool | None = typer.Option(
        None, "--resume/--no-resume", help="Reuse rows earlier runs completed (default: DSPEX_RESUME, on)."
    ),
    max_cost_usd: float | None = typer.Option(
        None, "--max-cost-usd", min=0.0, help="Stop dispatching before the LM cost would pass this (USD)."
    ),
    stream: bool = typer.Option(
        False, "--stream", help="Write output rows to stdout as JSONL as they complete (summary on stderr)."
    ),
    batch_api: bool = typer.Option(
        False,
        "--batch-api",
        help="Send the module steps' LM calls through the provider's batch API (about half the price; "
        "answered within its completion window, polled here). Default: the spec's lm_batch, else "
        "DSPEX_LM_BATCH_API.",
    ),
) -> None:
    """Run a pipeline spec file over a dataset."""
    import yaml
    from pydantic import ValidationError

    from deployments.cli.output import load_spec_file, partial_ref_of, print_error, write_run_output
    from deployments.cli.stopped import report_stopped, usage_line
    from dspex.exceptions import DSPexError, RunStoppedError
    from dspex.redact import redact
    from flows import run_pipeline
    from flows.guards.resume import reuse_note

    _say_home()
    try:
        spec = load_spec_file(spec_file)  # errors name the file (issue 13)
        if stream:  # pipelined, rows to stdout as they complete (issue 15)
            from deployments.cli.stream import stream_rows

            # With --batch-api, a batch step is a barrier: its rows come out once the provider answered.
            lm_batch = True if batch_api else None
            stream_rows(spec, data, mode=mode, continue_on_error=continue_on_error, lm_batch=lm_batch)
            return
        result = run_pipeline(  # type: ignore[call-overload]  # the Flow validates mode
            spec,
            data=data,
            mode=mode,
            continue_on_error=continue_on_error,
            resume=resume,
            max_cost_usd=max_cost_usd or None,
            lm_batch=True if batch_api else None,
        )
    except RunStoppedError as exc:  # a signal or the budget: partial output kept (issue 12)
        stopped_partial = partial_ref_of(exc)
        if stopped_partial is not None:
            with contextlib.suppress(DSPexError):
                kept = write_run_output(stopped_partial, output, spec.name)
                console.print(f"completed rows written to {escape(kept)}")
        report_stopped(exc, console)
    except (ValidationError, DSPexError, yaml.YAMLError, json.JSONDecodeError) as exc:
        # A typo or a bad file is the user's to fix: say what and where, without a traceback.
        print_error(console, exc)  # user strings escaped: '[x]' or 'list[int' print as written
        partial = partial_ref_of(exc)
        if partial is not None:  # a run that failed midway: what it completed is in a file too
            with contextlib.suppress(DSPexError):
                kept = write_run_output(partial, output, spec.name)
                console.print(f"completed rows written to {escape(kept)}")
        raise typer.Exit(2) from None
    console.print(_duration_table(result.summary.steps, spec.name))
    try:
        written = write_run_output(result.output, output, spec.name)
    except DSPexError as exc:  # e.g. --output x.csv with nested rows: the payload is still stored
        print_error(console, exc)
        console.print(
            f"the output is stored in {escape(redact(result.output.uri))} (dspex show can export it)"
        )
        raise typer.Exit(2) from None
    console.print(  # reused rows are said so, with how to re-run them (issue 26.2)
        f"{result.summary.rows_in} rows in, {result.summary.rows_out} completed, {result.summary.failed} failed"
        + escape(reuse_note(result.summary.reused_rows))
    )
    # soft_wrap: the path stays on one line, so it can be copied (and parsed) as printed
    console.print(
        f"output: [bold]{escape(written)}[/bold] (payload {escape(redact(result.output.uri))})",
        soft_wrap=True,
    )
    console.print(usage_line(result.summary.usage, result.summary.reused_rows))
    _where_to_look(_run_artifact_keys(spec.name))  # this pipeline's keys, not the demo's (issue 25)


def ui(
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(4200, help="Port."),
) -> None:
    """Start the Prefect UI and API on this project's Prefect database (Ctrl+C stops it)."""
    from deployments.cli.server import hold_ui

    if hold_ui(console):  # the shared local server that CLI runs use (issue 15)
        return
    env = dict(os.environ)
    # The UI calls the API at PREFECT_UI_API_URL, which defaults to port 4200 whatever --port says:
    # off 4200 it would call someone else's server, or none (issue 26.4).
    reachable = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104 (compared, not bound)
    env["PREFECT_UI_API_URL"] = f"http://{reachable}:{port}/api"
    console.print(f"Prefect UI: http://{reachable}:{port} (database under {env.get('PREFECT_HOME')})")
    prefect = Path(sys.executable).with_name("prefect")
    command = [str(prefect), "server", "start", "--host", host, "--port", str(port)]
    raise SystemExit(subprocess.call(command, env=env))  # noqa: S603 (our own venv's prefect)


def register(app: typer.Typer) -> None:
    """Add these commands to the CLI."""
    app.command("demo")(demo)
    app.command("run")(run)
    app.command("ui")(ui)
