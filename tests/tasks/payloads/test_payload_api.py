"""write_payload / read_payload / read_rows / payload_exists: every type, both storages, every error."""

from __future__ import annotations

import base64
import datetime as dt
import os
from pathlib import Path
from typing import Any

import dspy
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dspex.exceptions import PayloadCorruptError, PayloadError, PayloadFormatError, PayloadNotFoundError
from tasks.payloads import (
    Dataset,
    PayloadRef,
    choose_format,
    payload_exists,
    payload_uri,
    read_payload,
    read_rows,
    write_payload,
)

NESTED_ROWS = [
    {"question": "Qu'est-ce que c'est ? 你好 🚀", "context": ["p1", "p2", "p3"], "answer": None},
    {"question": "second", "context": [], "answer": "yes", "meta": {"score": 0.5, "tags": [["a"], []]}},
]


def assert_same(expected: Any, actual: Any) -> None:
    assert type(actual) is type(expected)
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(actual, expected)
    elif isinstance(expected, pa.Table | pa.RecordBatch):
        assert actual.equals(expected), (actual, expected)
    elif isinstance(expected, np.ndarray):
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        np.testing.assert_array_equal(actual, expected)
    elif isinstance(expected, Dataset):
        assert actual == expected
    elif isinstance(expected, list) and expected and isinstance(expected[0], dspy.Example):
        assert actual == expected
        assert [e._input_keys for e in actual] == [e._input_keys for e in expected]
    else:
        assert actual == expected


CASES: dict[str, Any] = {
    "rows": NESTED_ROWS,
    "one_row": [{"a": 1}],
    "dict": {"name": "ü", "values": [1, 2.5, None], "nested": {"deep": [{"x": b"bytes"}]}},
    "list_of_scalars": [1, "two", 3.0, None, True],
    "empty_list": [],
    "dataframe": pd.DataFrame({"a": [1, 2, 3], "b": ["x", None, "ü"], "c": [[1], [], [2, 3]]}),
    "dataframe_indexed": pd.DataFrame({"a": [1.0, None]}, index=["r1", "r2"]),
    "empty_dataframe": pd.DataFrame({"a": pd.Series([], dtype="int64")}),
    "table": pa.table({"a": [1, None, 3], "s": ["α", None, ""], "l": [[1, 2], None, []]}),
    "one_row_table": pa.table({"a": [1]}),
    "empty_table": pa.table({"a": pa.array([], pa.int64()), "s": pa.array([], pa.string())}),
    "record_batch": pa.record_batch({"a": [1, 2], "b": ["x", "y"]}),
    "empty_record_batch": pa.record_batch({"a": pa.array([], pa.int64())}),
    "embeddings": np.random.default_rng(0).random((50, 384), dtype=np.float32),
    "one_embedding": np.ones((1, 8), dtype=np.float32),
    "no_embeddings": np.zeros((0, 384), dtype=np.float32),
    "vector_int64": np.arange(10),
    "tensor_3d": np.arange(24, dtype=np.float64).reshape(2, 3, 4),
    "bools": np.array([True, False, True]),
    "complex": np.array([1 + 2j, 3 - 1j]),
    "dataset": Dataset.from_rows(NESTED_ROWS),
}


