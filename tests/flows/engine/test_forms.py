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
from flows.engine.forms import FormUnion
from flows.engine.spec import PipelineSpec
from flows.evaluate import evaluate_program
from flows.optimize import optimize_program
from flows.pipeline import run_pipeline
from flows.rag import rag_qa

FLOWS = [run_pipeline, rag_qa, batch_predict, evaluate_program, optimize_program]


def schema_of(flow):
    return parameter_schema(flow.fn).model_dump()


def test_form_union_publishes_a_discriminated_union_as_one_object_form():
    class A(BaseModel):
        kind: Literal["a"] = "a"
        x: int = 0
        shared: str = Field(default="s", description="Shared.")

    class B(BaseModel):
        kind: Literal["b"] = "b"
        y: list[A] = Field(default_factory=list)
        shared: str | None = Field(default=None, description="Shared.")

    adapter = TypeAdapter(list[Annotated[A | B, Field(discriminator="kind"), FormUnion(title="Item")]])
    schema = adapter.json_schema()
    item = schema["$defs"]["Item"]
    assert schema["items"] == {"$ref": "#/$defs/Item"}
    assert item["type"] == "object" and item["properties"]["kind"]["enum"] == ["a", "b"]
    assert "required" not in item and all("default" not in p for p in item["properties"].values())
    assert item["properties"]["shared"]["anyOf"] == [{"type": "string"}, {"type": "null"}]
    assert item["properties"]["shared"]["description"].startswith("a, b: Shared.")
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


def test_steps_are_one_form_with_a_kind_choice_and_mode_and_lm_are_typed():
    schema = schema_of(run_pipeline)
    assert schema["definitions"]["PipelineSpec"]["properties"]["steps"]["items"] == {
        "$ref": "#/definitions/Step"
    }
    step = schema["definitions"]["Step"]
    assert step["type"] == "object"  # an array item with a type: the UI renders it as fields
    assert step["properties"]["kind"]["enum"][:6] == [
        "module",
        "native",
        "retrieve",
        "parallel",
        "conditional",
        "map",
    ]
    assert {"module", "signature", "native", "metric", "retrieve", "k", "when", "then", "map"} <= set(
        step["properties"]
    )
    nested = step["properties"]["then"]["items"]
    assert nested == {"$ref": "#/definitions/Step"}  # a step's own steps are the same form, recursively
    assert schema["properties"]["mode"]["enum"] == ["auto", "local", "distributed"]
    assert schema["properties"]["mode"]["default"] == "auto"
    lm = schema["properties"]["lm"]
    assert [o.get("$ref", o.get("type")) for o in lm["anyOf"]] == ["#/definitions/LMConfig", "null"]
    fields = schema["definitions"]["LMConfig"]["properties"]
    assert set(fields) == {"model", "api_base", "temperature", "api_key_block"}  # never a key


def test_the_server_side_schema_check_accepts_every_valid_spec_and_the_form_output():
    # Prefect validates a deployment run's parameters against this schema before the flow starts.
    import jsonschema

    schema = schema_of(run_pipeline)
    spec = {
        "name": "nested",
        "steps": [
            {"retrieve": "question", "k": 2},
            {"module": "dspy.Predict", "signature": "context, question -> answer"},
            {"parallel": {"a": [{"module": "dspy.Predict", "signature": "question -> short"}]}},
            {
                "when": {"field": "answer", "op": "truthy"},
                "then": [{"kind": "native", "native": "template", "template": "{{ answer }}", "output": "t"}],
            },
            {
                "map": "context",
                "item": "passage",
                "steps": [{"native": "template", "template": "{{ passage }}", "output": "p"}],
            },
        ],
    }
    jsonschema.validate({"spec": spec}, schema)
    PipelineSpec.model_validate(spec)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"spec": {"name": "bad", "steps": [{"kind": "nope"}]}}, schema)


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


def test_what_the_step_form_submits_validates_and_a_filled_foreign_field_still_fails():
    # The Run form's values for a native step: every other kind's fields left blank (None, {}, []).
    submitted = {
        "kind": "native",
        "native": "template",
        "template": "Q: {{ question }}",
        "output": "card",
        "module": None,
        "signature": None,
        "options": {},
        "tools": [],
        "when": None,
        "then": [],
        "k": None,
    }
    spec = PipelineSpec.model_validate({"name": "form", "steps": [submitted]})
    assert spec.steps[0].kind == "native" and spec.steps[0].output == "card"
    blank_kind = {"kind": "", "module": "dspy.Predict", "signature": "question -> answer", "native": None}
    assert PipelineSpec.model_validate({"name": "f", "steps": [blank_kind]}).steps[0].kind == "module"
    with pytest.raises(ValueError, match="module"):
        PipelineSpec.model_validate({"name": "f", "steps": [{**submitted, "module": "dspy.Predict"}]})


def test_step_form_fields_carry_positions_with_kind_first():
    # The server keeps schemas as JSONB, which re-sorts object keys; the UI orders fields by
    # `position`, so without it the Kind select showed up between K, Map and Url.
    step = schema_of(run_pipeline)["definitions"]["Step"]["properties"]
    positions = {name: prop["position"] for name, prop in step.items()}
    assert positions["kind"] == 0
    assert sorted(positions.values()) == list(range(len(positions)))
    assert positions["module"] < positions["signature"] < positions["retrieve"]
