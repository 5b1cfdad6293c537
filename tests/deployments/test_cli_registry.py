import pytest
from typer.testing import CliRunner

import registry
from deployments.cli import app

runner = CliRunner()
WIDE = {"COLUMNS": "200"}


@pytest.fixture(autouse=True)
def _fresh_default():
    registry.reset_default_registry()
    yield
    registry.reset_default_registry()


def _run(*args):
    return runner.invoke(app, ["registry", *args], env=WIDE)


def test_list_shows_every_module():
    result = _run("list")
    assert result.exit_code == 0, result.output
    for name in ("dspy.Predict", "dspy.ColBERTv2", "dspy.GEPA", "dspy.Embedder"):
        assert name in result.output
    assert f"({len(registry.default_registry())} modules)" in result.output


def test_list_filters_by_source():
    result = _run("list", "--source", "core")
    assert result.exit_code == 0 and "(6 modules)" in result.output and "dspy.GEPA" not in result.output
    bad = _run("list", "--source", "elsewhere")
    assert bad.exit_code == 2 and "valid sources: core, discovered, user" in bad.output


def test_show_prints_the_record_estimates_and_usage():
    registry.record_duration("dspy.ColBERTv2", 42.0)
    result = _run("show", "dspy.ColBERTv2")
    assert result.exit_code == 0, result.output
    for text in (
        "retrieval",
        "gpu",
        "500 ms",
        "1,000 ms (static, 1 samples)",
        "1 calls, 0 failures",
        "dspy.dsp.colbertv2:ColBERTv2",
    ):
        assert text in result.output


def test_show_an_unknown_module_fails_with_suggestions():
    result = _run("show", "dspy.ChainOfThougt")
    assert result.exit_code == 1
    assert "unknown module 'dspy.ChainOfThougt'; did you mean 'dspy.ChainOfThought'" in result.output


def test_find_by_capability_and_category():
    result = _run("find", "--capability", "reasoning")
    assert result.exit_code == 0
    assert all(n in result.output for n in ("dspy.ChainOfThought", "dspy.ReAct", "dspy.ProgramOfThought"))
    both = _run("find", "--capability", "reasoning", "--category", "optimization")
    assert (
        both.exit_code == 0
        and "no module matches capability 'reasoning' and category 'optimization'" in both.output
    )
    optimizers = _run("find", "--category", "optimization")
    assert "dspy.MIPROv2" in optimizers.output and "dspy.Predict" not in optimizers.output


def test_find_needs_a_criterion_and_a_valid_category():
    assert _run("find").exit_code == 2
    bad = _run("find", "--category", "magic")
    assert bad.exit_code == 1 and "valid categories" in bad.output


def test_register_saves_a_user_module_for_later_processes(monkeypatch, tmp_path):
    path = tmp_path / "reg.json"
    monkeypatch.setenv("DSPEX_REGISTRY_PATH", str(path))
    result = _run(
        "register", "acme.pipelines:Summarise", "--capability", "summarisation", "-c", "short_output",
        "--pool", "gpu", "--duration-ms", "250", "--description", "Summarises a document.",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "acme.pipelines:Summarise" in result.output and path.exists()
    registry.reset_default_registry()  # a new process: the default registry reloads the file
    info = registry.get_module("acme.pipelines:Summarise")
    assert info.pool_type == "gpu" and info.capabilities == ("summarisation", "short_output")
    assert info.metadata.source == "user" and info.metadata.description == "Summarises a document."
    shown = _run("show", "acme.pipelines:Summarise")
    assert "250 ms" in shown.output and "user" in shown.output


def test_register_rejects_a_bad_import_path_or_pool(monkeypatch, tmp_path):
    monkeypatch.setenv("DSPEX_REGISTRY_PATH", str(tmp_path / "reg.json"))
    bad_path = _run("register", "not-an-import-path")
    assert bad_path.exit_code == 1 and "pkg.mod:Class" in bad_path.output
    bad_pool = _run("register", "acme.x:Y", "--pool", "tpu")
    assert bad_pool.exit_code == 1 and "pool_type" in bad_pool.output
    assert not (tmp_path / "reg.json").exists()
