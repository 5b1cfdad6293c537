import importlib

import pytest

from registry.discovery import PROFILES, discover_modules
from registry.models import Category, PoolType
from registry.store import ModuleRegistry

MODULES = [
    "Predict", "ChainOfThought", "ReAct", "ProgramOfThought", "CodeAct", "MultiChainComparison",
    "BestOfN", "Refine", "Parallel", "KNN",
]  # fmt: skip
OPTIMIZERS = [
    "LabeledFewShot", "BootstrapFewShot", "BootstrapFewShotWithRandomSearch", "MIPROv2", "COPRO", "SIMBA",
    "GEPA", "KNNFewShot", "Ensemble",
]  # fmt: skip


@pytest.fixture(scope="module")
def discovered():
    return {m.name: m for m in discover_modules()}


@pytest.mark.parametrize("name", MODULES + OPTIMIZERS + ["Embeddings", "Retrieve", "Embedder", "ColBERTv2"])
def test_discovery_finds_what_the_issue_lists(discovered, name):
    assert f"dspy.{name}" in discovered


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizers_go_to_the_optimizer_pool(discovered, name):
    info = discovered[f"dspy.{name}"]
    assert info.pool_type is PoolType.OPTIMIZER and info.category is Category.OPTIMIZATION


def test_embedding_and_neural_work_goes_to_gpu(discovered):
    for name in ("dspy.Embedder", "dspy.Embeddings", "dspy.EmbeddingsWithScores", "dspy.KNN"):
        assert discovered[name].pool_type is PoolType.GPU, name
    assert discovered["dspy.Embedder"].category is Category.EMBEDDING
    assert discovered["dspy.Retrieve"].pool_type is PoolType.GENERAL
    assert discovered["dspy.Refine"].category is Category.COMPOSITION


def test_discovered_records_are_python_only_and_name_their_class(discovered):
    for info in discovered.values():
        assert info.metadata.source == "discovered" and info.native_available is False
        module, _, attribute = info.metadata.import_path.partition(":")
        cls = getattr(importlib.import_module(module), attribute)
        assert cls.__name__ == info.name.rsplit(".", 1)[1]


def test_non_modules_are_left_out(discovered):
    for name in ("dspy.Tool", "dspy.LM", "dspy.evaluate.EvaluationResult", "dspy.Example"):
        assert name not in discovered


def test_every_discovered_class_has_a_profile(discovered):
    # A newer dspy adding a class would fall back to its subpackage's default: this flags it.
    assert {name.rsplit(".", 1)[1] for name in discovered} <= set(PROFILES)


def test_deprecation_is_recorded(discovered):
    assert discovered["dspy.CodeAct"].metadata.deprecated is True
    assert discovered["dspy.Predict"].metadata.deprecated is False


def test_core_entries_win_over_discovered_ones(tmp_path):
    registry = ModuleRegistry(path=tmp_path / "r.json")
    assert registry.get_module("dspy.Predict").metadata.source == "core"
    assert registry.get_module("dspy.Predict").native_available is True
    assert registry.get_module("dspy.GEPA").metadata.source == "discovered"
    names = registry.names()
    assert names[:6] == [m for m in names if registry.get_module(m).metadata.source == "core"]
    assert len(names) == len(set(names)) > 30
