"""Arrow IPC file codec: columnar and numeric payloads, zero-copy reads.

The bytes are a standard Arrow IPC *file* (Feather v2), so any Arrow tool can open a payload; its
footer also makes truncation detectable. What `read_payload` needs to give back the written Python
type lives in the schema metadata (``dspex.kind``, ``dspex.meta`` as JSON), and a file without it
reads as a plain ``pa.Table``. Optional zstd/lz4 compression is Arrow's own per-buffer compression.

Reading maps the arrays onto the bytes as they are (no copy, unless compressed) and then runs Arrow's
full validation, so a corrupt file is an error here instead of a crash later.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from dspex.exceptions import PayloadCorruptError

__all__ = ["KIND_KEY", "META_KEY", "ArrowEncoder", "decode_arrow", "encode_arrow"]

KIND_KEY = b"dspex.kind"
META_KEY = b"dspex.meta"


class ArrowEncoder:
    """A table ready to be written as an Arrow IPC file, to a buffer or straight into a file.

    Writing straight into a file (`write_to`) makes no intermediate copy: Arrow hands the array
    buffers to the file as they are. `to_buffer` sizes its buffer exactly first (a dry run that
    copies nothing) rather than letting an output stream grow by doubling and reallocating.

    Args:
        table: The data.
        kind: The Python type to give back on read (see `tasks.payloads.ref.PayloadKind`).
        meta: JSON-able extra facts needed to give it back (an array's shape and dtype, input keys).
        compression: ``"none"``, ``"zstd"`` or ``"lz4"`` (Arrow's LZ4 frame codec).
    """

    def __init__(
        self, table: pa.Table, *, kind: str, meta: dict[str, Any], compression: str = "none"
    ) -> None:
        metadata = dict(table.schema.metadata or {})
        metadata[KIND_KEY] = kind.encode()
        metadata[META_KEY] = json.dumps(meta, separators=(",", ":")).encode()
        self.table = table.replace_schema_metadata(metadata)
        self.compression = compression
        codec = None if compression == "none" else ("lz4_frame" if compression == "lz4" else compression)
        self._options = pa.ipc.IpcWriteOptions(compression=codec)

    def write_to(self, sink: Any) -> None:
        """Write the IPC file into ``sink`` (a pyarrow output stream or a writable Python file)."""
        with pa.ipc.new_file(sink, self.table.schema, options=self._options) as writer:
            writer.write_table(self.table)

    def size(self) -> int:
        """The exact encoded size (a dry run; with compression it compresses, so it costs that)."""
        mock = pa.MockOutputStream()
        self.write_to(mock)
        return int(mock.size())

    def to_buffer(self) -> pa.Buffer:
        """The encoded bytes in one exactly-sized Arrow buffer."""
        if self.compression != "none":  # compressing twice to size it would cost more than a resize
            sink = pa.BufferOutputStream()
            self.write_to(sink)
            return sink.getvalue()
        buffer = pa.allocate_buffer(self.size())
        self.write_to(pa.FixedSizeBufferWriter(buffer))
        return buffer


def encode_arrow(table: pa.Table, *, kind: str, meta: dict[str, Any], compression: str = "none") -> pa.Buffer:
    """Encode ``table`` as an Arrow IPC file (see `ArrowEncoder` for the arguments)."""
    return ArrowEncoder(table, kind=kind, meta=meta, compression=compression).to_buffer()


def decode_arrow(data: Any, *, uri: str) -> tuple[pa.Table, str, dict[str, Any]]:
    """Decode an Arrow IPC file.

    Args:
        data: The bytes (bytes, memoryview or pa.Buffer; not copied).
        uri: Named in errors.

    Returns:
        The table (without our schema metadata), its kind, and its metadata.

    Raises:
        PayloadCorruptError: Not an Arrow IPC file, truncated, or failing Arrow's validation.
    """
    try:
        buffer = data if isinstance(data, pa.Buffer) else pa.py_buffer(data)
        table = pa.ipc.open_file(buffer).read_all()
        table.validate(full=True)
        metadata = dict(table.schema.metadata or {})
        kind = metadata.pop(KIND_KEY, b"table").decode()
        meta = json.loads(metadata.pop(META_KEY, b"{}"))
        if not isinstance(meta, dict):
            raise ValueError("dspex.meta is not a JSON object")
    except (pa.ArrowException, OSError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise PayloadCorruptError(f"not a readable Arrow IPC file: {exc}", uri=uri) from exc
    return table.replace_schema_metadata(metadata or None), kind, meta
