"""MessagePack codec: small, irregular or nested payloads (row dicts, dicts, DSPy examples).

**Library: ormsgpack** (Rust), chosen over msgpack-python by measurement (``benchmarks/payloads.py``
prints both): on 100k QA rows (2 cores) ormsgpack packs in ~36 ms against ~74 ms, and unpacks about as
fast (~115-140 ms each once the garbage collector is paused); both give byte-identical output, both
reject over-deep nesting and over-long lengths with an error instead of crashing. msgpack-python
stays usable as a reader of these files (standard MessagePack, standard ext types).

The file is one MessagePack map ``{"dspex": 1, "kind": ..., "meta": {...}, "data": ...}``. Values
beyond JSON's are kept with ext types, never pickle: numpy arrays (ext 1: dtype, shape, raw bytes),
``datetime`` (ext 2) and ``date`` (ext 3) as ISO text. Tuples come back as lists; numpy scalars as
Python numbers; pydantic models and nested DSPy examples as dicts. Anything else is a
`PayloadFormatError`. Compressed bodies (zstd or lz4, through pyarrow's codecs) are prefixed with
their 8-byte little-endian uncompressed size.

Decoding pauses the cyclic garbage collector: building 100k dicts otherwise triggers repeated full
collections that made unpacking 3x slower (0.42 s against 0.12 s). The objects it builds hold no
reference cycles, so pausing it loses nothing.
"""

from __future__ import annotations

import datetime as dt
import gc
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import ormsgpack
import pyarrow as pa

from dspex.exceptions import PayloadCorruptError, PayloadFormatError
from tasks.payloads.convert import MSGPACK_NDARRAY_KINDS

__all__ = ["ENVELOPE_VERSION", "decode_msgpack", "encode_msgpack", "gc_paused"]

ENVELOPE_VERSION = 1
_EXT_NDARRAY = 1
_EXT_DATETIME = 2
_EXT_DATE = 3
_PACK_OPTIONS = ormsgpack.OPT_PASSTHROUGH_DATETIME
_SIZE_PREFIX = struct.Struct("<Q")
# A declared uncompressed size beyond this many times the compressed size is refused before allocating,
# so a forged header cannot make us allocate gigabytes.
_MAX_EXPANSION = 4096
_MIN_EXPANSION_BYTES = 64 * 1024 * 1024

