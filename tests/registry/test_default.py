import subprocess
import sys

import pytest

import registry
from dspex.exceptions import RegistryPersistenceError, UnknownModuleError
from registry import ModuleRegistry


@pytest.fixture(autouse=True)
def _fresh_default():
    registry.reset_default_registry()
    yield
    registry.reset_default_registry()


def test_importing_the_package_does_no_work():
    code = (
        "import sys, registry; assert 'dspy' not in sys.modules and 'prefect' not in sys.modules; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_the_default_registry_is_lazy_and_shared():
    assert registry.default._default is None
    first = registry.default_registry()
    assert registry.default_registry() is first
    assert "dspy.GEPA" in first  # discovery ran
    registry.reset_default_registry()
    assert registry.default_registry() is not first


def test_the_module_level_api_uses_the_default_registry(monkeypatch, tmp_path):
    monkeypatch.setenv("DSPEX_REGISTRY_PATH", str(tmp_path / "reg.json"))
    assert registry.get_module("dspy.ChainOfThought").capabilities == (
        "reasoning",
        "step_by_step",
        "explanation",
    )
    assert registry.find_by_capability("reasoning")[:3] == [
        "dspy.ChainOfThought",
        "dspy.ReAct",
        "dspy.ProgramOfThought",
    ]
    assert "dspy.MIPROv2" in registry.find_by_category("optimization")
    assert registry.get_pool_type("dspy.MIPROv2") == "optimizer"
    assert registry.has_native("dspy.Predict") and not registry.has_native("dspy.Nope")
    assert registry.estimate_duration("dspy.ChainOfThought", "large") == 6000
    rec = registry.routing_recommendation("dspy.ColBERTv2", {"input_size": 5000, "optimize_latency": False})
    assert (rec.pool_type, rec.timeout_ms, rec.prefer_native) == ("gpu", 900, False)
    registry.register_user_module("acme.jobs:Classify", capabilities=["classification"])
    registry.register_module({"name": "acme.jobs:Tag", "category": "custom", "estimated_duration_ms": 3})
    assert registry.find_by_capability("classification") == ["acme.jobs:Classify"]
    for _ in range(3):
        registry.record_duration("acme.jobs:Classify", 7.0, pool="general")
    assert registry.estimate("acme.jobs:Classify").source == "learned"
    assert registry.usage_stats("acme.jobs:Classify").calls == 3
    assert any(m.name == "acme.jobs:Tag" for m in registry.list_modules())
    with pytest.raises(UnknownModuleError):
        registry.get_module("acme.jobs:Missing")
    assert registry.save() == (tmp_path / "reg.json").resolve()
    registry.load()
    assert registry.usage_stats("acme.jobs:Classify").calls == 3


def test_the_default_registry_reloads_its_file(monkeypatch, tmp_path):
    path = tmp_path / "reg.json"
    monkeypatch.setenv("DSPEX_REGISTRY_PATH", str(path))
    saved = ModuleRegistry(discover=False)
    saved.register_user_module("acme.jobs:Persisted")
    saved.record_duration("dspy.Predict", 9.0)
    saved.save()
    assert "acme.jobs:Persisted" in registry.default_registry()
    assert registry.usage_stats("dspy.Predict").calls == 1


def test_a_corrupt_file_stops_the_default_registry(monkeypatch, tmp_path):
    path = tmp_path / "reg.json"
    path.write_text("{truncated")
    monkeypatch.setenv("DSPEX_REGISTRY_PATH", str(path))
    with pytest.raises(RegistryPersistenceError, match="corrupt"):
        registry.default_registry()
    assert registry.default._default is None  # not half-built: the next call fails the same way
    assert list(tmp_path.glob("reg.json.corrupt-*"))
