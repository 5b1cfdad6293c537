"""Issue 25 (minor): ``dspex run``'s closing lines name the run's own artifact keys.

The original failure: every run ended with ``(key 'duration-estimates-rag-qa', 'rag-qa-scores')``,
the demo's keys, whatever the pipeline was called; the duration table's title said
``'duration-estimates-<pipeline>'``.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from deployments.cli import app
from flows.telemetry.artifacts import details_key, duration_key, summary_key


@pytest.mark.integration
def test_run_names_the_artifact_keys_of_its_own_pipeline(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: Invoice_Triage\nsteps:\n  - module: dspy.Predict\n    signature: 'question -> answer'\n"
    )
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"question": "Where is box 1? Box 1 is in Paris."}) + "\n")
    result = CliRunner().invoke(app, ["run", str(spec), str(data)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "rag-qa" not in text and "<pipeline>" not in text
    assert f"artifact '{duration_key('Invoice_Triage')}'" in text  # the table's title
    keys = [duration_key("Invoice_Triage"), details_key("Invoice_Triage"), summary_key("Invoice_Triage")]
    assert ", ".join(f"'{key}'" for key in keys) in text
    assert (
        "'duration-estimates-invoice-triage', 'duration-details-invoice-triage', 'pipeline-summary-invoice-triage'"
        in text
    )
