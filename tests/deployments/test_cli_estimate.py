"""``dspex estimate`` (issue 12): per-step duration, tokens and cost before a run, learned or sampled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deployments.cli import app

runner = CliRunner()

SPEC = "name: est\nsteps:\n  - module: dspy.Predict\n    signature: 'question -> answer'\n    batch_size: 2\n"


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC, encoding="utf-8")
    data = tmp_path / "q.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"Where is box {i}? Box {i} is in Paris."}) + "\n" for i in range(20)
        ),
        encoding="utf-8",
    )
    return spec, data


def _estimate(*args: str) -> dict:
    result = runner.invoke(app, ["estimate", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # logs of a sample run go to stderr


def test_without_learned_figures_and_no_sampling_usage_is_unknown(files: tuple[Path, Path]) -> None:
    spec, data = files
    found = _estimate(str(spec), str(data), "--sample-rows", "0")
    (step,) = found["steps"]
    assert found["rows"] == 20 and step["rows"] == 20 and step["pool"] == "general"
    assert step["duration_ms"] > 0 and step["duration_source"] == "static"
    assert step["usage_source"] == "unknown" and step["prompt_tokens"] is None and found["cost_usd"] is None


@pytest.mark.integration
def test_a_sample_run_teaches_the_figures_then_they_are_learned(files: tuple[Path, Path]) -> None:
    spec, data = files
    sampled = _estimate(str(spec), str(data), "--sample-rows", "3")
    (step,) = sampled["steps"]
    assert sampled["sampled_rows"] == 3 and step["usage_source"] == "sampled"
    # The offline LM counts words as tokens and bills nothing.
    assert step["prompt_tokens"] > 20 * 10 and step["completion_tokens"] > 0 and step["cost_usd"] == 0.0
    learned = _estimate(str(spec), str(data), "--sample-rows", "0")
    assert learned["steps"][0]["usage_source"].startswith("learned") and learned["sampled_rows"] == 0
    assert learned["steps"][0]["prompt_tokens"] == pytest.approx(step["prompt_tokens"])
    table = runner.invoke(app, ["estimate", str(spec), str(data)], env={"COLUMNS": "400"})
    assert table.exit_code == 0, table.output
    assert "learned" in table.output and "total:" in table.output and "completion tokens" in table.output


def test_a_bad_spec_is_a_clean_error(tmp_path: Path, files: tuple[Path, Path]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsteps: [{module: dspy.Predict}]\n", encoding="utf-8")
    result = runner.invoke(app, ["estimate", str(bad), str(files[1])])
    assert result.exit_code == 2 and "error" in result.output and "Traceback" not in result.output
