"""Build the ``dspy.LM`` a task uses, from settings, and describe it without its secrets.

An LM is built *inside* each task (``build_lm()``), never passed between processes or persisted: a
``dspy.LM`` pickles together with its ``api_key``. What travels is the settings (``DSPEX_LM_*``) and,
for humans, `describe_lm`'s dictionary, which never holds the key.

Key lookup, first found wins: ``settings.lm_api_key`` (``DSPEX_LM_API_KEY``), the Prefect Secret block
named by ``settings.lm_api_key_block``, then the environment variable named by
``settings.lm_api_key_env`` (and the provider's own ``<PROVIDER>_API_KEY``). A hosted provider with no
key is an `LMConfigurationError` naming what to set; a server on a local address (an
OpenAI-compatible vLLM, Ollama or test server) may run without one.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import dspy
from dspy.clients.lm import LM
from dspy.utils.exceptions import LMError
from pydantic import ValidationError

from dspex.exceptions import LMConfigurationError
from dspex.settings import OFFLINE_LM_MODEL, Settings, get_settings
from tasks.lm.offline import build_offline_lm, is_offline_lm

__all__ = ["NO_KEY_PLACEHOLDER", "build_lm", "configured_lm", "describe_lm", "resolve_api_key"]

logger = logging.getLogger(__name__)

#: Sent as the API key to a local server that needs none (OpenAI-compatible clients require a value).
NO_KEY_PLACEHOLDER = "not-needed"

# Providers that authenticate without an API key: local servers, or cloud SDK credential chains.
_KEYLESS_PROVIDERS = frozenset(
    {"ollama", "ollama_chat", "lm_studio", "hosted_vllm", "llamafile", "bedrock", "sagemaker", "vertex_ai"}
)


def resolve_api_key(settings: Settings) -> str | None:
    """The LM API key from the settings, a Prefect Secret block, or the environment.

    Args:
        settings: The effective settings.

    Returns:
        The key, or None when none is configured.

    Raises:
        LMConfigurationError: The named Secret block cannot be loaded or does not hold a string.
    """
    if settings.lm_api_key is not None and settings.lm_api_key.get_secret_value():
        return settings.lm_api_key.get_secret_value()
    if settings.lm_api_key_block:
        return _key_from_block(settings.lm_api_key_block)
    for name in _key_env_names(settings):
        value = os.environ.get(name)
        if value:
            return value
    return None


def build_lm(settings: Settings | None = None, **overrides: Any) -> LM:
    """Build the ``dspy.LM`` the settings describe.

    ``DSPEX_LM_MODEL`` left at its default gives the offline extractive LM; any other model goes
    through DSPy (its native engine, or LiteLLM) with the settings' base URL, key, temperature,
    max tokens, retries, timeout and cache.

    Args:
        settings: The settings to use; None reads them from the environment.
        **overrides: ``Settings`` field values that win over ``settings`` (``lm_model=...``).

    Raises:
        LMConfigurationError: An unknown or invalid override, or a hosted provider with no API key.
    """
    settings = _with_overrides(settings, overrides)
    if settings.uses_offline_lm:
        lm = build_offline_lm(temperature=settings.lm_temperature, max_tokens=settings.lm_max_tokens)
    else:
        lm = _build_remote(settings)
    logger.info("Using LM %s", describe_lm(lm))
    return lm


def configured_lm(settings: Settings) -> Any:
    """The LM a ``dspy.configure(lm=...)`` in this process set, when the settings name none.

    A DSPy user configures an LM once and expects every call to use it; a run that silently used
    the offline LM instead would give plausible answers and bill nothing (issue 24). The LM is only
    read, for this process's own calls: it is never stored, pickled or sent anywhere.

    Args:
        settings: The effective settings; an explicit ``DSPEX_LM_MODEL`` (or override) wins.

    Returns:
        ``dspy.settings.lm`` when it is a DSPy LM other than the offline one and ``lm_model`` was
        not given; else None.
    """
    if "lm_model" in settings.model_fields_set:
        return None
    lm = dspy.settings.lm
    if isinstance(lm, dspy.BaseLM) and not is_offline_lm(lm):
        return lm
    return None


def describe_lm(lm: Any) -> dict[str, Any]:
    """What an LM is, for logs and artifacts: never its key.

    Args:
        lm: A ``dspy.LM`` (or any ``BaseLM``).

    Returns:
        ``model``, ``provider``, ``api_base`` (without credentials or query), ``offline`` and a
        human ``label``.
    """
    model = str(getattr(lm, "model", type(lm).__name__))
    offline = is_offline_lm(lm)
    kwargs = getattr(lm, "kwargs", {}) or {}
    api_base = _public_url(kwargs.get("api_base") or kwargs.get("base_url"))
    provider = "dspex" if offline else model.split("/", 1)[0] if "/" in model else "openai"
    if offline:
        label = f"{OFFLINE_LM_MODEL} (offline extractive LM: copies answers from the prompt's context)"
    else:
        label = f"{model} at {api_base}" if api_base else model
    return {"model": model, "provider": provider, "api_base": api_base, "offline": offline, "label": label}


def _with_overrides(settings: Settings | None, overrides: dict[str, Any]) -> Settings:
    unknown = sorted(set(overrides) - set(Settings.model_fields))
    if unknown:
        valid = ", ".join(sorted(name for name in Settings.model_fields if name.startswith("lm_")))
        raise LMConfigurationError(f"unknown setting(s) {unknown} for build_lm; LM settings are: {valid}")
    try:
        if settings is None:
            return get_settings(**overrides)
        if not overrides:
            return settings
        # Every field is passed explicitly, so the environment cannot override the given settings.
        return Settings(**{**dict(settings), **overrides})
    except ValidationError as exc:
        raise LMConfigurationError(f"invalid LM settings: {exc}") from exc


def _build_remote(settings: Settings) -> LM:
    model = settings.lm_model
    api_base = settings.lm_api_base
    api_key = resolve_api_key(settings)
    if api_key is None:
        if _needs_key(model, api_base):
            raise LMConfigurationError(_missing_key_message(settings))
        api_key = NO_KEY_PLACEHOLDER if api_base else None
    kwargs: dict[str, Any] = {"timeout": settings.lm_timeout_seconds}
    if api_base:
        kwargs["api_base"] = api_base
    if api_key is not None:
        kwargs["api_key"] = api_key
    try:
        return LM(
            model,
            temperature=settings.lm_temperature,
            max_tokens=settings.lm_max_tokens,
            num_retries=settings.lm_num_retries,
            cache=settings.lm_cache,
            **kwargs,
        )
    except (ValueError, TypeError, LMError) as exc:
        # The message may quote arguments; make sure the key is not among them.
        message = str(exc).replace(api_key, "**********") if api_key else str(exc)
        raise LMConfigurationError(f"cannot build LM {model!r}: {message}") from None


def _provider(model: str) -> str:
    return model.split("/", 1)[0].lower() if "/" in model else "openai"


def _key_env_names(settings: Settings) -> list[str]:
    names = [settings.lm_api_key_env]
    own = f"{_provider(settings.lm_model).upper()}_API_KEY"
    if own not in names and settings.lm_model != OFFLINE_LM_MODEL:
        names.append(own)
    return names


def _needs_key(model: str, api_base: str | None) -> bool:
    if _provider(model) in _KEYLESS_PROVIDERS:
        return False
    return not (api_base and _is_local_url(api_base))


def _is_local_url(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host in ("localhost", "host.docker.internal") or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local


def _missing_key_message(settings: Settings) -> str:
    envs = " or ".join(_key_env_names(settings))
    return (
        f"no API key for LM {settings.lm_model!r}: set the environment variable {envs}, or "
        "DSPEX_LM_API_KEY_BLOCK to the name of a Prefect Secret block holding it (or DSPEX_LM_API_KEY); "
        f"to run without a key, unset DSPEX_LM_MODEL to use the offline LM {OFFLINE_LM_MODEL!r}"
    )


def _key_from_block(name: str) -> str:
    from prefect.blocks.system import Secret

    try:
        # _sync: this is called from sync code that may run inside an event loop (an async task).
        block = cast("Secret[Any]", Secret.load(name, _sync=True))  # type: ignore[call-arg]
        value = block.get()
    except Exception as exc:  # any Prefect/API failure: report which block, keep the cause
        raise LMConfigurationError(
            f"cannot load the Prefect Secret block {name!r} named by DSPEX_LM_API_KEY_BLOCK: {exc}"
        ) from exc
    if not isinstance(value, str) or not value:
        raise LMConfigurationError(f"the Prefect Secret block {name!r} does not hold a non-empty string key")
    return value


def _public_url(url: object) -> str | None:
    """A URL without user, password or query string (they can carry credentials)."""
    if not url:
        return None
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
