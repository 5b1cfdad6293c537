"""``dspex session open|turn|show|close``: stateful DSPy sessions from the terminal.

A session lives in the session store (SQLite under ``DSPEX_HOME``, or ``DSPEX_SESSION_URL``), so
each command is its own process and any later one continues it:

    dspex session open --signature "question, context -> answer" --ttl 3600     # prints the id
    dspex session turn <id> question="Who wrote Hamlet?" context=@notes.txt       # prints outputs
    dspex session show <id>                                                        # the history
    dspex session close <id>

Turns take the fast path (no flow run); the ``session-turn`` deployment is the UI's way in.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["app", "register"]

app = typer.Typer(
    help="Stateful DSPy sessions: history kept across calls and processes.", no_args_is_help=True
)
console = Console()
_stderr = Console(stderr=True)


def _fail(error: BaseException) -> typer.Exit:
    _stderr.print(f"[red]error[/red] ({type(error).__name__}): {escape(str(error))}")
    return typer.Exit(2)


def _parse_inputs(pairs: list[str], as_json: str | None) -> dict[str, Any]:
    """``key=value`` pairs (``key=@file`` reads a file) and/or a JSON object.

    An ``@file`` is read by the same rules as a dataset (`tasks.payloads.confine`): this command is a
    local caller, so the file is read with the rights of the person who typed it, and under
    ``DSPEX_READ_FENCE=all`` only inside ``DSPEX_DATA_ROOTS``.
    """
    from dspex.documents import load_document
    from dspex.exceptions import InputValidationError
    from tasks.payloads.confine import check_data_read

    inputs: dict[str, Any] = {}
    if as_json:
        try:  # bounded like every user document (issue 20): a SpecLimitError names the limit
            loaded = load_document(as_json, source="--json", fmt="json")
        except json.JSONDecodeError as exc:
            raise InputValidationError(f"--json is not valid JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise InputValidationError("--json must be a JSON object of input fields")
        inputs.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise InputValidationError(f"inputs are key=value pairs with an identifier key, got {pair!r}")
        if value.startswith("@"):
            check_data_read(value[1:], "input file")
            try:
                inputs[key] = Path(value[1:]).read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise InputValidationError(f"{key}=@{value[1:]}: not UTF-8 text (byte {exc.start})") from exc
        else:
            inputs[key] = value
    return inputs


@app.command("open")
def open_command(
    signature: str = typer.Option("question -> answer", help="The program's DSPy signature."),
    module: str = typer.Option(
        "dspy.Predict", help="The registry module (dspy.Predict, dspy.ChainOfThought, ...)."
    ),
    step_json: str | None = typer.Option(
        None, "--step", help="A full module step as JSON (wins over the two above)."
    ),
    ttl: float | None = typer.Option(None, "--ttl", help="Seconds the session lives after its last turn."),
) -> None:
    """Open a session; prints its id."""
    from dspex.documents import load_document
    from dspex.exceptions import DSPexError
    from flows.sessions.session import open_session

    try:  # --step is bounded like every user document (issue 20)
        plain = {"module": module, "signature": signature}
        step = load_document(step_json, source="--step", fmt="json") if step_json else plain
        session = open_session(step, ttl_seconds=ttl)
    except (DSPexError, json.JSONDecodeError) as exc:
        raise _fail(exc) from None
    typer.echo(session.id)


@app.command("turn")
def turn_command(
    session_id: str = typer.Argument(..., help="The session id."),
    inputs: list[str] = typer.Argument(None, help="Input fields as key=value (key=@file reads a file)."),
    as_json: str | None = typer.Option(None, "--json", help="Input fields as a JSON object."),
    stream: bool = typer.Option(False, "--stream", help="Print the output tokens as they arrive."),
) -> None:
    """Run one turn; prints the outputs as JSON."""
    import dspy

    from dspex.exceptions import DSPexError
    from flows.sessions.session import get_session

    try:
        values = _parse_inputs(inputs or [], as_json)
        session = get_session(session_id)
        if not stream:
            typer.echo(json.dumps(session.turn(**values), ensure_ascii=False))
            return
        prediction = None
        for item in session.stream_turn(**values):
            if isinstance(item, dspy.Prediction):
                prediction = item
            else:
                _stderr.print(escape(item.chunk), end="")
        _stderr.print()
    except (DSPexError, OSError) as exc:
        raise _fail(exc) from None
    if prediction is not None:
        typer.echo(json.dumps({k: prediction.get(k) for k in prediction}, ensure_ascii=False, default=str))


@app.command("show")
def show_command(
    session_id: str = typer.Argument(..., help="The session id."),
    as_json: bool = typer.Option(False, "--json", help="Print the stored session as JSON."),
) -> None:
    """Show a session: its program, expiry and history."""
    from dspex.exceptions import DSPexError
    from flows.sessions.store import get_store

    try:
        record = get_store().load(session_id)
    except DSPexError as exc:
        raise _fail(exc) from None
    expires = datetime.fromtimestamp(record.expires_at, tz=UTC).isoformat(timespec="seconds")
    status = "closed" if record.closed else ("live" if record.live else "expired")
    if as_json:
        payload = {
            "id": record.id,
            "status": status,
            "expires_at": expires,
            "program": record.step,
            "version": record.version,
            "history": record.history,
        }
        typer.echo(json.dumps(payload, ensure_ascii=False, default=str))
        return
    console.print(
        f"session [bold]{escape(record.id)}[/bold]: {status}, {len(record.history)} turn(s), "
        f"expires {expires}, program {escape(json.dumps(record.step))}"
    )
    if record.history:
        table = Table(title="history")
        columns = list(dict.fromkeys(k for entry in record.history for k in entry))
        table.add_column("turn", justify="right")
        for column in columns:
            table.add_column(column)
        for n, entry in enumerate(record.history, 1):
            table.add_row(str(n), *(escape(str(entry.get(c, ""))) for c in columns))
        console.print(table)


@app.command("close")
def close_command(session_id: str = typer.Argument(..., help="The session id.")) -> None:
    """Close a session: no more turns; cleanup removes it."""
    from dspex.exceptions import DSPexError
    from flows.sessions.store import get_store

    try:
        get_store().close(session_id)
    except DSPexError as exc:
        raise _fail(exc) from None
    typer.echo(f"closed {session_id}")


def register(parent: typer.Typer) -> None:
    """Add ``dspex session ...`` to the CLI."""
    parent.add_typer(app, name="session")
