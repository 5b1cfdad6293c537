"""``dspex run --stream``: JSONL rows on stdout as they complete, the summary on stderr."""

import json

import pytest
from typer.testing import CliRunner

from deployments.cli import app
from flows.engine.pools import shutdown_local_pools

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _fresh_pools():
    yield
    shutdown_local_pools()


def test_run_stream_writes_every_row_once_as_jsonl(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "question, context -> answer"}]}
        )
    )
    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"Where is box {i}?", "context": f"Box {i} is in room {i}."}) + "\n"
            for i in range(30)
        )
    )
    result = CliRunner().invoke(app, ["run", "--stream", str(spec), str(data)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(r["_row"] for r in rows) == list(range(30))
    assert all(r["answer"] for r in rows)
    assert "30 rows in, 30 completed, 0 failed" in result.stderr


def test_run_stream_reports_bad_input_on_stderr(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps({"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]})
    )
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"nope": 1}) + "\n")
    result = CliRunner().invoke(app, ["run", "--stream", str(spec), str(data)])
    assert result.exit_code == 2
    assert result.stdout == "" and "InputValidationError" in result.stderr
