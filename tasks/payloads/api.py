"""Write and read payloads: `write_payload`, `read_payload`, `read_rows`, `payload_exists`.

The public entries, on top of the payload modules, each of which imports only those below it:
`tasks.payloads.encoded` turns objects into checksummed bytes, inline or stored, and back (the
format choice, inlining and safety rules are in its docstring); `tasks.payloads.dataset` builds
`Dataset` on it; `tasks.payloads.files` reads the files a user has in hand (stored payload files,
JSONL/CSV/Parquet) with both. Here a `Dataset` is written and read back as itself, and `read_rows`
takes a ref or a path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tasks.payloads import encoded
from tasks.payloads.dataset import Dataset
from tasks.payloads.encoded import (
    EXTENSIONS,
    EncodedPayload,
    payload_exists,
    payload_uri,
    rows_of_decoded,
)
from tasks.payloads.files import rows_at
from tasks.payloads.ref import PayloadFormat, PayloadRef

__all__ = [
    "EXTENSIONS",
    "EncodedPayload",
    "choose_format",
    "decode_payload",
    "encode_payload",
    "kind_of",
    "payload_exists",
    "payload_uri",
    "read_payload",
    "read_rows",
    "rows_of_decoded",
    "write_payload",
]


def kind_of(obj: Any) -> str:
    """The `PayloadKind` of ``obj``.

    Raises:
        PayloadFormatError: A type payloads do not hold (lists what they do hold).
    """
    return "dataset" if isinstance(obj, Dataset) else encoded.kind_of(obj)


def choose_format(obj: Any) -> PayloadFormat:
    """The format `write_payload` picks for ``obj`` when none is given (see `tasks.payloads.encoded`)."""
    return encoded.choose_format(*_unwrapped(obj))


def _unwrapped(obj: Any) -> tuple[Any, str | None]:
    # What the codec level writes for obj, and the kind it records (None: its own choice).
    return (obj.table, "dataset") if isinstance(obj, Dataset) else (obj, None)


def encode_payload(
    obj: Any, format: PayloadFormat | None = None, compression: str | None = None
) -> EncodedPayload:
    """Encode ``obj`` without storing it (the bytes-level half of `write_payload`).

    Args:
        obj: Any supported object (see `write_payload`).
        format: ``"arrow"`` or ``"msgpack"``; None chooses automatically (`choose_format`).
        compression: ``"none"``, ``"zstd"`` or ``"lz4"``; None uses ``settings.payload_compression``.

    Raises:
        PayloadFormatError: An unsupported object or value, or a format that cannot hold it.
    """
    obj, kind = _unwrapped(obj)
    return encoded.encode_payload(obj, format, compression, kind=kind)


def write_payload(
    obj: Any,
    base_url: str | None = None,
    format: PayloadFormat | None = None,
    *,
    name: str | None = None,
    compression: str | None = None,
    inline_max_bytes: int | None = None,
) -> PayloadRef:
    """Encode ``obj`` and store it (or inline it) and return its `PayloadRef`.

    Args:
        obj: A list of dicts, dict, list, ``pandas.DataFrame``, ``pa.Table``, ``pa.RecordBatch``, numpy
            array, `Dataset`, or a list of ``dspy.Example`` / ``dspy.Prediction``.
        base_url: Local folder or fsspec URL; default ``settings.resolved_payload_url``.
        format: ``"arrow"`` / ``"msgpack"``; None chooses automatically.
        name: A deterministic file name (see `payload_uri`); default: the content checksum.
        compression: ``"none"``, ``"zstd"``, ``"lz4"``; default ``settings.payload_compression``.
        inline_max_bytes: Inline payloads up to this size; default ``settings.payload_inline_max_bytes``.

    Raises:
        PayloadFormatError: ``obj`` (or a value in it) cannot be stored.
        PayloadError: The storage cannot be written (names the uri).
    """
    obj, kind = _unwrapped(obj)
    return encoded.write_payload(
        obj,
        base_url,
        format,
        name=name,
        compression=compression,
        inline_max_bytes=inline_max_bytes,
        kind=kind,
    )


def decode_payload(
    data: Any, format: PayloadFormat, compression: str = "none", *, uri: str = "<bytes>"
) -> Any:
    """Decode encoded bytes back into the Python object that was written (no checksum check).

    Raises:
        PayloadCorruptError: Bytes that are not a valid payload of ``format``.
    """
    kind, raw, meta = encoded.decode_raw(data, format, compression, uri)
    return _materialize(kind, raw, meta, uri)


def read_payload(ref: PayloadRef | Mapping[str, Any] | str) -> Any:
    """Read a payload back as the type that was written.

    Args:
        ref: A `PayloadRef`, its ``model_dump(mode="json")`` dict, or its JSON text.

    Returns:
        The object: numpy arrays from Arrow are zero-copy, read-only views of the stored bytes.

    Raises:
        PayloadNotFoundError: Nothing at the ref's uri.
        PayloadCorruptError: Truncated, checksum mismatch, or undecodable bytes.
        PayloadFormatError: Not a payload reference.
    """
    return _materialize(*encoded.read_raw(ref))


def _materialize(kind: str, raw: Any, meta: dict[str, Any], uri: str) -> Any:
    if kind == "dataset":
        return Dataset(encoded.materialize(kind, raw, meta, uri))
    return encoded.materialize(kind, raw, meta, uri)


def read_rows(ref: PayloadRef | Mapping[str, Any] | str) -> list[dict[str, Any]]:
    """Read any payload as a list of plain row dicts, whatever type was written.

    Tables, DataFrames, batches and Datasets give one dict per row; examples and predictions their
    fields; a dict of equal-length lists one dict per position, any other dict itself as one row;
    arrays and lists of non-dicts ``{"value": item}`` per item (array rows as lists).

    Args:
        ref: A `PayloadRef`, its dict or JSON, or a path: a stored payload file (``.msgpack``,
            ``.arrow``) or a JSONL/CSV/Parquet file, such as the output path ``dspex run`` prints.

    Raises:
        The same errors as `read_payload`.
    """
    if isinstance(ref, str) and not ref.lstrip().startswith("{"):
        return rows_at(ref)
    return encoded.read_ref_rows(ref)
