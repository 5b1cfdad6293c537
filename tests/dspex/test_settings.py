import pytest
from pydantic import ValidationError

from dspex.settings import OFFLINE_LM_MODEL, get_settings


def test_defaults_are_project_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DSPEX_HOME")
    settings = get_settings()
    assert settings.mode == "local"
    assert settings.lm_model == OFFLINE_LM_MODEL
    assert settings.uses_offline_lm
    assert settings.resolved_prefect_home == (tmp_path / ".dspex" / "prefect").resolve()
    assert settings.resolved_payload_url == str((tmp_path / ".dspex" / "payloads").resolve())
    assert (
        settings.pool_capacity("general"),
        settings.pool_capacity("optimizer"),
        settings.pool_capacity("gpu"),
    ) == (
        8,
        2,
        4,
    )


def test_env_prefix_and_overrides(monkeypatch):
    monkeypatch.setenv("DSPEX_MODE", "distributed")
    monkeypatch.setenv("DSPEX_POOL_GENERAL_CAPACITY", "3")
    settings = get_settings()
    assert settings.mode == "distributed"
    assert settings.pool_general_capacity == 3
    assert get_settings(mode="local").mode == "local"


def test_bad_values_are_rejected_with_the_field_name(monkeypatch):
    monkeypatch.setenv("DSPEX_MODE", "cluster")
    with pytest.raises(ValidationError, match="mode"):
        get_settings()
    monkeypatch.setenv("DSPEX_MODE", "local")
    monkeypatch.setenv("DSPEX_POOL_GPU_CAPACITY", "-1")
    with pytest.raises(ValidationError, match="pool_gpu_capacity"):
        get_settings()


def test_secrets_are_masked(monkeypatch):
    monkeypatch.setenv("DSPEX_LM_API_KEY", "sk-very-secret")
    settings = get_settings()
    masked = settings.masked()
    assert "sk-very-secret" not in repr(masked)
    assert "sk-very-secret" not in repr(settings)
    assert masked["lm_api_key"] == "**********"


def test_every_field_is_described():
    from dspex.settings import Settings

    undocumented = [name for name, field in Settings.model_fields.items() if not field.description]
    assert undocumented == []
