"""``dspex registry stats``: learned figures per module and pool, as a table or JSON."""

import json

from typer.testing import CliRunner

import registry
from deployments.cli import app


def test_stats_show_learned_estimates_per_pool_and_failure_rate():
    for ms in (100.0, 120.0, 140.0):
        registry.record_duration("dspy.Predict", ms, pool="general")
    registry.record_duration("dspy.Predict", 0.0, pool="general", success=False)

    result = CliRunner().invoke(app, ["registry", "stats", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["module"]: r for r in json.loads(result.output)}
    assert set(rows) == {"dspy.Predict"}  # only modules a run has used
    predict = rows["dspy.Predict"]
    assert predict["calls"] == 4 and predict["failures"] == 1 and predict["failure_rate"] == 0.25
    assert predict["p50_ms"] == 120.0
    general = predict["estimates"]["general"]
    assert general["source"] == "learned" and general["samples"] == 3 and 100 <= general["ms"] <= 140
    assert predict["estimates"]["gpu"]["source"] == "static"

    table = CliRunner().invoke(app, ["registry", "stats"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "dspy.Predict" in table.output and "L(3)" in table.output


def test_stats_before_any_run_say_so():
    result = CliRunner().invoke(app, ["registry", "stats"])
    assert result.exit_code == 0 and "no module has been used yet" in result.output
    everything = json.loads(CliRunner().invoke(app, ["registry", "stats", "--all", "--json"]).output)
    assert any(r["module"] == "dspy.ChainOfThought" and r["calls"] == 0 for r in everything)
