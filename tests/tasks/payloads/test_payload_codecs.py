"""The Arrow and MessagePack decoders: typed errors on any input, never a hang or a crash (fuzzed)."""

from __future__ import annotations

import gc
import threading

import numpy as np
import ormsgpack
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dspex.exceptions import PayloadCorruptError, PayloadError, PayloadFormatError
from tasks.payloads import decode_payload, encode_payload
from tasks.payloads.codecs.arrow import decode_arrow, encode_arrow
from tasks.payloads.codecs.msgpack import decode_msgpack, encode_msgpack, gc_paused

FUZZ = settings(
    max_examples=200, deadline=2000, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)

SAMPLES = {
    "rows": [{"q": "ü", "ctx": ["a", "b"], "n": 1, "x": None}],
    "table": pa.table({"a": [1, None], "s": ["x", "yz"], "l": [[1.0], []]}),
    "ndarray": np.arange(12, dtype=np.float32).reshape(3, 4),
    "dict": {"k": [1, 2], "when": b"\x00"},
}
VALID = {
    (name, compression): encode_payload(value, compression=compression)
    for name, value in SAMPLES.items()
    for compression in ("none", "zstd")
}


def _decode_or_payload_error(data: bytes, fmt: str, compression: str) -> None:
    try:
        decode_payload(data, fmt, compression)  # type: ignore[arg-type]
    except PayloadError as exc:
        assert exc.uri == "<bytes>"


@FUZZ
@given(
    data=st.binary(max_size=4096),
    fmt=st.sampled_from(["arrow", "msgpack"]),
    compression=st.sampled_from(["none", "zstd", "lz4"]),
)
def test_random_bytes_never_escape_as_anything_but_payload_errors(
    data: bytes, fmt: str, compression: str
) -> None:
    _decode_or_payload_error(data, fmt, compression)


@FUZZ
@given(
    key=st.sampled_from(sorted(VALID)),
    cut=st.integers(min_value=0, max_value=10_000),
    flips=st.lists(st.tuples(st.integers(min_value=0, max_value=10_000), st.integers(1, 255)), max_size=4),
)
def test_mutated_payloads_raise_typed_errors(
    key: tuple[str, str], cut: int, flips: list[tuple[int, int]]
) -> None:
    encoded = VALID[key]
    data = bytearray(memoryview(encoded.data))
    for position, mask in flips:
        data[position % len(data)] ^= mask
    truncated = bytes(data[: cut % (len(data) + 1)])
    _decode_or_payload_error(bytes(data), encoded.format, encoded.compression)
    _decode_or_payload_error(truncated, encoded.format, encoded.compression)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=100, deadline=2000, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.dictionaries(st.text(max_size=10), json_values, max_size=5))
def test_any_json_like_dict_round_trips_through_msgpack(value: dict) -> None:
    assert decode_payload(encode_payload(value).data, "msgpack") == value


def test_truncated_arrow_file_names_the_uri() -> None:
    data = encode_arrow(SAMPLES["table"], kind="table", meta={}).to_pybytes()
    with pytest.raises(PayloadCorruptError, match=r"Arrow IPC.*\[s3://bucket/x.arrow\]"):
        decode_arrow(data[:-20], uri="s3://bucket/x.arrow")


def test_plain_arrow_files_from_other_tools_read_as_tables() -> None:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, SAMPLES["table"].schema) as writer:
        writer.write_table(SAMPLES["table"])
    table, kind, meta = decode_arrow(sink.getvalue(), uri="x")
    assert kind == "table" and meta == {} and table.equals(SAMPLES["table"])


def test_msgpack_envelope_is_required() -> None:
    with pytest.raises(PayloadCorruptError, match="envelope"):
        decode_msgpack(ormsgpack.packb([1, 2]), uri="u")
    with pytest.raises(PayloadCorruptError, match="kind"):
        decode_msgpack(ormsgpack.packb({"dspex": 1, "data": 1}), uri="u")


def test_msgpack_ext_values_are_validated() -> None:
    bad_array = ormsgpack.Ext(1, ormsgpack.packb(["<f4", [10], b"\x00" * 3]))
    with pytest.raises(PayloadCorruptError, match="ndarray ext"):
        decode_msgpack(
            ormsgpack.packb({"dspex": 1, "kind": "dict", "meta": {}, "data": {"a": bad_array}}), uri="u"
        )
    object_array = ormsgpack.Ext(1, ormsgpack.packb(["|O", [1], b"\x00" * 8]))
    with pytest.raises(PayloadCorruptError, match="bad ndarray"):
        decode_msgpack(
            ormsgpack.packb({"dspex": 1, "kind": "dict", "meta": {}, "data": {"a": object_array}}), uri="u"
        )
    with pytest.raises(PayloadCorruptError, match="unknown MessagePack ext"):
        decode_msgpack(
            ormsgpack.packb({"dspex": 1, "kind": "dict", "meta": {}, "data": ormsgpack.Ext(99, b"")}), uri="u"
        )


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises(PayloadCorruptError):
        decode_msgpack(b"\x91" * 1_000_000 + b"\xc0", uri="deep")


def test_forged_decompressed_size_is_refused_before_allocating() -> None:
    forged = (2**40).to_bytes(8, "little") + b"\x28\xb5\x2f\xfd" + b"\x00" * 16
    with pytest.raises(PayloadCorruptError, match="implausible"):
        decode_msgpack(forged, uri="bomb", compression="zstd")


def test_unsupported_values_name_their_type() -> None:
    with pytest.raises(PayloadFormatError, match="threading.Lock|lock"):
        encode_msgpack({"x": threading.Lock()}, kind="dict", meta={})


def test_gc_paused_nests_and_restores() -> None:
    assert gc.isenabled()
    with gc_paused():
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # a caller's own choice is kept
    finally:
        gc.enable()
