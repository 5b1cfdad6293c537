"""`PayloadRef`: the small, frozen, JSON-able handle by which payloads travel.

A ref is what steps, pools and Prefect parameters exchange instead of the data itself: a few hundred
bytes that say where the payload lives (``uri``), how it is encoded (``format``, ``compression``), what
it holds (``kind``, ``rows``, ``schema_summary``), how big it is (``nbytes``) and a content checksum
that every read verifies. Payloads up to ``settings.payload_inline_max_bytes`` also carry their bytes in
``inline`` (base64, because Prefect embeds parameters and results in JSON), so reading them needs no I/O.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "INLINE_SCHEME",
    "Compression",
    "PayloadFormat",
    "PayloadKind",
    "PayloadRef",
]

#: The uri scheme of payloads that live only inside their ref (never stored).
INLINE_SCHEME = "inline:"

PayloadFormat = Literal["arrow", "msgpack"]
"""Arrow IPC (columnar, numeric; zero-copy reads) or MessagePack (small, irregular, nested)."""

Compression = Literal["none", "zstd", "lz4"]
"""Arrow: per-buffer IPC compression; MessagePack: the whole body (see `tasks.payloads.codecs.msgpack`)."""

PayloadKind = Literal[
    "rows",  # list[dict]
    "list",  # any other list
    "dict",
    "dataframe",
    "table",
    "record_batch",
    "ndarray",
    "examples",
    "predictions",
    "dataset",
]
"""The Python type that was written; `read_payload` gives back the same type."""


class PayloadRef(BaseModel):
    """A reference to a stored (or inlined) payload.

    ``ref.model_dump(mode="json")`` is plain JSON and ``PayloadRef.model_validate`` of it gives an equal
    ref, so a ref can be a Prefect parameter, a result, or a line in a log.

    Attributes:
        uri: Where the bytes live: an fsspec URL or local path, or ``inline:<checksum>`` for payloads
            that live only in ``inline``.
        format: The codec of the bytes.
        kind: The Python type that was written (see `PayloadKind`).
        compression: The compression applied by the codec.
        rows: Number of rows, as `tasks.payloads.read_rows` would return them.
        nbytes: Size of the encoded bytes (after compression); a shorter file is reported as truncated.
        schema_summary: Column name to type name, for logs and UIs (not used for decoding).
        checksum: ``"<algorithm>:<hex digest>"`` of the encoded bytes, verified on every read.
        created_at: When the payload was written (UTC).
        inline: The encoded bytes, base64, for small payloads; None when only stored at ``uri``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str = Field(min_length=1, description="fsspec URL or local path, or inline:<checksum>.")
    format: PayloadFormat = Field(description="Codec of the encoded bytes.")
    kind: PayloadKind = Field(description="Python type that was written.")
    compression: Compression = Field(default="none", description="Compression applied by the codec.")
    rows: int = Field(ge=0, description="Number of rows.")
    nbytes: int = Field(ge=0, description="Size of the encoded bytes.")
    schema_summary: dict[str, str] = Field(default_factory=dict, description="Column name -> type name.")
    checksum: str = Field(
        pattern=r"^(xxh3_128:[0-9a-f]{32}|sha256:[0-9a-f]{64})$",
        description="Content checksum of the encoded bytes, '<algorithm>:<hex>'.",
    )
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC), description="Write time (UTC).")
    inline: str | None = Field(default=None, description="The encoded bytes, base64, for small payloads.")

    @property
    def is_inline(self) -> bool:
        """Whether the bytes travel inside this ref."""
        return self.inline is not None

    @property
    def is_stored(self) -> bool:
        """Whether the bytes are (also) stored at ``uri``."""
        return not self.uri.startswith(INLINE_SCHEME)
