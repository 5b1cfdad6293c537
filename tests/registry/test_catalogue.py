import pytest

from registry.catalogue import CORE_MODULE_NAMES, core_modules
from registry.models import PoolType

# The seed's table, verbatim (its :neural pool is our gpu pool).
SEED = [
    ("dspy.Predict", "prediction", ("basic_generation", "structured_output"), "general", 1000, True),
    (
        "dspy.ChainOfThought",
        "reasoning",
        ("reasoning", "step_by_step", "explanation"),
        "general",
        3000,
        False,
    ),
    ("dspy.ReAct", "reasoning", ("reasoning", "tool_use", "iterative"), "general", 5000, False),
    (
        "dspy.ProgramOfThought",
        "reasoning",
        ("complex_reasoning", "code_generation"),
        "optimizer",
        10000,
        False,
    ),
    (
        "dspy.MIPROv2",
        "optimization",
        ("hyperparameter_optimization", "prompt_optimization"),
        "optimizer",
        300000,
        False,
    ),
    ("dspy.ColBERTv2", "retrieval", ("semantic_search", "embeddings"), "gpu", 500, False),
]


def test_core_catalogue_order_and_names():
    assert tuple(m.name for m in core_modules()) == CORE_MODULE_NAMES == tuple(row[0] for row in SEED)


@pytest.mark.parametrize(("name", "category", "capabilities", "pool", "ms", "native"), SEED)
def test_core_entry_has_the_seeds_exact_values(name, category, capabilities, pool, ms, native):
    info = {m.name: m for m in core_modules()}[name]
    assert info.category.value == category
    assert info.capabilities == capabilities
    assert info.pool_type.value == pool
    assert info.estimated_duration_ms == ms
    assert info.native_available is native
    assert info.metadata.source == "core"
    assert info.metadata.import_path and info.examples


def test_core_requirements_follow_the_seed():
    by_name = {m.name: m for m in core_modules()}
    assert by_name["dspy.ColBERTv2"].requirements.gpu is True
    assert by_name["dspy.ColBERTv2"].pool_type is PoolType.GPU
    assert by_name["dspy.MIPROv2"].requirements.compute == "very_high"
    assert by_name["dspy.Predict"].requirements.memory == "low"
    assert not any(m.requirements.gpu for m in core_modules() if m.name != "dspy.ColBERTv2")


def test_core_import_paths_resolve_to_the_real_classes():
    import importlib

    import dspy

    for info in core_modules():
        module, _, attribute = info.metadata.import_path.partition(":")
        assert getattr(importlib.import_module(module), attribute) is getattr(dspy, info.name.split(".")[1])
