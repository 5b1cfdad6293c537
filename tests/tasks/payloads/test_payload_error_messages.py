"""Issue 13 item 14: errors a user can act on.

Original failures: ``run_pipeline(spec, data=json.dumps(ref))`` failed with ``unknown dataset file
type '975629z", ...'`` although documented; a JSONL whose column changes type said ``Expected bytes,
got a 'int' object`` with no column or line; ``http://127.0.0.1:1/x.jsonl`` said ``no payload stored
here`` instead of connection refused.
"""

from __future__ import annotations

import json

import pytest

from dspex.exceptions import PayloadError, PayloadFormatError, PayloadNotFoundError
from flows.pipeline import load_rows
from tasks.payloads import Dataset, write_payload


def test_a_refs_json_is_data_not_a_file_name():
    ref = write_payload([{"question": f"q{i}"} for i in range(3)])
    assert load_rows(json.dumps(ref.model_dump(mode="json"))) == [{"question": f"q{i}"} for i in range(3)]
    assert load_rows(ref.model_dump_json()) == [{"question": f"q{i}"} for i in range(3)]


def test_jsonl_column_changing_type_names_the_column_and_line(tmp_path):
    path = tmp_path / "ids.jsonl"
    path.write_text('{"id": "a1", "q": "x"}\n\n{"id": "a2", "q": "y"}\n{"id": 3, "q": "z"}\n')
    with pytest.raises(PayloadFormatError) as caught:
        Dataset.from_path(str(path))
    message = str(caught.value)
    assert "line 4" in message and "'id'" in message and "number here, string" in message
    assert "ids.jsonl" in message


def test_rows_changing_type_name_the_row():
    with pytest.raises(PayloadFormatError, match=r"row 1: column 'tags' changes type: string here, list"):
        Dataset.from_rows([{"tags": ["a"]}, {"tags": "b"}])
    assert len(Dataset.from_rows([{"n": 1}, {"n": 2.5}, {"n": None}])) == 3  # numbers mix, nulls fit


def test_a_refused_connection_is_not_reported_as_a_missing_file(monkeypatch):
    monkeypatch.setenv("DSPEX_DATA_ROOTS", json.dumps(["http://127.0.0.1:1/"]))
    with pytest.raises(PayloadError) as caught:
        Dataset.from_path("http://127.0.0.1:1/x.jsonl")
    assert not isinstance(caught.value, PayloadNotFoundError)
    assert "cannot reach the server" in str(caught.value) and "127.0.0.1:1" in str(caught.value)