@pytest.mark.parametrize("inline", [False, True], ids=["stored", "inline"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_keeps_type_and_value(case: str, inline: bool, base_url: str) -> None:
    obj = CASES[case]
    ref = write_payload(obj, base_url, inline_max_bytes=10**9 if inline else 0)
    assert ref.is_inline is inline
    assert_same(obj, read_payload(ref))
    # The JSON form of the ref (as a Prefect parameter would carry it) reads the same.
    assert_same(obj, read_payload(ref.model_dump(mode="json")))


def test_examples_keep_input_keys_and_predictions_their_fields(base_url: str) -> None:
    examples = [
        dspy.Example(question="q1", answer="a1", context=["c"]).with_inputs("question", "context"),
        dspy.Example(question="q2", answer="a2", context=[]).with_inputs("question", "context"),
    ]
    mixed = [examples[0], dspy.Example(question="q3", answer="a3").with_inputs("question")]
    predictions = [
        dspy.Prediction(answer="a", reasoning="because"),
        dspy.Prediction(answer="b", reasoning=""),
    ]
    irregular = [dspy.Prediction(answer="a", reasoning="because"), dspy.Prediction(answer="b")]
    assert read_payload(write_payload(irregular, base_url)) == irregular  # msgpack keeps missing fields
    # Arrow is columnar: a field missing from one row comes back as None there.
    assert read_payload(write_payload(irregular, base_url, "arrow"))[1].reasoning is None
    for fmt in ("msgpack", "arrow"):
        for value in (examples, predictions):
            ref = write_payload(value, base_url, fmt, inline_max_bytes=0)
            back = read_payload(ref)
            assert back == value
            assert all(type(b) is type(v) for b, v in zip(back, value, strict=True))
    back = read_payload(write_payload(mixed, base_url))
    assert [e._input_keys for e in back] == [{"question", "context"}, {"question"}]
    assert read_payload(write_payload(examples, base_url))[0].inputs().toDict() == {
        "question": "q1",
        "context": ["c"],
    }


def test_embeddings_read_back_zero_copy(local_url: str) -> None:
    embeddings = np.random.default_rng(1).random((1000, 384), dtype=np.float32)
    ref = write_payload(embeddings, local_url)
    assert ref.format == "arrow" and ref.rows == 1000 and not ref.is_inline
    back = read_payload(ref)
    np.testing.assert_array_equal(back, embeddings)
    # A view of the memory-mapped file, not a copy: it owns no data and cannot be written.
    assert not back.flags.owndata and not back.flags.writeable and back.base is not None


def test_automatic_format_choice() -> None:
    assert choose_format(NESTED_ROWS) == "msgpack"
    assert choose_format({"a": 1}) == "msgpack"
    assert choose_format(CASES["table"]) == "arrow"
    assert choose_format(CASES["dataframe"]) == "arrow"
    assert choose_format(CASES["embeddings"]) == "arrow"
    assert choose_format(CASES["complex"]) == "msgpack"
    assert choose_format(CASES["dataset"]) == "arrow"


def test_forced_arrow_for_rows_and_compression(base_url: str) -> None:
    rows = [{"a": i, "s": f"text {i}" * 20} for i in range(500)]
    for compression in ("zstd", "lz4"):
        for fmt in ("arrow", "msgpack"):
            ref = write_payload(rows, base_url, fmt, compression=compression, inline_max_bytes=0)
            assert ref.compression == compression and ref.format == fmt
            assert read_payload(ref) == rows
    plain = write_payload(rows, base_url, "msgpack", inline_max_bytes=0)
    zstd = write_payload(rows, base_url, "msgpack", compression="zstd", inline_max_bytes=0)
    assert zstd.nbytes < plain.nbytes / 5


def test_compression_default_comes_from_settings(monkeypatch: pytest.MonkeyPatch, local_url: str) -> None:
    monkeypatch.setenv("DSPEX_PAYLOAD_COMPRESSION", "zstd")
    ref = write_payload(CASES["embeddings"], local_url)
    assert ref.compression == "zstd"
    np.testing.assert_array_equal(read_payload(ref), CASES["embeddings"])


def test_inline_threshold_comes_from_settings(monkeypatch: pytest.MonkeyPatch, local_url: str) -> None:
    small = [{"a": 1}]
    ref = write_payload(small, local_url)
    assert ref.is_inline and ref.uri.startswith("inline:") and not os.path.exists(local_url)
    assert base64.b64decode(ref.inline or "")  # base64 text, JSON-safe
    monkeypatch.setenv("DSPEX_PAYLOAD_INLINE_MAX_BYTES", "0")
    stored = write_payload(small, local_url)
    assert not stored.is_inline and Path(stored.uri).is_file()


def test_default_base_url_is_the_settings_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DSPEX_HOME", str(tmp_path / "home"))
    ref = write_payload(CASES["embeddings"])
    assert ref.uri.startswith(str((tmp_path / "home" / "payloads").resolve()))
    assert payload_exists(ref)


def test_read_rows_gives_plain_dicts_for_every_kind(base_url: str) -> None:
    expected_first = {
        "rows": NESTED_ROWS[0],
        "one_row": {"a": 1},
        "list_of_scalars": {"value": 1},
        "dataframe": {"a": 1, "b": "x", "c": [1]},
        "table": {"a": 1, "s": "α", "l": [1, 2]},
        "record_batch": {"a": 1, "b": "x"},
        "one_embedding": {"value": [1.0] * 8},
        "vector_int64": {"value": 0},
        # A table: a column only the second row has is null in the first (it was dropped: issue 25).
        "dataset": {**NESTED_ROWS[0], "meta": None},
    }
    for case, first in expected_first.items():
        rows = read_rows(write_payload(CASES[case], base_url, inline_max_bytes=0))
        assert all(type(r) is dict for r in rows)
        assert rows[0] == first, case
    assert read_rows(write_payload({"q": ["a", "b"], "n": [1, 2]}, base_url)) == [
        {"q": "a", "n": 1},
        {"q": "b", "n": 2},
    ]
    assert read_rows(write_payload({"q": "a", "n": 1}, base_url)) == [{"q": "a", "n": 1}]
    examples = [dspy.Example(q="x", a="y").with_inputs("q")]
    assert read_rows(write_payload(examples, base_url)) == [{"q": "x", "a": "y"}]
    assert read_rows(write_payload([], base_url)) == []
    ref = write_payload(NESTED_ROWS, base_url)
    assert ref.rows == len(read_rows(ref))


def test_named_payloads_are_deterministic_and_idempotent(base_url: str) -> None:
    first = write_payload(NESTED_ROWS, base_url, name="run-1/batch-0003")
    again = write_payload(NESTED_ROWS, base_url, name="run-1/batch-0003")
    assert first.uri == again.uri == payload_uri("run-1/batch-0003", "msgpack", base_url)
    assert first.checksum == again.checksum
    # Named payloads are stored even when small enough to inline, so they can be found by name.
    assert first.is_inline and payload_exists(first.uri)
    assert read_payload(first.model_copy(update={"inline": None})) == NESTED_ROWS
    big = write_payload(CASES["embeddings"], base_url, name="emb")
    assert big.uri.endswith("/emb.arrow") and payload_exists(big.uri)


def test_unnamed_payloads_are_content_addressed(base_url: str) -> None:
    first = write_payload(CASES["embeddings"], base_url)
    second = write_payload(CASES["embeddings"].copy(), base_url)
    assert first.uri == second.uri and first.checksum.replace(":", "-") in first.uri
    other = write_payload(CASES["embeddings"] + 1, base_url)
    assert other.uri != first.uri


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/../../b", "", "bad name", ".hidden"])
def test_unsafe_names_are_refused(name: str, local_url: str) -> None:
    with pytest.raises(PayloadError, match="safe relative file name"):
        write_payload([{"a": 1}], local_url, name=name)


def test_payload_exists(base_url: str) -> None:
    ref = write_payload(CASES["table"], base_url, inline_max_bytes=0)
    assert payload_exists(ref) and payload_exists(ref.model_dump(mode="json")) and payload_exists(ref.uri)
    assert payload_exists(write_payload([{"a": 1}], base_url))  # inline
    assert not payload_exists(ref.uri + ".missing")
    assert not payload_exists(ref.model_copy(update={"uri": ref.uri + ".missing"}))


# --- errors -------------------------------------------------------------------------------------
def test_unsupported_objects_and_values_raise_format_errors(base_url: str) -> None:
    with pytest.raises(PayloadFormatError, match="cannot store a builtins.set"):
        write_payload({1, 2}, base_url)
    with pytest.raises(PayloadFormatError, match="object"):
        write_payload([{"a": object()}], base_url)
    with pytest.raises(PayloadFormatError, match="64-bit|Integer"):
        write_payload([{"a": 2**70}], base_url)
    with pytest.raises(PayloadFormatError, match="columnar"):
        write_payload(CASES["table"], base_url, "msgpack")
    with pytest.raises(PayloadFormatError, match="cannot be stored as Arrow"):
        write_payload({"a": 1}, base_url, "arrow")
    with pytest.raises(PayloadFormatError, match="dtype object"):
        write_payload(np.array([object()]), base_url, "arrow")
    with pytest.raises(PayloadFormatError, match="unknown compression"):
        write_payload([{"a": 1}], base_url, compression="gzip")
    with pytest.raises(PayloadFormatError, match="not a payload reference"):
        read_payload({"uri": "x"})


def test_values_beyond_json_round_trip(base_url: str) -> None:
    value = {
        "when": dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC),
        "day": dt.date(2024, 5, 1),
        "vec": np.arange(3, dtype=np.int16),
        "scalar": np.float32(1.5),
        "tuple": (1, 2),
        "bytes": b"\x00\xff",
    }
    back = read_payload(write_payload(value, base_url))
    assert back["when"] == value["when"] and back["day"] == value["day"]
    np.testing.assert_array_equal(back["vec"], value["vec"])
    assert back["vec"].dtype == np.int16
    assert back["scalar"] == 1.5 and back["tuple"] == [1, 2] and back["bytes"] == b"\x00\xff"


def test_missing_payload_raises_not_found_naming_the_uri(base_url: str) -> None:
    ref = write_payload(NESTED_ROWS, base_url, inline_max_bytes=0)
    gone = ref.model_copy(update={"uri": ref.uri.replace("xxh3", "gone")})
    with pytest.raises(PayloadNotFoundError) as info:
        read_payload(gone)
    assert info.value.uri == gone.uri and gone.uri in str(info.value)
    with pytest.raises(PayloadNotFoundError):
        read_payload(ref.model_copy(update={"uri": "inline:" + ref.checksum}))


def _rewrite(uri: str, data: bytes) -> None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    fs.pipe_file(path, data)


def _read(uri: str) -> bytes:
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    return bytes(fs.cat_file(path))


@pytest.mark.parametrize("case", ["rows", "table", "embeddings"])
def test_truncated_and_corrupt_payloads_raise_corrupt_errors(case: str, base_url: str) -> None:
    ref = write_payload(CASES[case], base_url, inline_max_bytes=0)
    original = _read(ref.uri)
    _rewrite(ref.uri, original[: len(original) // 2])
    with pytest.raises(PayloadCorruptError, match="truncated") as info:
        read_payload(ref)
    assert ref.uri in str(info.value)
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF
    _rewrite(ref.uri, bytes(flipped))
    with pytest.raises(PayloadCorruptError, match="checksum mismatch"):
        read_payload(ref)
    _rewrite(ref.uri, original)
    assert_same(CASES[case], read_payload(ref))


def test_bytes_of_the_wrong_format_raise_corrupt_errors(base_url: str) -> None:
    # The checksum matches (the ref is "honest" about the bytes) but they are not of its format.
    ref = write_payload(NESTED_ROWS, base_url, "msgpack", inline_max_bytes=0)
    as_arrow = ref.model_copy(update={"format": "arrow"})
    with pytest.raises(PayloadCorruptError, match="Arrow IPC"):
        read_payload(as_arrow)
    table_ref = write_payload(CASES["table"], base_url, inline_max_bytes=0)
    with pytest.raises(PayloadCorruptError, match="MessagePack"):
        read_payload(table_ref.model_copy(update={"format": "msgpack"}))
    with pytest.raises(PayloadCorruptError, match="base64"):
        read_payload(ref.model_copy(update={"inline": "not base64!"}))


def test_a_failed_local_write_leaves_no_file(monkeypatch: pytest.MonkeyPatch, local_url: str) -> None:
    from tasks.payloads.codecs import arrow

    def explode(self: Any, sink: Any) -> None:
        sink.write(b"partial bytes")
        raise RuntimeError("crash in the middle of a write")

    monkeypatch.setattr(arrow.ArrowEncoder, "write_to", explode)
    with pytest.raises(RuntimeError, match="crash"):
        write_payload(CASES["embeddings"], local_url, name="never")
    assert not [p for p in Path(local_url).rglob("*") if p.is_file()]


def test_payloads_written_before_a_failure_stay_readable(local_url: str) -> None:
    done = [write_payload(CASES["embeddings"][i : i + 10], local_url, name=f"b{i}") for i in range(0, 50, 10)]
    with pytest.raises(PayloadFormatError):
        write_payload([{"a": object()}], local_url, name="b50")  # the sixth batch fails
    for i, ref in enumerate(done):
        np.testing.assert_array_equal(read_payload(ref), CASES["embeddings"][i * 10 : i * 10 + 10])


def test_ref_round_trips_through_json_text(local_url: str) -> None:
    ref = write_payload(CASES["table"], local_url, inline_max_bytes=0)
    assert read_payload(ref.model_dump_json()).equals(CASES["table"])
    assert isinstance(PayloadRef.model_validate_json(ref.model_dump_json()), PayloadRef)
