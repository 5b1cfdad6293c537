"""Issue 13 items 1, 11 and 14 through the real ``dspex`` CLI: the output is always a file a user can
open (``--output`` by extension, a default path otherwise, ``dspex show`` for any payload), and every
user string prints as written (no rich markup), naming the file at fault.

Original failures: ``dspex run good.yaml q.jsonl`` printed ``output: inline:xxh3_128:...`` (nothing a
user could open); ``dspex run good.yaml /path/[x]/nope.jsonl`` crashed with rich's ``MarkupError`` and
a relative ``[x]/nope.jsonl`` lost its ``[x]``; ``dspex run /etc/passwd data.jsonl`` printed a JSON
error without the file name; signature errors lost ``list[int``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from deployments.cli import app
from tasks.payloads import read_rows

runner = CliRunner()

SPEC = "name: cli-out\nsteps:\n  - module: dspy.Predict\n    signature: 'context, question -> answer'\n"


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # long paths on one line
    spec = tmp_path / "good.yaml"
    spec.write_text(SPEC, encoding="utf-8")
    data = tmp_path / "q.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"Where is box {i}?", "context": f"Box {i} is in Paris."}) + "\n"
            for i in range(30)
        ),
        encoding="utf-8",
    )
    return spec, data


def _squash(text: str) -> str:
    # The CLI's console wraps at 120 columns; compare without whitespace.
    return "".join(text.split())


def _printed_output_path(text: str) -> str:
    match = re.search(r"^output: (\S+) \(payload (\S+)\)$", text, re.MULTILINE)
    assert match, text
    return match[1]


@pytest.mark.integration
def test_run_writes_a_file_and_prints_where_and_show_reads_it(files, tmp_path):
    spec, data = files
    result = runner.invoke(app, ["run", str(spec), str(data)])
    assert result.exit_code == 0, result.output
    assert "inline:" not in result.output
    written = _printed_output_path(result.output)
    assert Path(written).is_file() and written.endswith(".jsonl")
    rows = read_rows(written)  # the path the command printed
    assert len(rows) == 30 and all(r["answer"] for r in rows)
    shown = runner.invoke(app, ["show", written, "--limit", "3"])
    assert shown.exit_code == 0, shown.output
    assert "30 rows" in shown.output and "27 more rows" in shown.output
    exported = tmp_path / "again.csv"
    assert runner.invoke(app, ["show", written, "--output", str(exported)]).exit_code == 0
    assert pa_csv.read_csv(exported).num_rows == 30


@pytest.mark.integration
@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_run_output_option_writes_the_format_its_extension_names(files, tmp_path, suffix):
    spec, data = files
    target = tmp_path / "out" / f"answers{suffix}"
    result = runner.invoke(app, ["run", str(spec), str(data), "--output", str(target)])
    assert result.exit_code == 0, result.output
    assert _printed_output_path(result.output) == str(target)
    if suffix == ".parquet":
        assert pq.read_table(target).num_rows == 30
    assert [r["question"] for r in read_rows(str(target))] == [f"Where is box {i}?" for i in range(30)]


def test_show_reads_a_payload_ref_json_and_a_payload_file(tmp_path):
    from tasks.payloads import write_payload

    ref = write_payload([{"q": "[bold]not markup[/bold]", "n": i} for i in range(50)], inline_max_bytes=0)
    assert ref.is_stored
    for location in (ref.model_dump_json(), ref.uri):
        result = runner.invoke(app, ["show", location, "--jsonl", "--limit", "2"])
        assert result.exit_code == 0, result.output
        assert [json.loads(line)["n"] for line in result.output.splitlines()] == [0, 1]
    table = runner.invoke(app, ["show", ref.uri, "--limit", "1"])
    assert "[bold]not markup[/bold]" in table.output


@pytest.mark.parametrize("relative", [False, True])
def test_missing_data_path_with_brackets_prints_as_written(files, tmp_path, monkeypatch, relative):
    spec, _data = files
    monkeypatch.chdir(tmp_path)
    missing = "[x]/nope.jsonl" if relative else f"{tmp_path}/[x]/nope.jsonl"
    result = runner.invoke(app, ["run", str(spec), missing])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "[x]/nope.jsonl" in _squash(result.output)


def test_signature_error_keeps_its_brackets(tmp_path):
    spec = tmp_path / "bad.json"
    spec.write_text(
        json.dumps({"name": "b", "steps": [{"module": "dspy.Predict", "signature": "q: list[int -> a"}]})
    )
    result = runner.invoke(app, ["run", str(spec), str(tmp_path / "d.jsonl")])
    assert result.exit_code == 2
    assert "list[int" in _squash(result.output)


@pytest.mark.parametrize(
    ("content", "name", "expected"),
    [
        ("root:x:0:0:root:/root:/bin/bash\n", "passwd", "is not valid JSON"),
        ("\xff\xfe binary", "blob.json", "spec file"),
        ("- just\n- a list\n", "list.yaml", "must hold a mapping"),
        ("name: x\nsteps: 3\n", "steps.yaml", "not a valid pipeline spec"),
    ],
)
def test_bad_spec_file_errors_name_the_file(tmp_path, content, name, expected):
    spec = tmp_path / name
    spec.write_bytes(content.encode("latin-1"))
    result = runner.invoke(app, ["run", str(spec), str(tmp_path / "d.jsonl")])
    assert result.exit_code == 2, result.output
    assert name in _squash(result.output) and _squash(expected) in _squash(result.output)
    assert "Traceback" not in result.output


def test_registry_tables_print_users_text_as_written(monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    added = runner.invoke(
        app, ["registry", "register", "acme.jobs:Tagger", "--description", "tags [bold]spam[/bold] [x]"]
    )
    assert added.exit_code == 0, added.output
    shown = runner.invoke(app, ["registry", "show", "acme.jobs:Tagger"])
    assert shown.exit_code == 0, shown.output
    assert "tags [bold]spam[/bold] [x]" in shown.output
