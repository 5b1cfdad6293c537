"""What ``dspex run`` does with its spec file, its output and its errors.

- `load_spec_file`: a spec file that is unreadable, not JSON/YAML, or not a valid spec is a
  `PipelineSpecError` naming the file (``dspex run /etc/passwd data.jsonl`` used to print a bare JSON
  error).
- `write_run_output`: the output rows always land in a file the user can open: ``--output PATH``
  (JSONL, Parquet or CSV by extension) or ``<DSPEX_HOME>/outputs/<pipeline>-<UTC time>.jsonl``; a run
  that fails midway writes what it completed there too.
- `print_error`: every user-supplied string goes through rich's markup escaping, so a path like
  ``data/[x]/nope.jsonl`` or a signature like ``list[int`` is printed as written.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from dspex.exceptions import PipelineSpecError
from dspex.redact import redact
from dspex.settings import get_settings

__all__ = ["default_output_path", "load_spec_file", "partial_ref_of", "print_error", "write_run_output"]


def load_spec_file(path: Path) -> Any:
    """The `PipelineSpec` in a JSON or YAML file.

    Raises:
        PipelineSpecError: The file cannot be read, does not parse, or is not a valid spec; the
            message starts with the file's name.
    """
    import yaml
    from pydantic import ValidationError

    from dspex.documents import load_document
    from flows import PipelineSpec

    where = f"spec file {str(path)!r}"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PipelineSpecError(f"{where} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise PipelineSpecError(f"{where} cannot be read: {exc.strerror or exc}") from None
    try:  # bounded: a size, depth or alias-bomb limit is a SpecLimitError naming it (issue 20)
        yaml_name = path.suffix.lower() in {".yaml", ".yml"}
        raw = load_document(text, source=where, fmt="yaml" if yaml_name else "json")
    except json.JSONDecodeError as exc:
        raise PipelineSpecError(
            f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} "
            "(YAML specs need a .yaml or .yml name)"
        ) from None
    except yaml.YAMLError as exc:
        raise PipelineSpecError(f"{where} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise PipelineSpecError(
            f"{where} must hold a mapping with 'name' and 'steps', not {type(raw).__name__}"
        )
    try:
        return PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        raise PipelineSpecError(f"{where} is not a valid pipeline spec: {exc}") from None


def default_output_path(pipeline: str) -> Path:
    """``<DSPEX_HOME>/outputs/<pipeline>-<UTC time>.jsonl``, a new file per run."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return get_settings().home.resolve() / "outputs" / f"{pipeline}-{stamp}.jsonl"


def write_run_output(ref: Any, output: str | None, pipeline: str) -> str:
    """Export a run's output payload to ``output`` (or the default path); returns the file written.

    Args:
        ref: The run's output `PayloadRef` (or its JSON-able dict).
        output: ``--output``: a ``.jsonl``, ``.parquet`` or ``.csv`` path; None: the default.
        pipeline: The pipeline's name, for the default file name.

    Raises:
        PayloadError: The rows cannot be read back or written (the message names the file).
    """
    from tasks.payloads import export_rows, read_rows

    target = output or str(default_output_path(pipeline))
    return export_rows(read_rows(ref), target)


def partial_ref_of(error: BaseException) -> Any:
    """The partial output a failed run kept, if the error carries one."""
    found = getattr(error, "partial_output", None)
    if found is not None:
        return found
    return getattr(error, "partial_ref", None)


def print_error(console: Console, error: BaseException) -> None:
    """Print ``error`` as the CLI reports a user's mistake: its type and its message, escaped."""
    # A pydantic or YAML error quotes the values it was given, which may be credentials (issue 20).
    console.print(f"[red]error[/red] ({type(error).__name__}): {escape(redact(str(error)))}")
    for note in getattr(error, "__notes__", ()):
        console.print(escape(redact(str(note))))
