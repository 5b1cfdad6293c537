"""Pipeline variables: ${name} references, defaults, resolution before execution, typed errors."""

import json

import pytest
from pydantic import ValidationError

from dspex.exceptions import VariableError
from flows.engine.spec import PipelineSpec, resolve_spec
from flows.tuning.variables import Variable, references, substitute

VARS = {
    "k": {"int": [1, 10], "default": 3},
    "temperature": {"float": [0, 1]},
    "reasoner": {"choice": ["dspy.Predict", "dspy.ChainOfThought"], "default": "dspy.ChainOfThought"},
}


def spec_dict(**extra):
    return {
        "name": "vars",
        "variables": VARS,
        "steps": [
            {"name": "r1", "retrieve": "question", "k": "${k}", "output": "ctx1"},
            {"name": "r2", "retrieve": "question", "k": "${k}", "output": "ctx2"},
            {
                "name": "answer",
                "module": "${reasoner}",
                "signature": "ctx1: list[str], ctx2: list[str], question -> answer",
                "instructions": "Read ${k} passages; costs $${dollars}.",
                "options": {"temperature": "${temperature}"},
            },
        ],
        **extra,
    }


def test_defaults_make_the_spec_runnable_and_one_variable_coordinates_several_steps():
    spec = PipelineSpec.model_validate(spec_dict())
    r1, r2, answer = spec.steps
    assert r1.k == r2.k == 3 and answer.module == "dspy.ChainOfThought"
    assert answer.options == {"temperature": 0.0}  # a whole-string reference keeps the value's type
    assert answer.instructions == "Read 3 passages; costs ${dollars}."


def test_resolution_gives_a_concrete_spec_before_execution():
    spec = PipelineSpec.model_validate(spec_dict())
    concrete = resolve_spec(spec, {"k": 7, "reasoner": "dspy.Predict", "temperature": 0.5})
    r1, r2, answer = concrete.steps
    assert (r1.k, r2.k, answer.module, answer.options["temperature"]) == (7, 7, "dspy.Predict", 0.5)
    assert concrete.variables == {} and "${k}" not in concrete.model_dump_json()
    assert answer.instructions == "Read 7 passages; costs ${dollars}."  # the escape stays literal
    assert PipelineSpec.model_validate(json.loads(concrete.model_dump_json())) == concrete
    assert resolve_spec(spec) == resolve_spec(spec, {})  # defaults


def test_the_template_round_trips_through_json():
    spec = PipelineSpec.model_validate(spec_dict())
    dumped = json.loads(spec.model_dump_json())
    assert dumped["steps"][0]["k"] == "${k}" and dumped["variables"]["k"]["int"] == [1, 10]
    assert PipelineSpec.model_validate(dumped) == spec


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"k": 11}, r"variable 'k' step 'r1, r2, answer'.*outside \[1, 10\]"),
        ({"k": 2.5}, "variable 'k'.*not an integer"),
        ({"reasoner": "dspy.ReAct"}, "variable 'reasoner' step 'answer'.*not one of the choices"),
        ({"temperature": "hot"}, "variable 'temperature'.*not a number"),
        ({"nope": 1}, "variable 'nope'.*no variable"),
    ],
)
def test_bad_values_are_typed_errors_naming_variable_and_step(values, match):
    spec = PipelineSpec.model_validate(spec_dict())
    with pytest.raises(VariableError, match=match):
        resolve_spec(spec, values)


def test_a_module_choice_must_pass_the_registry_allowlist():
    data = spec_dict()
    data["variables"] = {**VARS, "reasoner": {"choice": ["dspy.Predict", "os:system"]}}
    with pytest.raises(
        ValidationError, match=r"variable 'reasoner' step 'answer': module choice 'os:system'"
    ):
        PipelineSpec.model_validate(data)
    data["variables"] = {**VARS, "reasoner": {"choice": ["dspy.Predict", "dspy.MIPROv2"]}}
    with pytest.raises(ValidationError, match="optimizer"):
        PipelineSpec.model_validate(data)


def test_undefined_and_unused_variables_are_errors():
    data = spec_dict()
    data["steps"][0]["k"] = "${kk}"
    with pytest.raises(ValidationError, match="variable 'kk' step 'r1': references undefined variable"):
        PipelineSpec.model_validate(data)
    data = spec_dict()
    data["variables"] = {**VARS, "unused": {"int": [0, 1]}}
    with pytest.raises(ValidationError, match="not referenced by any step"):
        PipelineSpec.model_validate(data)


def test_a_resolved_spec_that_does_not_validate_names_the_values():
    data = spec_dict()
    data["variables"] = {**VARS, "k": {"int": [1, 200], "default": 3}}  # retrieve allows k <= 100
    spec = PipelineSpec.model_validate(data)
    with pytest.raises(VariableError, match="k=150"):
        resolve_spec(spec, {"k": 150})


def test_variable_models():
    assert Variable.model_validate({"float": [0.1, 1], "log": True}).default_value() == 0.1
    assert Variable.model_validate({"choice": ["a", 1, True]}).check(1) == 1
    with pytest.raises(ValidationError, match="exactly one"):
        Variable.model_validate({"int": [1, 2], "choice": ["a"]})
    with pytest.raises(ValidationError, match="low > high"):
        Variable.model_validate({"int": [5, 1]})
    with pytest.raises(ValidationError, match="outside"):
        Variable.model_validate({"int": [1, 5], "default": 9})
    with pytest.raises(ValidationError, match="log-scale"):
        Variable.model_validate({"float": [0, 1], "log": True})
    import dspy

    assert Variable.model_validate({"choice": [dspy.Predict, dspy.ChainOfThought]}).choice == [
        "dspy.Predict",
        "dspy.ChainOfThought",
    ]


def test_substitution_reaches_nested_steps_and_reports_them():
    steps = [
        {"parallel": {"a": [{"name": "inner", "module": "${m}", "signature": "q -> x"}]}},
        {"select": {"candidates": [{"module": "${m}", "signature": "q -> y"}], "sample": 0.5}},
    ]
    assert references(steps) == {"m": ["inner", "steps[1].select.candidates[0]"]}
    out = substitute(steps, {"m": "dspy.Predict"})
    assert (
        out[0]["parallel"]["a"][0]["module"] == out[1]["select"]["candidates"][0]["module"] == "dspy.Predict"
    )
    assert steps[0]["parallel"]["a"][0]["module"] == "${m}"  # the template is untouched


def test_a_spec_with_references_passes_the_deployment_parameter_schema():
    # Prefect checks a deployment's parameters against the flow's schema: a '${k}' in an integer field
    # must be accepted there (and by the UI form), then resolved by the spec itself.
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import validate

    from flows.tune import default_tune_spec, tune_pipeline

    schema = parameter_schema(tune_pipeline).model_dump_for_openapi()
    spec = default_tune_spec().model_dump(mode="json")
    assert spec["steps"][0]["k"] == "${k}"
    assert validate({"spec": spec, "devset": "demo"}, schema, raise_on_error=False) == []
    spec["steps"][0]["k"] = "three"
    assert validate({"spec": spec}, schema, raise_on_error=False) != []
