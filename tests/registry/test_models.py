import pydantic
import pytest

from dspex.exceptions import InvalidModuleInfoError
from registry.models import (
    Category,
    ModuleInfo,
    PoolType,
    expand_capabilities,
    is_dotted_name,
    is_import_path,
    parse_module_info,
)


def _record(**overrides):
    data = {"name": "pkg.mod:Thing", "category": "custom", "estimated_duration_ms": 10}
    data.update(overrides)
    return data


def test_a_valid_record_gets_defaults_and_is_frozen():
    info = parse_module_info(_record())
    assert info.pool_type is PoolType.GENERAL
    assert info.category is Category.CUSTOM
    assert info.requirements.gpu is False and info.metadata.source == "user"
    with pytest.raises(pydantic.ValidationError):
        info.name = "other"  # type: ignore[misc]


def test_the_seeds_neural_pool_means_gpu():
    assert parse_module_info(_record(pool_type="neural")).pool_type is PoolType.GPU


def test_capabilities_are_normalised_and_deduplicated():
    info = parse_module_info(_record(capabilities=["Tool_Use", " reasoning", "tool_use"]))
    assert info.capabilities == ("tool_use", "reasoning")


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"pool_type": "tpu"}, "pool_type"),
        ({"estimated_duration_ms": -1}, "estimated_duration_ms"),
        ({"category": "magic"}, "category"),
        ({"name": "not a name"}, "name"),
        ({"name": "pkg.class:X"}, "name"),  # 'class' is a keyword
        ({"capabilities": ["two words"]}, "capabilities"),
        ({"capabilities": [""]}, "capabilities"),
        ({"metadata": {"import_path": "no_colon"}}, "metadata.import_path"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_malformed_records_raise_a_typed_error_naming_the_field(overrides, fragment):
    with pytest.raises(InvalidModuleInfoError) as caught:
        parse_module_info(_record(**overrides), where="test record")
    message = str(caught.value)
    assert fragment in message and "test record" in message
    assert "valid fields: name, category" in message
    assert isinstance(caught.value, ValueError)


def test_parse_module_info_returns_a_model_unchanged():
    info = ModuleInfo(name="dspy.Predict", category=Category.PREDICTION, estimated_duration_ms=1)
    assert parse_module_info(info) is info


@pytest.mark.parametrize(
    ("text", "dotted", "import_path"),
    [
        ("dspy.Predict", True, False),
        ("pkg.mod:Class", False, True),
        ("pkg:Outer.Inner", False, True),
        ("pkg.mod:", False, False),
        (":Class", False, False),
        ("pkg mod:Class", False, False),
        ("1pkg:Class", False, False),
        ("", False, False),
    ],
)
def test_name_forms(text, dotted, import_path):
    assert is_dotted_name(text) is dotted
    assert is_import_path(text) is import_path


def test_specialised_capabilities_imply_general_ones():
    assert expand_capabilities(("complex_reasoning", "code_generation")) == (
        "complex_reasoning",
        "code_generation",
        "reasoning",
    )
    assert expand_capabilities(("reasoning",)) == ("reasoning",)
