"""Flow parameters: the typed LM choice (`LMConfig`) and what a run stores of its parameters."""

import pytest
from dspy.utils.dummies import DummyLM
from pydantic import TypeAdapter, ValidationError

from dspex.settings import get_settings
from flows.engine.params import LMConfig, LMParam, resolve_lm, summarize_parameter

ADAPTER = TypeAdapter(LMParam)


def test_lm_param_takes_a_config_a_live_lm_or_nothing_and_rejects_anything_else():
    assert ADAPTER.validate_python({"model": "openai/gpt-4o-mini", "temperature": 0.2}) == LMConfig(
        model="openai/gpt-4o-mini", temperature=0.2
    )
    live = DummyLM([{"answer": "x"}])
    assert ADAPTER.validate_python(live) is live
    assert ADAPTER.validate_python(None) is None
    with pytest.raises(ValidationError):
        ADAPTER.validate_python({"model": "m", "api_key": "sk-secret"})  # a key is never a parameter
    with pytest.raises(ValidationError):
        ADAPTER.validate_python(42)


def test_only_the_given_fields_override_the_settings():
    assert LMConfig().overrides() == {}
    assert LMConfig(model="", api_base="http://127.0.0.1:9/v1", api_key_block="lm-key").overrides() == {
        "lm_api_base": "http://127.0.0.1:9/v1",
        "lm_api_key_block": "lm-key",
    }


def test_resolve_lm_builds_from_the_config_keeps_a_live_lm_and_defaults_to_the_settings():
    from tasks.lm import describe_lm

    settings = get_settings()
    built = resolve_lm(LMConfig(temperature=0.5), settings)
    assert describe_lm(built)["offline"] and built.kwargs["temperature"] == 0.5
    assert describe_lm(resolve_lm({"temperature": 0.0}, settings))["offline"]
    live = DummyLM([{"answer": "x"}])
    assert resolve_lm(live, settings) is live
    assert describe_lm(resolve_lm(None, settings))["offline"]


def test_a_config_is_stored_as_given_and_a_live_lm_as_its_description():
    assert summarize_parameter(LMConfig(model="openai/x")) is None  # stored as is: it holds no secret
    stored = summarize_parameter(DummyLM([{"answer": "x"}]))
    assert set(stored) == {"lm"} and "api_key" not in str(stored)
