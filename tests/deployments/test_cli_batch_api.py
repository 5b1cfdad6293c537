"""``dspex run --batch-api`` and ``dspex estimate``'s batch figures (issue 21), against the loopback server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.openai_server import openai_server
from typer.testing import CliRunner

from deployments.cli import app
from flows.engine.pools import shutdown_local_pools

pytestmark = pytest.mark.integration
runner = CliRunner()

SPEC = "name: cli-batch\nsteps:\n  - module: dspy.ChainOfThought\n    signature: 'question -> answer'\n"


@pytest.fixture
def provider(monkeypatch):
    with openai_server() as server:
        monkeypatch.setenv("DSPEX_LM_MODEL", "openai/gpt-4o-mini")
        monkeypatch.setenv("DSPEX_LM_API_BASE", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-cli-secret")
        monkeypatch.setenv("DSPEX_LM_CACHE", "false")
        monkeypatch.setenv("DSPEX_LM_BATCH_POLL_SECONDS", "0.05")
        monkeypatch.setenv("DSPEX_SHARED_SERVER", "false")
        yield server
    shutdown_local_pools()


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC, encoding="utf-8")
    data = tmp_path / "q.jsonl"
    data.write_text(
        "".join(json.dumps({"question": f"Where is box {i}? Box {i} is in Paris."}) + "\n" for i in range(8)),
        encoding="utf-8",
    )
    return spec, data


def test_run_with_batch_api_sends_one_batch_and_no_online_request(provider, files, tmp_path):
    spec, data = files
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["run", str(spec), str(data), "--batch-api", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert len(provider.batch.batches) == 1 and provider.chat_requests == []
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 8 and all(r["answer"] and "_error" not in r for r in rows)
    assert "8 completed" in result.output and "sk-cli-secret" not in result.output


def test_estimate_shows_the_batch_cost_next_to_the_online_cost(provider, files):
    spec, data = files
    result = runner.invoke(app, ["estimate", str(spec), str(data), "--sample-rows", "2", "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    (step,) = found["steps"]
    assert found["cost_usd"] > 0 and found["batch_cost_usd"] == pytest.approx(found["cost_usd"] / 2)
    assert step["batch_wait_s"] is None and found["batch_window"] == "24h"
    table = runner.invoke(app, ["estimate", str(spec), str(data), "--sample-rows", "0"])
    assert table.exit_code == 0 and "batch API" in table.output, table.output


def test_batch_waits_are_learned_apart_from_the_online_durations(provider, files, tmp_path):
    spec, data = files
    assert runner.invoke(app, ["run", str(spec), str(data), "--batch-api"]).exit_code == 0
    result = runner.invoke(app, ["estimate", str(spec), str(data), "--sample-rows", "0", "--json"])
    assert result.exit_code == 0, result.output
    (step,) = json.loads(result.stdout)["steps"]
    assert step["batch_wait_s"] is not None and step["batch_wait_s"] >= 0  # learned from the batch run
    assert step["duration_source"] == "static"  # no online latency was learned from it


def test_stream_with_batch_api_streams_rows_once_the_batch_answered(provider, files):
    spec, data = files
    result = runner.invoke(app, ["run", str(spec), str(data), "--stream", "--batch-api"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["_row"] for r in rows) == list(range(8))
    assert all(r["answer"] and "_error" not in r for r in rows)
    assert len(provider.batch.batches) == 1 and provider.chat_requests == []  # one batch, none online
