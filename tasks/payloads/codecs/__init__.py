"""The two payload codecs: Arrow IPC (columnar and numeric) and MessagePack (small and irregular)."""

from tasks.payloads.codecs.arrow import decode_arrow, encode_arrow
from tasks.payloads.codecs.msgpack import decode_msgpack, encode_msgpack

__all__ = ["decode_arrow", "decode_msgpack", "encode_arrow", "encode_msgpack"]
