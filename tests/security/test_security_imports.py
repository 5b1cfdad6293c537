"""Item 7 of issue 13: nothing a spec, a registry record or the CLI names is imported or run unless it
is a ``dspy.Module`` in DSPy or in a package the operator trusts (``DSPEX_TRUSTED_IMPORT_ROOTS``).

The original failure: ``dspex registry register subprocess:Popen`` succeeded, and a step
``{"module": "subprocess:Popen", "options": {"args": ["touch", "PWNED"]}}`` created the file.
"""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

import registry
from deployments.cli import app
from dspex.exceptions import InvalidModuleInfoError, PipelineSpecError, UntrustedImportError
from dspex.imports import check_import_path, is_import_path, load_attribute, trusted_roots
from flows.engine.spec import ModuleStep, PipelineSpec
from tasks.callables import resolve_callable
from tasks.modules import build_module, program_class


@pytest.mark.parametrize(
    "path", ["subprocess:Popen", "os:system", "builtins:eval", "importlib:import_module"]
)
def test_cli_register_refuses_standard_library_paths(path):
    result = CliRunner().invoke(app, ["registry", "register", path])
    assert result.exit_code == 1
    assert "standard library" in result.output or "interpreter hook" in result.output
    assert path not in registry.default_registry()


@pytest.mark.parametrize("path", ["subprocess:Popen", "os:system", "builtins:eval"])
def test_registry_records_never_point_into_the_standard_library(path):
    with pytest.raises(InvalidModuleInfoError, match="refused"):
        registry.default_registry().register_user_module(path)
    # not even as the import path behind an innocent-looking name
    with pytest.raises(InvalidModuleInfoError, match="refused"):
        registry.default_registry().register_module(
            {"name": "dspy.Innocent", "category": "custom", "metadata": {"import_path": path}}
        )


def test_spec_naming_popen_is_rejected_before_anything_runs(tmp_path):
    marker = tmp_path / "PWNED"
    with pytest.raises((PipelineSpecError, ValueError)):
        PipelineSpec.model_validate(
            {
                "name": "attack",
                "steps": [{"module": "subprocess:Popen", "options": {"args": ["touch", str(marker)]}}],
            }
        )
    assert not marker.exists()


def test_user_program_outside_trusted_roots_is_not_even_imported():
    registry.register_user_module("fixtures_pkg.hostile:Echo")
    sys.modules.pop("fixtures_pkg.hostile", None)
    step = ModuleStep.model_validate(
        {"module": "fixtures_pkg.hostile:Echo", "signature": "question -> answer"}
    )
    with pytest.raises(UntrustedImportError, match="DSPEX_TRUSTED_IMPORT_ROOTS"):
        build_module(step)
    assert "fixtures_pkg.hostile" not in sys.modules


def test_trusted_root_still_only_instantiates_dspy_modules(monkeypatch, tmp_path):
    monkeypatch.setenv("DSPEX_TRUSTED_IMPORT_ROOTS", '["fixtures_pkg"]')
    marker = tmp_path / "PWNED"
    for name in ("fixtures_pkg.hostile:Dropper", "fixtures_pkg.hostile:Popen"):
        registry.register_user_module(name)
        step = ModuleStep.model_validate({"module": name, "options": {"path": str(marker)}})
        with pytest.raises(UntrustedImportError, match="not a dspy.Module"):
            build_module(step)
    assert not marker.exists()
    registry.register_user_module("fixtures_pkg.hostile:Echo")
    assert program_class("fixtures_pkg.hostile:Echo").__name__ == "Echo"


def test_standard_library_is_never_trusted_even_when_listed(monkeypatch):
    monkeypatch.setenv("DSPEX_TRUSTED_IMPORT_ROOTS", '["os", "my_project"]')
    with pytest.raises(UntrustedImportError, match="'os'.*standard library"):
        trusted_roots()
    with pytest.raises(UntrustedImportError):
        resolve_callable("os:system")
    with pytest.raises(UntrustedImportError, match="standard library"):
        check_import_path("subprocess:run", also_allowed=["subprocess"])


@pytest.mark.parametrize(
    "text", ["pkg.mod:_private", "pkg.mod:Cls.__init__", "pkg.mod:x.__class__", "pkg:class", "pkg", "a.b:"]
)
def test_one_import_path_grammar_refuses_private_and_malformed_paths(text):
    assert not is_import_path(text)
    assert not registry.models.is_import_path(text)


def test_load_attribute_checks_before_importing(monkeypatch):
    monkeypatch.setenv("DSPEX_TRUSTED_IMPORT_ROOTS", '["fixtures_pkg"]')
    sys.modules.pop("fixtures_pkg.hostile", None)
    with pytest.raises(UntrustedImportError):
        load_attribute("unknown_root.mod:Thing")
    assert load_attribute("fixtures_pkg.hostile:Echo").__name__ == "Echo"
