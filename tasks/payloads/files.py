"""Payloads and row files by *path*: what a user has in hand after a run.

A run's output is a stored payload (``.../payloads/xxh3_128-<hex>.msgpack``) and, from ``dspex run``,
a JSONL/Parquet/CSV file. `rows_at` reads any of them, or a `PayloadRef`'s JSON, as row dicts, so the
path a command prints is always something `tasks.payloads.read_rows` and ``dspex show`` accept.
`export_rows` writes rows to a file whose extension says the format.

Reads pass the same fence as every other read (`tasks.payloads.confine`); a content-addressed payload
file is checked against the checksum in its name.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from dspex.exceptions import PayloadCorruptError, PayloadError, PayloadFormatError
from tasks.payloads import confine, integrity, storage
from tasks.payloads.dataset import Dataset
from tasks.payloads.encoded import read_ref_rows, rows_of_decoded

__all__ = ["EXPORT_FORMATS", "export_rows", "read_payload_file", "rows_at"]

#: File extensions `export_rows` writes.
EXPORT_FORMATS = (".jsonl", ".parquet", ".csv")

_CONTENT_NAME = re.compile(r"^(xxh3_128|sha256)-([0-9a-f]+)\.(msgpack|arrow)$")


def _extension(path: str) -> str:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""


def read_payload_file(path: str) -> list[dict[str, Any]]:
    """The rows of a stored payload file (``.msgpack`` or ``.arrow``), given only its path.

    Raises:
        PayloadAccessError: Outside the payload root and data roots.
        PayloadNotFoundError: No such file.
        PayloadCorruptError: Not a payload, or its bytes do not match the checksum in its name.
    """
    confine.check_payload_read(path)
    data = storage.read_bytes(path)
    name = path.rstrip("/").rsplit("/", 1)[-1]
    named = _CONTENT_NAME.match(name)
    if named:
        integrity.verify(data, f"{named[1]}:{named[2]}", uri=path)
    format_ = "arrow" if name.endswith(".arrow") else "msgpack"
    last: PayloadError | None = None
    # Arrow IPC says its own compression; a MessagePack body's is in the ref, so try each.
    for compression in ("none",) if format_ == "arrow" else ("none", "zstd", "lz4"):
        try:
            return rows_of_decoded(data, format_, compression, path)
        except PayloadCorruptError as exc:
            last = exc
    assert last is not None
    raise last


def rows_at(location: str) -> list[dict[str, Any]]:
    """Rows from a `PayloadRef`'s JSON, a stored payload file, or a JSONL/CSV/Parquet file.

    Args:
        location: What a command printed: a ref's JSON, or a path/URL.

    Raises:
        PayloadFormatError: A file type that holds no rows.
        PayloadError: As the reader for that kind raises (not found, corrupt, outside the roots).
    """
    text = location.strip()
    if text.startswith("{"):
        return read_ref_rows(text)
    if _extension(text) in (".msgpack", ".arrow"):
        return read_payload_file(text)
    if _extension(text) == ".json":
        confine.check_data_read(text, "file")
        raw = bytes(memoryview(storage.read_bytes(text)))
        try:
            return read_ref_rows(raw.decode("utf-8"))
        except (UnicodeDecodeError, PayloadFormatError) as exc:
            raise PayloadFormatError(
                "a .json file must hold a payload reference; rows go in .jsonl, .csv or .parquet",
                uri=text,
            ) from exc
    return Dataset.from_path(text).to_rows()


def export_rows(rows: list[dict[str, Any]], path: str) -> str:
    """Write ``rows`` to ``path`` in the format its extension names (atomically, owner-only).

    Args:
        rows: Row dicts (nested values are fine in JSONL and Parquet).
        path: ``.jsonl``, ``.parquet`` or ``.csv``; local or fsspec URL.

    Returns:
        The path written, absolute when local.

    Raises:
        PayloadFormatError: An unknown extension, or rows the format cannot hold (nested values in
            CSV, a column whose values change type in Parquet); the message says which to use.
        PayloadError: The file cannot be written.
    """
    extension = _extension(path)
    if extension not in EXPORT_FORMATS:
        raise PayloadFormatError(
            f"unknown output file type {extension or '(none)'!r}; use {', '.join(EXPORT_FORMATS)}", uri=path
        )
    target = path if "://" in path else os.path.abspath(path)
    if extension == ".jsonl":
        text = "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)
        storage.write_atomic(target, text.encode("utf-8"))
        return target
    try:
        dataset = Dataset.from_rows(rows)
    except PayloadFormatError as exc:
        raise PayloadFormatError(f"{exc}; write .jsonl instead, which holds any rows", uri=path) from exc
    if extension == ".csv":
        dataset.to_csv(target)
    else:
        dataset.to_parquet(target)
    return target
