"""The parameter schemas Prefect publishes for the user-facing flows render as forms in its UI.

Prefect 3.8.8's Run form renders ``anyOf`` (a choice between titled options), ``enum`` (a select)
and objects with ``properties`` (fields); a ``oneOf`` or an untyped ``{}`` becomes a raw JSON editor.
These tests read the very schema ``prefect deploy`` stores (``parameter_schema``) and check each
parameter a person fills in; the Chromium test (tests/deployments/test_e2e_ui.py) drives the form.
"""

import json
from typing import Annotated, Literal

import pytest
from prefect.utilities.callables import parameter_schema
from pydantic import BaseModel, Field, TypeAdapter

from flows.batch_predict import batch_predict
from flows.evaluate import evaluate_program
from flows.forms import FormUnion
from flows.optimize import optimize_program
from flows.pipeline import run_pipeline
from flows.rag import rag_qa
from flows.spec import PipelineSpec

FLOWS = [run_pipeline, rag_qa, batch_predict, evaluate_program, optimize_program]


def schema_of(flow):
    return parameter_schema(flow.fn).model_dump()


def test_form_union_publishes_a_discriminated_union_as_any_of():
    class A(BaseModel):
        kind: Literal["a"] = "a"
        x: int = 0

    class B(BaseModel):
        kind: Literal["b"] = "b"
        y: str = ""

    adapter = TypeAdapter(list[Annotated[A | B, Field(discriminator="kind"), FormUnion()]])
    schema = adapter.json_schema()
    assert "anyOf" in schema["items"] and "oneOf" not in json.dumps(schema)
    assert [type(v).__name__ for v in adapter.validate_python([{"kind": "b"}, {"kind": "a"}])] == ["B", "A"]


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_no_parameter_of_a_user_facing_flow_is_a_raw_json_box(flow):
    schema = schema_of(flow)
    text = json.dumps(schema)
    assert '"oneOf"' not in text
    for name, prop in schema["properties"].items():
        options = prop.get("anyOf", [prop])
        assert all(option != {} for option in options), f"{flow.name}.{name} has an untyped option"
        assert all("$ref" in o or "type" in o or "enum" in o or "const" in o for o in options), (
            f"{flow.name}.{name}: {prop}"
        )


def test_steps_are_a_choice_of_step_forms_and_mode_and_lm_are_typed():
    schema = schema_of(run_pipeline)
    steps = schema["definitions"]["PipelineSpec"]["properties"]["steps"]["items"]
    kinds = [option["$ref"].rsplit("/", 1)[1] for option in steps["anyOf"]]
    assert kinds[:3] == ["ModuleStep", "NativeStep", "RetrieveStep"]
    for kind in kinds:  # each option is a form with its own fields and a literal kind tag
        definition = schema["definitions"][kind]
        assert definition["type"] == "object" and "kind" in definition["properties"]
    assert schema["properties"]["mode"]["enum"] == ["auto", "local", "distributed"]
    assert schema["properties"]["mode"]["default"] == "auto"
    lm = schema["properties"]["lm"]
    assert [o.get("$ref", o.get("type")) for o in lm["anyOf"]] == ["#/definitions/LMConfig", "null"]
    fields = schema["definitions"]["LMConfig"]["properties"]
    assert set(fields) == {"model", "api_base", "temperature", "api_key_block"}  # never a key


def test_specs_with_head_keys_and_with_explicit_kinds_both_validate():
    legacy = PipelineSpec.model_validate(
        {
            "name": "legacy",
            "steps": [
                {"retrieve": "question", "k": 2},
                {"module": "dspy.Predict", "signature": "context, question -> answer"},
                {"native": "metric", "metric": "f1", "prediction": "answer", "gold": "gold"},
            ],
        }
    )
    form = PipelineSpec.model_validate(  # what the form submits: every field, the kind tag included
        {"name": "legacy", "steps": [step.model_dump(mode="json") for step in legacy.steps]}
    )
    assert form == legacy
    tagged = PipelineSpec.model_validate(
        {
            "name": "t",
            "steps": [
                {"kind": "retrieve"},
                {"kind": "module", "module": "dspy.Predict", "signature": "context, question -> answer"},
            ],
        }
    )
    assert [s.kind for s in tagged.steps] == ["retrieve", "module"]
