"""Dataset: conversions to and from files and DSPy, zero-copy batches, typed errors on bad files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dspy
import pandas as pd
import pyarrow as pa
import pytest

from dspex.exceptions import PayloadCorruptError, PayloadFormatError, PayloadNotFoundError
from tasks.payloads import Dataset, read_payload, read_rows, write_payload

ROWS = [
    {"question": "What is 2+2?", "answer": "4", "score": 1.0},
    {"question": "Capital de la France ?", "answer": "Paris", "score": None},
    {"question": "東京は?", "answer": "首都", "score": 0.5},
]


def test_shape_and_rows() -> None:
    ds = Dataset.from_rows(ROWS)
    assert len(ds) == 3 and ds.columns == ["question", "answer", "score"]
    assert ds.to_rows() == ROWS
    assert "rows=3" in repr(ds)
    assert len(Dataset.from_rows([])) == 0


def test_batches_are_zero_copy_slices() -> None:
    ds = Dataset.from_rows([{"i": i, "s": f"row {i}"} for i in range(10)])
    batches = list(ds.batches(4))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert [r["i"] for b in batches for r in b.to_rows()] == list(range(10))
    # A slice shares the parent's buffers: same data address, only an offset differs.
    parent = ds.table.column("i").chunk(0).buffers()[1]
    child = batches[1].table.column("i").chunk(0).buffers()[1]
    assert child.address == parent.address
    with pytest.raises(ValueError, match=">= 1"):
        list(ds.batches(0))


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_file_round_trips(kind: str, tmp_path: Path, memory_url: str) -> None:
    ds = Dataset.from_rows(ROWS)
    for path in (str(tmp_path / f"data.{kind}"), f"{memory_url}/data.{kind}"):
        getattr(ds, f"to_{kind}")(path)
        back = getattr(Dataset, f"from_{kind}")(path)
        assert back.to_rows() == ROWS


def test_pandas_round_trip() -> None:
    frame = pd.DataFrame(ROWS)
    ds = Dataset.from_pandas(frame)
    pd.testing.assert_frame_equal(ds.to_pandas(), frame)


def test_to_examples_sets_input_keys() -> None:
    examples = Dataset.from_rows(ROWS).to_examples(["question"])
    assert all(isinstance(e, dspy.Example) for e in examples)
    assert examples[0].inputs().toDict() == {"question": "What is 2+2?"}
    assert examples[0].labels().toDict() == {"answer": "4", "score": 1.0}
    with pytest.raises(PayloadFormatError, match="not columns"):
        Dataset.from_rows(ROWS).to_examples(["nope"])
    assert Dataset.from_examples(examples).to_rows() == ROWS


def test_write_and_from_ref(base_url: str) -> None:
    ds = Dataset.from_rows(ROWS)
    ref = ds.write(base_url)
    assert ref.format == "arrow" and ref.kind == "dataset" and ref.rows == 3
    assert read_payload(ref) == ds and Dataset.from_ref(ref) == ds
    assert read_rows(ref) == ROWS
    assert Dataset.from_ref(write_payload(ROWS, base_url)) == ds  # rows stored as MessagePack
    # pandas may pick other Arrow string types, so compare values.
    assert Dataset.from_ref(write_payload(pd.DataFrame(ROWS), base_url)).to_rows() == ROWS
    assert Dataset.from_ref(write_payload(ds.table, base_url)) == ds


def test_jsonl_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3, "b": "trunc', encoding="utf-8")
    with pytest.raises(PayloadCorruptError, match=r"line 4: invalid JSON") as info:
        Dataset.from_jsonl(str(path))
    assert info.value.uri == str(path) and str(path) in str(info.value)
    path.write_text('{"a": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(PayloadFormatError, match="line 2: expected a JSON object"):
        Dataset.from_jsonl(str(path))
    path.write_text('{"a": 1}\n{"a": "text"}\n', encoding="utf-8")
    with pytest.raises(PayloadFormatError, match="change"):
        Dataset.from_jsonl(str(path))
    path.write_bytes(b'{"a": "\xff"}\n')
    with pytest.raises(PayloadCorruptError, match="UTF-8"):
        Dataset.from_jsonl(str(path))


def test_a_deeply_nested_jsonl_row_is_a_typed_error_naming_its_line(tmp_path: Path) -> None:
    path = tmp_path / "deep.jsonl"
    path.write_text('{"question": "ok"}\n{"question": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(PayloadFormatError, match="line 2: JSON nested too deeply"):
        Dataset.from_jsonl(str(path))


def test_csv_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n1,2\n3,4\n5,6,7\n8,9\n", encoding="utf-8")
    with pytest.raises(PayloadCorruptError, match=r"line 4: malformed CSV") as info:
        Dataset.from_csv(str(path))
    assert info.value.uri == str(path)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_non_utf8_bytes_are_refused_with_their_line_in_csv_as_in_jsonl(tmp_path: Path, suffix: str) -> None:
    # Issue 25.6: the CSV was read with every value as "b'ok'" and exit 0; JSONL was refused.
    path = tmp_path / f"latin1{suffix}"
    if suffix == ".csv":
        path.write_bytes(b"question,answer\nok,fine\n\xe9t\xe9,ok\n")
    else:
        path.write_bytes(b'{"question": "ok"}\n{"question": "\xe9t\xe9"}\n')
    with pytest.raises(
        PayloadCorruptError, match=r"line 3: not UTF-8" if suffix == ".csv" else "line 2: not UTF-8"
    ):
        Dataset.from_path(str(path))
    ok = tmp_path / f"fine{suffix}"
    ok.write_text("question\nété\n" if suffix == ".csv" else '{"question": "été"}\n', encoding="utf-8")
    assert Dataset.from_path(str(ok)).to_rows() == [{"question": "été"}]


def test_a_csv_column_asked_for_as_binary_stays_binary(tmp_path: Path) -> None:
    path = tmp_path / "raw.csv"
    path.write_bytes(b"blob\n\xff\xfe\n")
    table = Dataset.from_csv(str(path), column_types={"blob": pa.binary()}).table
    assert table.column("blob").to_pylist() == [b"\xff\xfe"]


def test_dspex_show_refuses_a_latin1_csv_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"question\nok\n\xe9t\xe9\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DSPEX_", "PREFECT_"))}
    env.update(DSPEX_HOME=str(tmp_path / ".dspex"), COLUMNS="200")
    done = subprocess.run(  # noqa: S603 - our own venv's dspex
        [str(Path(sys.executable).parent / "dspex"), "show", str(path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    output = " ".join((done.stdout + done.stderr).split())
    assert "PayloadCorruptError" in output and "line 3: not UTF-8" in output
    assert "b'" not in output


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    for reader in (Dataset.from_jsonl, Dataset.from_csv, Dataset.from_parquet):
        with pytest.raises(PayloadNotFoundError) as info:
            reader(str(tmp_path / "missing"))
        assert str(tmp_path / "missing") in str(info.value)
    Dataset.from_rows(ROWS).to_parquet(str(tmp_path / "ok.parquet"))
    data = (tmp_path / "ok.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(PayloadCorruptError, match="Parquet"):
        Dataset.from_parquet(str(tmp_path / "cut.parquet"))


def test_nested_columns_cannot_go_to_csv(tmp_path: Path) -> None:
    with pytest.raises(PayloadFormatError, match="CSV"):
        Dataset.from_rows([{"a": [1, 2]}]).to_csv(str(tmp_path / "x.csv"))


def test_wraps_only_arrow_tables() -> None:
    assert len(Dataset(pa.record_batch({"a": [1]}))) == 1
    with pytest.raises(PayloadFormatError, match="pyarrow Table"):
        Dataset([{"a": 1}])  # type: ignore[arg-type]
