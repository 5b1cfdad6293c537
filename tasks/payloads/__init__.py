"""Payloads: how data travels between steps and pools, as Arrow or MessagePack, by reference.

    ref = write_payload(rows)            # -> PayloadRef (small, frozen, JSON-able)
    rows = read_payload(ref)             # the same type that was written, checksum-verified
    rows = read_rows(ref)                # always a list of plain dicts

Arrow IPC for columnar and numeric data (zero-copy reads), MessagePack (ormsgpack) for small or
irregular data; small payloads inline in the ref, large ones stored on any fsspec URL. `Dataset` wraps
an Arrow table for batching and file conversion. Prefect result serializers ``"dspex-msgpack"`` and
``"dspex-arrow"`` are registered by importing `tasks.payloads.serializers` (not imported here, so this
package does not import Prefect).
"""

from tasks.payloads.api import (
    choose_format,
    decode_payload,
    encode_payload,
    payload_exists,
    payload_uri,
    read_payload,
    read_rows,
    write_payload,
)
from tasks.payloads.dataset import Dataset
from tasks.payloads.files import export_rows
from tasks.payloads.ref import Compression, PayloadFormat, PayloadKind, PayloadRef

__all__ = [
    "Compression",
    "Dataset",
    "PayloadFormat",
    "PayloadKind",
    "PayloadRef",
    "choose_format",
    "decode_payload",
    "encode_payload",
    "export_rows",
    "payload_exists",
    "payload_uri",
    "read_payload",
    "read_rows",
    "write_payload",
]
