"""Prefect result serializers ``"dspex-msgpack"`` and ``"dspex-arrow"``.

Importing this module registers both (and ``"dspex-payload"``, the automatic choice) with Prefect (its serializers are keyed by their ``type`` field,
like every Prefect serializer), so a task or flow can say ``result_serializer="dspex-msgpack"``. Import
it in every process that reads such results; Prefect resolves the name only when it is registered.

Prefect embeds ``Serializer.dumps`` output in a JSON result record (3.8.8:
``ResultRecord.serialize`` -> ``model_dump_json``), so it must be UTF-8-safe text. These serializers
therefore write the result as a payload and return its `PayloadRef` as JSON: small results travel
inline in the ref (base64), large ones by reference in payload storage (``base_url``, default the
payload URL setting) instead of being base64-inflated into Prefect's result file. ``loads`` reads the
payload back, checksum-verified. No pickle is involved.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect.serializers import Serializer
from pydantic import Field

from dspex.exceptions import PayloadCorruptError
from tasks.payloads.api import kind_of, read_payload, write_payload
from tasks.payloads.ref import PayloadFormat, PayloadRef

__all__ = ["ArrowPayloadSerializer", "MsgpackPayloadSerializer", "PayloadSerializer"]


class PayloadSerializer(Serializer):
    """``result_serializer="dspex-payload"``: the automatic format choice of `write_payload`.

    Also the shared behaviour of the two below: write a payload, return its ref as JSON; read it back.
    (Prefect registers every subclass by its ``type`` default, so this base needs a key of its own.)
    """

    type: str = "dspex-payload"

    base_url: str | None = Field(
        default=None, description="Payload storage URL for large results; default the DSPex setting."
    )
    inline_max_bytes: int | None = Field(
        default=None,
        ge=0,
        description="Results up to this size travel inside Prefect's result record; default the setting.",
    )
    compression: Literal["none", "zstd", "lz4"] | None = Field(
        default=None, description="Payload compression; default the DSPex setting."
    )

    def _format_for(self, obj: Any) -> PayloadFormat | None:
        return None  # write_payload's automatic choice

    def dumps(self, obj: Any) -> bytes:
        """Write ``obj`` as a payload; return its ref as UTF-8 JSON."""
        ref = write_payload(
            obj,
            self.base_url,
            self._format_for(obj),
            compression=self.compression,
            inline_max_bytes=self.inline_max_bytes,
        )
        return ref.model_dump_json().encode("utf-8")

    def loads(self, blob: bytes) -> Any:
        """Read the payload that ``blob`` (a ref as JSON) points to."""
        try:
            ref = PayloadRef.model_validate_json(blob)
        except ValueError as exc:
            raise PayloadCorruptError(f"{self.type} result is not a payload reference: {exc}") from exc
        return read_payload(ref)


class MsgpackPayloadSerializer(PayloadSerializer):
    """``result_serializer="dspex-msgpack"``: MessagePack payloads (rows, dicts, lists, examples, arrays)."""

    type: Literal["dspex-msgpack"] = "dspex-msgpack"

    def _format_for(self, obj: Any) -> PayloadFormat | None:
        return "msgpack"


class ArrowPayloadSerializer(PayloadSerializer):
    """``result_serializer="dspex-arrow"``: Arrow payloads (tables, DataFrames, arrays, datasets, rows).

    Objects Arrow cannot hold (a dict, a list of scalars) fall back to MessagePack rather than fail.
    """

    type: Literal["dspex-arrow"] = "dspex-arrow"

    def _format_for(self, obj: Any) -> PayloadFormat | None:
        return "msgpack" if kind_of(obj) in ("dict", "list") else "arrow"
