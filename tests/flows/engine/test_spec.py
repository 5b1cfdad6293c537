import pytest
from pydantic import ValidationError

from flows.engine.spec import (
    ConditionalStep,
    MapStep,
    ModuleStep,
    NativeStep,
    ParallelStep,
    PipelineSpec,
    RetrieveStep,
)


def spec(steps, **extra):
    return PipelineSpec.model_validate({"name": "t", "steps": steps, **extra})


def test_smallest_pipeline_from_the_issue():
    s = PipelineSpec.model_validate(
        {"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}
    )
    step = s.steps[0]
    assert isinstance(step, ModuleStep)
    assert step.name == "predict"
    assert s.required_inputs() == ["question"]


def test_every_step_kind_is_told_by_its_head_key():
    s = spec(
        [
            {"retrieve": "question", "k": 2},
            {"module": "dspy.ChainOfThought", "signature": "context: list[str], question -> answer"},
            {"native": "template", "template": "Q: {{ question }}", "output": "prompt"},
            {"parallel": {"a": [{"module": "dspy.Predict", "signature": "question -> answer"}]}},
            {
                "when": {"field": "answer", "op": "truthy"},
                "then": [{"native": "metric", "metric": "f1", "gold": "gold"}],
            },
            {"map": "context", "steps": [{"module": "dspy.Predict", "signature": "item -> summary"}]},
        ]
    )
    kinds = [type(step) for step in s.steps]
    assert kinds == [RetrieveStep, ModuleStep, NativeStep, ParallelStep, ConditionalStep, MapStep]
    names = [step.name for step in s.steps]
    assert len(names) == len(set(names))
    assert s.required_inputs() == ["question", "gold"]


def test_unknown_module_names_the_step_and_suggests():
    with pytest.raises(ValidationError) as info:
        spec([{"name": "answer", "module": "dspy.ChainOfThougt", "signature": "q -> a"}])
    message = str(info.value)
    assert "step 'answer'" in message
    assert "dspy.ChainOfThought" in message


def test_bad_signature_names_the_step():
    with pytest.raises(ValidationError, match=r"step 'qa'.*->"):
        spec([{"name": "qa", "module": "dspy.Predict", "signature": "question answer"}])


def test_duplicate_step_names_are_rejected():
    with pytest.raises(ValidationError, match="duplicate step name"):
        spec(
            [
                {"name": "x", "module": "dspy.Predict", "signature": "q -> a"},
                {"name": "x", "module": "dspy.Predict", "signature": "a -> b"},
            ]
        )


def test_declared_inputs_catch_a_field_nothing_produces():
    with pytest.raises(ValidationError, match=r"step 'second'.*'context'"):
        spec(
            [
                {"module": "dspy.Predict", "signature": "question -> answer"},
                {"name": "second", "module": "dspy.Predict", "signature": "context, answer -> verdict"},
            ],
            inputs=["question"],
        )


def test_unknown_step_kind_says_which_keys_are_valid():
    with pytest.raises(ValidationError, match="module, native, retrieve"):
        spec([{"modul": "dspy.Predict"}])


def test_optimizers_are_not_pipeline_steps():
    with pytest.raises(ValidationError, match="optimizer"):
        spec([{"module": "dspy.MIPROv2", "signature": "q -> a"}])


def test_unregistered_user_program_is_refused_without_importing():
    with pytest.raises(ValidationError, match="register it first"):
        spec([{"module": "os.path:join"}])


def test_spec_is_json_schema_for_the_ui_and_round_trips():
    s = spec([{"module": "dspy.Predict", "signature": "question -> answer"}])
    schema = PipelineSpec.model_json_schema()
    assert "steps" in schema["properties"]
    again = PipelineSpec.model_validate_json(s.model_dump_json())
    assert again == s
