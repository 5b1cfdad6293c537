"""The codec level of payloads: an object becomes checksummed bytes, inline or stored, and back.

This module sits below `Dataset` (`tasks.payloads.dataset` builds on it, so it does not know the
class): a Dataset is written as its Arrow table with ``kind="dataset"``, and a ``"dataset"`` payload
reads back here as that table. The public entries, which take and give Datasets and read row files
by path, are `tasks.payloads.api`'s.

**Automatic format choice** (measured in ``benchmarks/payloads.py``): columnar or numeric objects
(``pa.Table``, ``pa.RecordBatch``, ``pandas.DataFrame``, numpy arrays, `Dataset`) go to Arrow IPC,
where reads are zero-copy (100k x 384 float32 to a local folder and back: ~76 ms, 58x faster than
Prefect's pickle serializer and 1.2x the time of two plain memory copies, on 2 busy cores);
row dicts, dicts, other lists and DSPy examples go to MessagePack: for 100k QA rows, building Arrow
columns from row dicts and back (``from_pylist`` + ``to_pylist``, ~0.43 s) costs more than packing and
unpacking MessagePack (~0.17 s), and nested, irregular rows have no fixed schema anyway. A caller may
force ``format="arrow"`` for regular rows (to hand them to Arrow tools) or ``format="msgpack"``.

**By reference, inline when small**: a payload whose encoded size is at most
``settings.payload_inline_max_bytes`` travels base64 inside its ref (no I/O to read it); larger ones
are stored under ``base_url`` (default ``settings.resolved_payload_url``) and the ref points to them.
File names are the content checksum (so equal content is stored once, and rewriting it is a no-op) or
the caller's ``name`` (deterministic, for idempotent batch results: same name and content, same uri;
a named payload is always stored, even when it is also inlined, so it can be found by name later).

**Safety**: no pickle; every read checks the size and checksum before decoding; truncated, corrupt or
foreign bytes raise `PayloadCorruptError`, a missing file `PayloadNotFoundError`, an unsupported
object `PayloadFormatError`, all naming the uri. Writes are atomic (see `tasks.payloads.storage`).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import ValidationError

from dspex.exceptions import PayloadCorruptError, PayloadError, PayloadFormatError, PayloadNotFoundError
from dspex.settings import get_settings
from tasks.payloads import confine, convert, integrity, storage
from tasks.payloads.codecs.arrow import ArrowEncoder, decode_arrow
from tasks.payloads.codecs.msgpack import decode_msgpack, encode_msgpack
from tasks.payloads.ref import INLINE_SCHEME, PayloadFormat, PayloadRef

__all__ = [
    "EXTENSIONS",
    "EncodedPayload",
    "as_ref",
    "choose_format",
    "decode_raw",
    "encode_payload",
    "kind_of",
    "materialize",
    "payload_exists",
    "payload_uri",
    "read_raw",
    "read_ref_rows",
    "rows_of_decoded",
    "rows_of_raw",
    "write_payload",
]

#: File extension of each format.
EXTENSIONS: dict[str, str] = {"arrow": ".arrow", "msgpack": ".msgpack"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=/-]{0,199}$")
_ARROW_KINDS = frozenset({"table", "record_batch", "dataframe", "ndarray", "dataset"})


@dataclass
class EncodedPayload:
    """An encoded payload and the facts a `PayloadRef` records about it.

    MessagePack payloads are encoded at once (``body``); Arrow payloads keep their `ArrowEncoder`, so
    a large one can be streamed straight into a local file instead of through a buffer.
    """

    format: PayloadFormat
    kind: str
    compression: str
    rows: int
    schema_summary: dict[str, str] = field(default_factory=dict)
    body: Any = None  # bytes or pa.Buffer, once encoded
    encoder: ArrowEncoder | None = None

    @property
    def data(self) -> Any:
        """The encoded bytes (an Arrow payload is encoded into a buffer on first use)."""
        if self.body is None and self.encoder is not None:
            self.body = self.encoder.to_buffer()
        return self.body


def kind_of(obj: Any) -> str:
    """The `PayloadKind` of ``obj``, a Dataset's aside (`tasks.payloads.api.kind_of` adds it).

    Raises:
        PayloadFormatError: A type payloads do not hold (lists what they do hold).
    """
    if isinstance(obj, pa.Table):
        return "table"
    if isinstance(obj, pa.RecordBatch):
        return "record_batch"
    if isinstance(obj, pd.DataFrame):
        return "dataframe"
    if isinstance(obj, np.ndarray):
        return "ndarray"
    if isinstance(obj, dict):
        return "dict"
    if isinstance(obj, list | tuple):
        dspy_kind = convert.dspy_list_kind(obj)
        if dspy_kind is not None:
            return dspy_kind
        if obj and all(isinstance(item, dict) for item in obj):
            return "rows"
        return "list"
    raise PayloadFormatError(
        f"cannot store a {type(obj).__module__}.{type(obj).__qualname__}; payloads hold lists of dicts, "
        "dicts, lists, pandas DataFrames, pyarrow Tables or RecordBatches, numpy arrays, Datasets, "
        "and lists of dspy.Example or dspy.Prediction"
    )


def choose_format(obj: Any, kind: str | None = None) -> PayloadFormat:
    """The format `write_payload` picks for ``obj`` when none is given (see the module docstring).

    Args:
        obj: The object.
        kind: Its kind when the caller knows it (``"dataset"`` for a Dataset's table); None:
            `kind_of`.
    """
    kind = kind or kind_of(obj)
    if kind == "ndarray" and obj.dtype.kind not in convert.ARROW_NDARRAY_KINDS:
        return "msgpack"  # complex and datetime arrays: raw buffers in a MessagePack ext
    return "arrow" if kind in _ARROW_KINDS else "msgpack"


def _schema_of_table(table: pa.Table) -> dict[str, str]:
    return {name: str(type_) for name, type_ in zip(table.schema.names, table.schema.types, strict=True)}


def _schema_of_rows(rows: list[Any]) -> dict[str, str]:
    # A summary for people, from the first row only: rows may be irregular, and scanning 100k is waste.
    first = rows[0] if rows and isinstance(rows[0], dict) else {}
    return {str(key): type(value).__name__ for key, value in first.items()}


def _to_table(obj: Any, kind: str) -> tuple[pa.Table, dict[str, Any]]:
    try:
        if kind == "table":
            return obj, {}
        if kind == "record_batch":
            return pa.Table.from_batches([obj]), {}
        if kind == "dataframe":
            return pa.Table.from_pandas(obj), {}
        if kind == "ndarray":
            return convert.ndarray_to_table(obj)
        if kind == "dataset":
            return obj, {}  # a Dataset's table (see the module docstring)
        if kind == "rows":
            return pa.Table.from_pylist(list(obj)), {}
        if kind == "examples":
            rows, meta = convert.examples_to_rows(obj)
            return pa.Table.from_pylist(rows), meta
        if kind == "predictions":
            return pa.Table.from_pylist(convert.predictions_to_rows(obj)), {}
    except (pa.ArrowException, ValueError, TypeError) as exc:
        if isinstance(exc, PayloadError):
            raise
        raise PayloadFormatError(f"cannot convert a {kind} payload to Arrow: {exc}") from exc
    raise PayloadFormatError(f"a {kind} payload cannot be stored as Arrow; use format='msgpack'")


def encode_payload(
    obj: Any,
    format: PayloadFormat | None = None,
    compression: str | None = None,
    *,
    kind: str | None = None,
) -> EncodedPayload:
    """Encode ``obj`` without storing it (the bytes-level half of `write_payload`).

    Args:
        obj: Any supported object (see `write_payload`).
        format: ``"arrow"`` or ``"msgpack"``; None chooses automatically (`choose_format`).
        compression: ``"none"``, ``"zstd"`` or ``"lz4"``; None uses ``settings.payload_compression``.
        kind: The kind to record when the caller knows it: ``"dataset"`` with a Dataset's table;
            None: `kind_of`.

    Raises:
        PayloadFormatError: An unsupported object or value, or a format that cannot hold it.
    """
    kind = kind or kind_of(obj)
    chosen: PayloadFormat = format or choose_format(obj, kind)
    if chosen not in EXTENSIONS:
        raise PayloadFormatError(f"unknown payload format {chosen!r}; use 'arrow' or 'msgpack'")
    codec = compression or get_settings().payload_compression
    if codec not in ("none", "zstd", "lz4"):
        raise PayloadFormatError(f"unknown compression {codec!r}; use 'none', 'zstd' or 'lz4'")
    if chosen == "arrow":
        table, meta = _to_table(obj, kind)
        encoder = ArrowEncoder(table, kind=kind, meta=meta, compression=codec)
        rows = int(obj.shape[0]) if kind == "ndarray" and obj.ndim else table.num_rows
        if kind == "ndarray":
            summary = {"values": f"{obj.dtype}{list(obj.shape)}"}
        else:
            summary = _schema_of_table(table)
        return EncodedPayload("arrow", kind, codec, rows, summary, encoder=encoder)
    value, meta, rows, summary = _msgpack_body(obj, kind)
    data = encode_msgpack(value, kind=kind, meta=meta, compression=codec)
    return EncodedPayload("msgpack", kind, codec, rows, summary, body=data)


def _msgpack_body(obj: Any, kind: str) -> tuple[Any, dict[str, Any], int, dict[str, str]]:
    if kind in ("table", "record_batch", "dataframe", "dataset"):
        raise PayloadFormatError(f"a {kind} payload is columnar; store it with format='arrow'")
    if kind == "examples":
        rows, meta = convert.examples_to_rows(obj)
        return rows, meta, len(rows), _schema_of_rows(rows)
    if kind == "predictions":
        rows = convert.predictions_to_rows(obj)
        return rows, {}, len(rows), _schema_of_rows(rows)
    if kind == "ndarray":
        rows_count = int(obj.shape[0]) if obj.ndim else 1
        return obj, {}, rows_count, {"values": f"{obj.dtype}{list(obj.shape)}"}
    if kind == "dict":
        return obj, {}, len(_dict_rows(obj)), {str(k): type(v).__name__ for k, v in obj.items()}
    return obj, {}, len(obj), _schema_of_rows(obj)


def payload_uri(name: str, format: PayloadFormat, base_url: str | None = None) -> str:
    """The uri a payload written with ``name`` and ``format`` gets (to look it up before writing).

    Args:
        name: A file name or relative path: letters, digits and ``._=/-``, starting with a letter or
            digit (no ``..``); the format's extension is appended unless already there.
        format: ``"arrow"`` or ``"msgpack"``.
        base_url: The storage URL; default ``settings.resolved_payload_url``.

    Raises:
        PayloadError: A name that is not a safe relative file name.
    """
    if not _NAME.match(name) or ".." in name.split("/"):
        raise PayloadError(f"payload name {name!r} is not a safe relative file name (letters, digits, ._=/-)")
    extension = EXTENSIONS[format]
    filename = name if name.endswith(extension) else f"{name}{extension}"
    return storage.join(base_url or get_settings().resolved_payload_url, filename)


def write_payload(
    obj: Any,
    base_url: str | None = None,
    format: PayloadFormat | None = None,
    *,
    name: str | None = None,
    compression: str | None = None,
    inline_max_bytes: int | None = None,
    kind: str | None = None,
) -> PayloadRef:
    """Encode ``obj`` and store it (or inline it) and return its `PayloadRef`.

    Args:
        obj: A list of dicts, dict, list, ``pandas.DataFrame``, ``pa.Table``, ``pa.RecordBatch``, numpy
            array, a Dataset's table (with ``kind="dataset"``), or a list of ``dspy.Example`` /
            ``dspy.Prediction``.
        base_url: Local folder or fsspec URL; default ``settings.resolved_payload_url``.
        format: ``"arrow"`` / ``"msgpack"``; None chooses automatically.
        name: A deterministic file name (see `payload_uri`); default: the content checksum.
        compression: ``"none"``, ``"zstd"``, ``"lz4"``; default ``settings.payload_compression``.
        inline_max_bytes: Inline payloads up to this size; default ``settings.payload_inline_max_bytes``.
        kind: As for `encode_payload`.

    Raises:
        PayloadFormatError: ``obj`` (or a value in it) cannot be stored.
        PayloadError: The storage cannot be written (names the uri).
    """
    settings = get_settings()
    encoded = encode_payload(obj, format, compression, kind=kind)
    base = base_url or settings.resolved_payload_url
    limit = settings.payload_inline_max_bytes if inline_max_bytes is None else inline_max_bytes
    encoder = encoded.encoder
    inline: str | None = None
    if (
        encoder is not None
        and encoder.compression == "none"
        and encoder.table.nbytes > limit
        and storage.is_local(base)
    ):
        # Large Arrow payload to a local folder: stream it into the file (no copy in memory).
        streamed = storage.stream_to_local(base, encoder.write_to)
        digest, nbytes = streamed.checksum, streamed.nbytes
        uri = payload_uri(name or digest.replace(":", "-"), "arrow", base)
        if name is None and storage.exists(uri):  # content-addressed: the same bytes are already there
            storage.discard(streamed)
        else:
            storage.commit(streamed, uri)
    else:
        data = encoded.data
        digest = integrity.checksum(data)
        nbytes = len(memoryview(data))
        if nbytes <= limit:
            inline = base64.b64encode(memoryview(data)).decode("ascii")
        if name is not None:
            uri = payload_uri(name, encoded.format, base)
            storage.write_atomic(uri, data)
        elif inline is not None:
            uri = f"{INLINE_SCHEME}{digest}"
        else:
            uri = payload_uri(digest.replace(":", "-"), encoded.format, base)
            if not storage.exists(uri):  # content-addressed: the same bytes are already there
                storage.write_atomic(uri, data)
    if inline is None or name is not None:
        # A ref this call hands out reads back, even in a fenced run (bytes already there included).
        confine.remember_written(uri)
    return PayloadRef(
        uri=uri,
        format=encoded.format,
        kind=encoded.kind,  # type: ignore[arg-type]
        compression=encoded.compression,  # type: ignore[arg-type]
        rows=encoded.rows,
        nbytes=nbytes,
        schema_summary=encoded.schema_summary,
        checksum=digest,
        inline=inline,
    )


def as_ref(ref: PayloadRef | Mapping[str, Any] | str) -> PayloadRef:
    """``ref`` as a `PayloadRef`: one as is, its dict or its JSON text validated.

    Raises:
        PayloadFormatError: Not a payload reference.
    """
    if isinstance(ref, PayloadRef):
        return ref
    try:
        if isinstance(ref, str):
            return PayloadRef.model_validate_json(ref)
        return PayloadRef.model_validate(ref)
    except ValidationError as exc:
        raise PayloadFormatError(f"not a payload reference: {exc}") from exc


def load_bytes(ref: PayloadRef) -> Any:
    """The verified bytes of ``ref``: inline, or read from its uri through the read fence.

    Raises:
        PayloadNotFoundError: Nothing at the ref's uri, or an inline-only ref without its bytes.
        PayloadCorruptError: Truncated, longer than recorded, or a checksum mismatch.
    """
    if ref.inline is not None:
        try:
            data: Any = base64.b64decode(ref.inline, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise PayloadCorruptError(f"inline payload is not valid base64: {exc}", uri=ref.uri) from exc
    else:
        if not ref.is_stored:
            raise PayloadNotFoundError("an inline-only ref that has lost its inline bytes", uri=ref.uri)
        confine.check_payload_read(ref.uri)  # before any lookup: no existence/size/hash oracle
        data = storage.read_bytes(ref.uri)
    size = len(memoryview(data))
    if size != ref.nbytes:
        state = "truncated" if size < ref.nbytes else "longer than recorded"
        raise PayloadCorruptError(f"payload {state}: {size} bytes, the ref says {ref.nbytes}", uri=ref.uri)
    integrity.verify(data, ref.checksum, uri=ref.uri)
    return data


def decode_raw(data: Any, format: str, compression: str, uri: str) -> tuple[str, Any, dict[str, Any]]:
    """The kind, raw value (an Arrow table or the MessagePack value) and meta of payload bytes.

    Raises:
        PayloadCorruptError: Bytes that are not a valid payload of ``format``.
        PayloadFormatError: An unknown format.
    """
    if format == "arrow":
        table, kind, meta = decode_arrow(data, uri=uri)
        if kind not in _ARROW_KINDS | {"rows", "examples", "predictions"}:
            raise PayloadCorruptError(f"unknown payload kind {kind!r} in an Arrow payload", uri=uri)
        return kind, table, meta
    if format == "msgpack":
        value, kind, meta = decode_msgpack(data, uri=uri, compression=compression)
        expected = {"rows": list, "list": list, "examples": list, "predictions": list, "dict": dict}
        if kind == "ndarray":
            if not isinstance(value, np.ndarray):
                raise PayloadCorruptError("an ndarray payload that holds no array", uri=uri)
        elif kind not in expected or not isinstance(value, expected[kind]):
            raise PayloadCorruptError(
                f"payload kind {kind!r} does not match its {type(value).__name__} data", uri=uri
            )
        return kind, value, meta
    raise PayloadFormatError(f"unknown payload format {format!r}", uri=uri)


def materialize(kind: str, raw: Any, meta: dict[str, Any], uri: str) -> Any:
    """The object `decode_raw`'s parts stand for; a ``"dataset"`` payload gives its table.

    Raises:
        PayloadCorruptError: Parts that do not make the kind they say.
    """
    if isinstance(raw, pa.Table):
        if kind == "table":
            return raw
        if kind == "record_batch":
            return _one_batch(raw)
        if kind == "dataframe":
            return raw.to_pandas()
        if kind == "ndarray":
            return convert.ndarray_from_table(raw, meta, uri=uri)
        if kind == "dataset":
            return raw  # the Dataset's table: `tasks.payloads.api` wraps it
        raw = raw.to_pylist()
    if kind == "examples":
        return convert.rows_to_examples(raw, meta, uri=uri)
    if kind == "predictions":
        return convert.rows_to_predictions(raw, uri=uri)
    return raw


def _one_batch(table: pa.Table) -> pa.RecordBatch:
    batches = table.combine_chunks().to_batches()
    if batches:
        return batches[0]
    arrays = [pa.array([], type=type_) for type_ in table.schema.types]
    return pa.RecordBatch.from_arrays(arrays, schema=table.schema)


def read_raw(ref: PayloadRef | Mapping[str, Any] | str) -> tuple[str, Any, dict[str, Any], str]:
    """Load and decode a payload: its kind, raw value and meta (see `decode_raw`), and its uri.

    Args:
        ref: A `PayloadRef`, its ``model_dump(mode="json")`` dict, or its JSON text.

    Raises:
        PayloadNotFoundError: Nothing at the ref's uri.
        PayloadCorruptError: Truncated, checksum mismatch, or undecodable bytes.
        PayloadFormatError: Not a payload reference.
    """
    payload_ref = as_ref(ref)
    data = load_bytes(payload_ref)
    kind, raw, meta = decode_raw(data, payload_ref.format, payload_ref.compression, payload_ref.uri)
    return kind, raw, meta, payload_ref.uri


def _dict_rows(value: dict[str, Any]) -> list[dict[str, Any]]:
    # A dict of equal-length lists is columnar: one row per position. Any other dict is one row.
    columns = list(value.values())
    if columns and all(isinstance(c, list) for c in columns) and len({len(c) for c in columns}) == 1:
        keys = list(value.keys())
        return [dict(zip(keys, cells, strict=True)) for cells in zip(*columns, strict=True)]
    return [value]


def read_ref_rows(ref: PayloadRef | Mapping[str, Any] | str) -> list[dict[str, Any]]:
    """The rows of the payload a ref points to (a ref only; `tasks.payloads.read_rows` takes paths
    too). What rows a payload gives is `rows_of_raw`'s.

    Args:
        ref: A `PayloadRef`, its dict or its JSON text.

    Raises:
        The same errors as `read_raw`.
    """
    return rows_of_raw(*read_raw(ref))


def rows_of_decoded(data: Any, format: str, compression: str, uri: str) -> list[dict[str, Any]]:
    """The rows of verified payload bytes (see `rows_of_raw`).

    Raises:
        PayloadCorruptError: Bytes that are not a valid payload of ``format``.
    """
    return rows_of_raw(*decode_raw(data, format, compression, uri), uri)


def rows_of_raw(kind: str, raw: Any, meta: dict[str, Any], uri: str) -> list[dict[str, Any]]:
    """A decoded payload as plain row dicts, whatever type was written.

    Tables, DataFrames, batches and Datasets give one dict per row; examples and predictions their
    fields; a dict of equal-length lists one dict per position, any other dict itself as one row;
    arrays and lists of non-dicts ``{"value": item}`` per item (array rows as lists).

    Raises:
        PayloadCorruptError: An array payload whose parts do not make one.
    """
    if kind == "ndarray":
        array = convert.ndarray_from_table(raw, meta, uri=uri) if isinstance(raw, pa.Table) else raw
        return [{"value": item} for item in np.atleast_1d(array).tolist()]
    if isinstance(raw, pa.Table):
        return raw.to_pylist()
    if kind == "dict":
        return _dict_rows(raw)
    if kind == "list":
        return [item if isinstance(item, dict) else {"value": item} for item in raw]
    return list(raw)


def payload_exists(ref: PayloadRef | Mapping[str, Any] | str) -> bool:
    """Whether a payload can be read: inline bytes are present, or a file is stored at its uri.

    Args:
        ref: A `PayloadRef` (or its dict), or a plain uri string (e.g. from `payload_uri`).
    """
    if isinstance(ref, str) and not ref.lstrip().startswith("{"):
        confine.check_payload_read(ref)
        return storage.exists(ref)
    payload_ref = as_ref(ref)
    if payload_ref.inline is not None:
        return True
    if payload_ref.is_stored:
        confine.check_payload_read(payload_ref.uri)
    return payload_ref.is_stored and storage.exists(payload_ref.uri)