_gc_lock = threading.Lock()
_gc_depth = 0
_gc_was_enabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the block; safe to nest and to use from many threads."""
    global _gc_depth, _gc_was_enabled
    with _gc_lock:
        if _gc_depth == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_depth += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_depth -= 1
            if _gc_depth == 0 and _gc_was_enabled:
                gc.enable()


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in MSGPACK_NDARRAY_KINDS:
            raise TypeError(f"numpy arrays of dtype {obj.dtype} are not supported")
        array = np.ascontiguousarray(obj)
        inner = ormsgpack.packb([array.dtype.str, list(array.shape), array.tobytes()])
        return ormsgpack.Ext(_EXT_NDARRAY, inner)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dt.datetime):
        return ormsgpack.Ext(_EXT_DATETIME, obj.isoformat().encode())
    if isinstance(obj, dt.date):
        return ormsgpack.Ext(_EXT_DATE, obj.isoformat().encode())
    if hasattr(obj, "toDict"):  # a nested dspy.Example / Prediction
        return obj.toDict()
    if hasattr(obj, "model_dump"):  # a pydantic model
        return obj.model_dump(mode="python")
    raise TypeError(f"cannot store a {type(obj).__module__}.{type(obj).__qualname__} (no pickle by design)")


def _ext_hook(tag: int, data: bytes) -> Any:
    if tag == _EXT_NDARRAY:
        dtype_str, shape, raw = ormsgpack.unpackb(data)
        dtype = np.dtype(dtype_str)
        if dtype.kind not in MSGPACK_NDARRAY_KINDS or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise ValueError(f"bad ndarray ext: dtype {dtype_str!r}, shape {shape!r}")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count * dtype.itemsize != len(raw):
            raise ValueError(
                f"ndarray ext holds {len(raw)} bytes, {shape} x {dtype} needs {count * dtype.itemsize}"
            )
        # frombuffer gives a read-only view of immutable bytes; copy so the caller gets a normal array.
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape).copy()
    if tag == _EXT_DATETIME:
        return dt.datetime.fromisoformat(data.decode())
    if tag == _EXT_DATE:
        return dt.date.fromisoformat(data.decode())
    raise ValueError(f"unknown MessagePack ext type {tag}")


def encode_msgpack(data: Any, *, kind: str, meta: dict[str, Any], compression: str = "none") -> bytes:
    """Encode ``data`` in the MessagePack envelope.

    Args:
        data: JSON-like data (str-keyed dicts, lists, scalars, bytes) plus the extras listed above.
        kind: The Python type to give back on read.
        meta: JSON-able extra facts (input keys of examples).
        compression: ``"none"``, ``"zstd"`` or ``"lz4"``.

    Raises:
        PayloadFormatError: A value that has no MessagePack form here (names its type).
    """
    envelope = {"dspex": ENVELOPE_VERSION, "kind": kind, "meta": meta, "data": data}
    try:
        body = ormsgpack.packb(envelope, default=_default, option=_PACK_OPTIONS)
    except (TypeError, ValueError, ormsgpack.MsgpackEncodeError) as exc:
        raise PayloadFormatError(f"cannot encode as MessagePack: {exc}") from exc
    if compression == "none":
        return body
    compressed = pa.compress(body, codec=_codec(compression), asbytes=True)
    return _SIZE_PREFIX.pack(len(body)) + compressed


def decode_msgpack(data: Any, *, uri: str, compression: str = "none") -> tuple[Any, str, dict[str, Any]]:
    """Decode a MessagePack envelope.

    Args:
        data: The bytes (any buffer).
        uri: Named in errors.
        compression: How the body was compressed (from the ref).

    Returns:
        The data, its kind and its metadata.

    Raises:
        PayloadCorruptError: Not a (complete) envelope, or a bad ext value.
    """
    hook_errors: list[Exception] = []

    def ext_hook(tag: int, payload: bytes) -> Any:
        # ormsgpack replaces a hook's exception with a bare "ext_hook failed"; keep the real reason.
        try:
            return _ext_hook(tag, payload)
        except (ValueError, TypeError) as exc:
            hook_errors.append(exc)
            raise

    try:
        # ormsgpack takes bytes, bytearray or memoryview (not a pa.Buffer from a memory-mapped file).
        body = _decompress(data, compression) if compression != "none" else memoryview(data)
        with gc_paused():
            envelope = ormsgpack.unpackb(body, ext_hook=ext_hook)
        if not isinstance(envelope, dict) or envelope.get("dspex") != ENVELOPE_VERSION:
            raise ValueError("not a DSPex MessagePack payload (no version-1 envelope)")
        kind, meta = envelope.get("kind"), envelope.get("meta")
        if not isinstance(kind, str) or not isinstance(meta, dict) or "data" not in envelope:
            raise ValueError("envelope lacks kind, meta or data")
    except (ValueError, TypeError, OSError, ormsgpack.MsgpackDecodeError, pa.ArrowException) as exc:
        reason = f"{exc}: {hook_errors[-1]}" if hook_errors else str(exc)
        raise PayloadCorruptError(f"not a readable MessagePack payload: {reason}", uri=uri) from exc
    return envelope["data"], kind, meta


def _codec(compression: str) -> str:
    if compression not in ("zstd", "lz4"):
        raise PayloadFormatError(f"unknown compression {compression!r}; use 'none', 'zstd' or 'lz4'")
    return "lz4_frame" if compression == "lz4" else "zstd"


def _decompress(data: Any, compression: str) -> Any:
    view = memoryview(data)
    if len(view) < _SIZE_PREFIX.size:
        raise ValueError("compressed body shorter than its size prefix")
    (size,) = _SIZE_PREFIX.unpack(view[: _SIZE_PREFIX.size])
    compressed = view[_SIZE_PREFIX.size :]
    if size > max(_MIN_EXPANSION_BYTES, _MAX_EXPANSION * len(compressed)):
        raise ValueError(f"declared uncompressed size {size} is implausible for {len(compressed)} bytes")
    return pa.decompress(compressed, decompressed_size=size, codec=_codec(compression), asbytes=True)
