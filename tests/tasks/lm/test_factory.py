"""build_lm from settings (offline, env key, explicit key, Secret block, local server) and describe_lm."""

from __future__ import annotations

import logging

import dspy
import pytest
from support.openai_server import FakeOpenAIServer

from dspex.exceptions import LMConfigurationError
from dspex.settings import OFFLINE_LM_MODEL, get_settings
from tasks.lm import NO_KEY_PLACEHOLDER, build_lm, describe_lm, is_offline_lm, resolve_api_key

SECRET = "sk-live-DO-NOT-LEAK-1234567890"


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "MY_LM_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_default_settings_give_the_offline_lm() -> None:
    lm = build_lm()
    assert is_offline_lm(lm)
    assert lm.model == OFFLINE_LM_MODEL
    assert describe_lm(lm)["offline"] is True
    assert lm.cache is False  # see build_offline_lm: a disk cache would cost more than answering


def test_remote_model_takes_its_key_from_the_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSPEX_LM_MODEL", "openai/gpt-4o-mini")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("DSPEX_LM_TEMPERATURE", "0.25")
    monkeypatch.setenv("DSPEX_LM_MAX_TOKENS", "256")
    monkeypatch.setenv("DSPEX_LM_NUM_RETRIES", "5")
    monkeypatch.setenv("DSPEX_LM_TIMEOUT_SECONDS", "12.5")
    monkeypatch.setenv("DSPEX_LM_CACHE", "false")
    lm = build_lm()
    assert not is_offline_lm(lm)
    assert lm.model == "openai/gpt-4o-mini"
    assert lm.kwargs["api_key"] == SECRET
    assert lm.kwargs["temperature"] == 0.25
    assert lm.kwargs["max_tokens"] == 256
    assert lm.kwargs["timeout"] == 12.5
    assert lm.num_retries == 5
    assert lm.cache is False
    assert describe_lm(lm) == {
        "model": "openai/gpt-4o-mini",
        "provider": "openai",
        "api_base": None,
        "offline": False,
        "label": "openai/gpt-4o-mini",
    }


def test_key_env_var_name_is_a_setting_and_the_provider_var_is_a_fallback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MY_LM_KEY", SECRET)
    lm = build_lm(lm_model="openai/gpt-4o-mini", lm_api_key_env="MY_LM_KEY")
    assert lm.kwargs["api_key"] == SECRET
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-other")
    assert build_lm(lm_model="anthropic/claude-sonnet-4").kwargs["api_key"] == "sk-ant-other"


def test_explicit_key_setting_wins_over_the_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    monkeypatch.setenv("DSPEX_LM_API_KEY", SECRET)
    settings = get_settings(lm_model="openai/gpt-4o-mini")
    assert resolve_api_key(settings) == SECRET
    assert SECRET not in repr(settings) and SECRET not in str(settings.masked())


def test_missing_key_for_a_hosted_provider_says_what_to_set() -> None:
    with pytest.raises(LMConfigurationError) as caught:
        build_lm(lm_model="openai/gpt-4o-mini")
    message = str(caught.value)
    assert "OPENAI_API_KEY" in message and "DSPEX_LM_API_KEY_BLOCK" in message
    assert caught.value.code == "lm_configuration_error"
    with pytest.raises(LMConfigurationError, match="MY_LM_KEY"):
        build_lm(lm_model="openai/gpt-4o-mini", lm_api_key_env="MY_LM_KEY")
    # A remote base URL is not a local server: it still needs a key.
    with pytest.raises(LMConfigurationError):
        build_lm(lm_model="openai/x", lm_api_base="https://llm.example.com/v1")


def test_local_server_and_keyless_providers_need_no_key() -> None:
    lm = build_lm(lm_model="openai/test-model", lm_api_base="http://127.0.0.1:8000/v1")
    assert lm.kwargs["api_key"] == NO_KEY_PLACEHOLDER
    assert describe_lm(lm)["api_base"] == "http://127.0.0.1:8000/v1"
    assert "api_key" not in build_lm(lm_model="ollama_chat/llama3").kwargs


def test_bad_overrides_are_typed_errors() -> None:
    with pytest.raises(LMConfigurationError, match="lm_model"):
        build_lm(lm_modle="openai/x")
    with pytest.raises(LMConfigurationError, match="invalid LM settings"):
        build_lm(lm_temperature=-1)
    settings = get_settings()
    assert is_offline_lm(build_lm(settings))
    assert build_lm(settings, lm_model="ollama_chat/llama3").model == "ollama_chat/llama3"


def test_describe_lm_drops_credentials_from_the_base_url() -> None:
    lm = dspy.LM("openai/x", api_base="https://user:pw@gateway.example.com:8443/v1?key=abc", api_key=SECRET)
    description = describe_lm(lm)
    assert description["api_base"] == "https://gateway.example.com:8443/v1"
    assert SECRET not in str(description) and "pw" not in str(description) and "abc" not in str(description)


def test_the_key_never_appears_in_descriptions_reprs_history_or_logs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, openai_server: FakeOpenAIServer
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    lm = build_lm(lm_model="openai/test-model", lm_api_base=openai_server.base_url, lm_cache=False)
    with dspy.context(lm=lm):
        answer = dspy.Predict("context, question -> answer")(
            context="Paris is the capital of France.", question="What is the capital of France?"
        ).answer
    assert answer == "Paris"
    assert openai_server.chat_requests[0].headers["authorization"] == f"Bearer {SECRET}"  # it did go out
    assert "Using LM" in caplog.text
    for text in (caplog.text, str(describe_lm(lm)), repr(lm), str(lm.dump_state()), str(lm.history)):
        assert SECRET not in text


@pytest.mark.integration
def test_key_from_a_prefect_secret_block(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.blocks.system import Secret

    Secret(value=SECRET).save("dspex-test-lm-key", overwrite=True)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-loses")
    lm = build_lm(lm_model="openai/gpt-4o-mini", lm_api_key_block="dspex-test-lm-key")
    assert lm.kwargs["api_key"] == SECRET
    with pytest.raises(LMConfigurationError, match="dspex-test-lm-key-missing"):
        build_lm(lm_model="openai/gpt-4o-mini", lm_api_key_block="dspex-test-lm-key-missing")
