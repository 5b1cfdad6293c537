"""Prefect result serializers "dspex-msgpack" / "dspex-arrow": registered, JSON-safe, used by Prefect."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from prefect.serializers import Serializer

import tasks.payloads.serializers  # noqa: F401  (registers the serializers)
from dspex.exceptions import PayloadCorruptError
from tasks.payloads import PayloadRef
from tasks.payloads.serializers import ArrowPayloadSerializer, MsgpackPayloadSerializer

ROWS = [{"question": "ü?", "context": ["a", "b", "c"], "answer": None}]


def test_registered_under_their_type_names() -> None:
    assert isinstance(Serializer(type="dspex-msgpack"), MsgpackPayloadSerializer)
    assert isinstance(Serializer(type="dspex-arrow"), ArrowPayloadSerializer)


@pytest.mark.parametrize("inline_max_bytes", [0, 10**6], ids=["by-reference", "inline"])
def test_dumps_is_json_embeddable_and_loads_round_trips(inline_max_bytes: int, tmp_path: Path) -> None:
    from prefect._internal.result_records import ResultRecord, ResultRecordMetadata

    embeddings = np.random.default_rng(0).random((20, 8), dtype=np.float32)
    cases = [
        (MsgpackPayloadSerializer, ROWS, "msgpack"),
        (ArrowPayloadSerializer, embeddings, "arrow"),
        (ArrowPayloadSerializer, pa.table({"a": [1, 2]}), "arrow"),
        (ArrowPayloadSerializer, {"not": "columnar"}, "msgpack"),
    ]
    for cls, value, fmt in cases:
        serializer = cls(base_url=str(tmp_path), inline_max_bytes=inline_max_bytes)
        blob = serializer.dumps(value)
        ref = PayloadRef.model_validate_json(blob)
        assert ref.format == fmt and ref.is_inline is bool(inline_max_bytes)
        blob.decode("ascii")  # plain ASCII JSON
        # Exactly what Prefect does with it: embed in a JSON result record and read it back.
        record = ResultRecord(metadata=ResultRecordMetadata(serializer=serializer), result=value)
        text = record.serialize()
        json.loads(text)
        back = ResultRecord.deserialize(text).result
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(back, value)
        elif isinstance(value, pa.Table):
            assert back.equals(value)
        else:
            assert back == value


def test_loads_of_garbage_is_a_typed_error() -> None:
    with pytest.raises(PayloadCorruptError, match="dspex-msgpack result is not a payload reference"):
        MsgpackPayloadSerializer().loads(b"\x80\x04garbage")


@pytest.mark.integration
def test_a_prefect_task_persists_and_reloads_its_result(tmp_path: Path) -> None:
    from prefect import flow, task

    storage = tmp_path / "results"  # a Path: Prefect makes it a LocalFileSystem block itself

    @task(result_serializer="dspex-msgpack", persist_result=True, result_storage=storage)
    def make_rows(n: int) -> list[dict]:
        return [{"i": i, "text": f"row {i}", "tags": ["x"] * (i % 3)} for i in range(n)]

    @task(result_serializer="dspex-arrow", persist_result=True, result_storage=storage)
    def make_embeddings(n: int) -> np.ndarray:
        return np.arange(n * 4, dtype=np.float32).reshape(n, 4)

    @flow
    def pipeline() -> tuple:
        rows_state = make_rows(5000, return_state=True)
        emb_state = make_embeddings(3000, return_state=True)
        return rows_state, emb_state

    rows_state, emb_state = pipeline()
    # Reading the persisted results back goes through storage and our serializers' loads.
    rows = rows_state.result()
    assert rows[4999] == {"i": 4999, "text": "row 4999", "tags": ["x"]}
    np.testing.assert_array_equal(emb_state.result(), np.arange(12000, dtype=np.float32).reshape(3000, 4))
    files = [p for p in (tmp_path / "results").rglob("*") if p.is_file()]
    assert files, "Prefect persisted no result file"
    for path in files:
        record = json.loads(path.read_text(encoding="utf-8"))
        assert record["metadata"]["serializer"]["type"] in {"dspex-msgpack", "dspex-arrow"}
        ref = PayloadRef.model_validate_json(record["result"])
        assert not ref.is_inline  # large results go by reference, not base64 into Prefect's file
