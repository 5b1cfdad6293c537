import json

import pytest
from typer.testing import CliRunner

from deployments.cli import app

runner = CliRunner()


def test_settings_prints_effective_values_with_secrets_masked(monkeypatch):
    monkeypatch.setenv("DSPEX_LM_API_KEY", "sk-do-not-print")
    monkeypatch.setenv("DSPEX_POOL_GPU_CAPACITY", "1")
    result = runner.invoke(app, ["settings", "--json"])
    assert result.exit_code == 0, result.output
    values = json.loads(result.output)
    assert values["pool_gpu_capacity"] == 1
    assert values["lm_api_key"] == "**********"
    assert "sk-do-not-print" not in runner.invoke(app, ["settings"]).output


@pytest.mark.integration
def test_run_a_spec_file_over_a_jsonl_dataset(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: cli\nsteps:\n  - module: dspy.Predict\n    signature: 'context, question -> answer'\n",
        encoding="utf-8",
    )
    data = tmp_path / "data.jsonl"
    data.write_text(
        "\n".join(
            json.dumps({"question": f"Where is box {i}?", "context": f"Box {i} is in Paris."})
            for i in range(3)
        ),
        encoding="utf-8",
    )
    result = runner.invoke(app, ["run", str(spec), str(data)])
    assert result.exit_code == 0, result.output
    assert "3 rows in, 3 completed, 0 failed" in result.output


def test_run_rejects_a_bad_spec_with_the_step_name(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps({"name": "x", "steps": [{"name": "s1", "module": "dspy.Nope", "signature": "a -> b"}]})
    )
    result = runner.invoke(app, ["run", str(spec), str(tmp_path / "d.jsonl")])
    assert result.exit_code == 2
    assert "step 's1'" in result.output and "Traceback" not in result.output
