"""Flow parameters that are safe to store and that the Prefect UI renders as forms.

Prefect stores every flow run's parameters in its database (JSON, via ``jsonable_encoder``, which
walks arbitrary objects' attributes). A ``dspy.LM`` carries its API key, and a DataFrame of 100k rows
is no parameter. `SafeParamsFlow` stores an LM as its public description and bulk data as a short
summary; PayloadRefs, specs and scalars are stored as they are.

The LM parameter of the user-facing flows is `LMParam`: in the Run form it is an `LMConfig` (model,
API base, temperature, the *name* of a Prefect Secret block holding the key; never a key), while
Python callers may still pass a live ``dspy.LM`` (kept out of the stored parameters, as above).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

from prefect import Flow
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from dspex.redact import redact_data

if TYPE_CHECKING:
    from dspex.settings import Settings

__all__ = ["LMConfig", "LMParam", "SafeParamsFlow", "resolve_lm", "safe_flow", "summarize_parameter"]


class LMConfig(BaseModel):
    """Which LM a run uses, as the Run form shows it; unset fields keep the worker's ``DSPEX_LM_*`` settings.

    The API key is never a parameter: name a Prefect Secret block that holds it (``api_key_block``),
    or leave it to the environment (``DSPEX_LM_API_KEY_ENV``, default ``OPENAI_API_KEY``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", title="LM")

    model: str | None = Field(
        default=None,
        description="LiteLLM model name, e.g. 'openai/gpt-4o-mini'; empty: DSPEX_LM_MODEL (the offline "
        "LM by default).",
    )
    api_base: str | None = Field(default=None, description="Base URL of an OpenAI-compatible server.")
    temperature: float | None = Field(default=None, ge=0, le=2, description="Sampling temperature.")
    api_key_block: str | None = Field(
        default=None,
        description="Name of a Prefect Secret block holding the API key (the key itself is never a parameter).",
    )

    def overrides(self) -> dict[str, Any]:
        """The ``Settings`` fields this config sets (only the ones given)."""
        pairs = {
            "lm_model": self.model,
            "lm_api_base": self.api_base,
            "lm_temperature": self.temperature,
            "lm_api_key_block": self.api_key_block,
        }
        return {key: value for key, value in pairs.items() if value is not None and value != ""}


def _live_lm(value: Any) -> Any:
    import dspy

    if not isinstance(value, dspy.BaseLM):
        raise ValueError(
            f"expected an LM config (model, api_base, ...) or a dspy LM, got {type(value).__name__}"
        )
    return value


#: A flow's ``lm`` parameter: an `LMConfig` (what the UI form shows), a live DSPy LM from Python
#: callers (hidden from the form's schema), or None for the settings' LM.
LMParam = Annotated[LMConfig | SkipJsonSchema[Annotated[Any, AfterValidator(_live_lm)]] | None, Field()]


def resolve_lm(lm: Any, settings: Settings) -> Any:
    """The DSPy LM a flow uses: a live LM as given, else one built from ``settings`` and an `LMConfig`.

    With no ``lm`` and no ``DSPEX_LM_MODEL``, the LM that ``dspy.configure(lm=...)`` set in this
    process is used (local mode; in distributed mode the workers build theirs from their settings,
    since a live LM cannot travel, and a log line says so). Whenever the offline LM is the one
    chosen, a WARNING says so (issue 24).

    Raises:
        LMConfigurationError: The config names an invalid model, or a hosted model with no key.
    """
    from tasks.lm import build_lm, configured_lm, describe_lm, is_offline_lm

    if isinstance(lm, LMConfig):
        chosen = build_lm(settings, **lm.overrides())
    elif isinstance(lm, dict):  # the JSON of an LMConfig (a caller that skipped validation)
        chosen = build_lm(settings, **LMConfig.model_validate(lm).overrides())
    elif lm is not None:
        chosen = lm
    else:
        configured = configured_lm(settings)
        if configured is not None and settings.mode != "distributed":
            _log(logging.INFO, "LM: %s, the one dspy.configure(lm=...) set", describe_lm(configured)["label"])
            return configured
        if configured is not None:
            _log(
                logging.WARNING,
                "dspy.configure(lm=%s) is not used in distributed mode: a live LM cannot be sent to the "
                "workers, which build theirs from their own DSPEX_LM_* settings; set DSPEX_LM_MODEL (on the "
                "workers too) or pass lm=LMConfig(model=...)",
                describe_lm(configured)["model"],
            )
        chosen = build_lm(settings)
    if is_offline_lm(chosen):
        _log(
            logging.WARNING,
            "the offline LM %s answers this run (extractive, deterministic, no real model, 0 requests "
            "billed): set DSPEX_LM_MODEL, pass lm=, or call dspy.configure(lm=...) for a real model",
            describe_lm(chosen)["model"],
        )
    return chosen


def _log(level: int, message: str, *args: Any) -> None:
    """Log to the flow run (the UI shows it) when inside one, else to this module's logger."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        get_run_logger().log(level, message, *args)
    except MissingContextError:
        logging.getLogger(__name__).log(level, message, *args)


_MAX_INLINE_ROWS = 20


def summarize_parameter(value: Any) -> Any:
    """What to store for one parameter value (None: store it as Prefect would)."""
    import dspy

    if isinstance(value, dspy.BaseLM):
        from tasks.lm import describe_lm

        return {"lm": describe_lm(value)}
    if isinstance(value, list) and len(value) > _MAX_INLINE_ROWS:
        sample = value[0] if value else None
        columns = sorted(sample) if isinstance(sample, dict) else None
        return {"rows": len(value), "columns": columns, "stored": "summary only (by-value data)"}
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # DataFrame
        return {"rows": len(value), "columns": [str(c) for c in value.columns], "stored": "summary only"}
    return None


class SafeParamsFlow(Flow):
    """A Prefect flow that never stores secrets or bulk data as run parameters."""

    def serialize_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        safe = dict(parameters)
        replaced = {}
        for key, value in parameters.items():
            summary = summarize_parameter(value)
            if summary is not None:
                replaced[key] = summary
                safe.pop(key)
        serialized = super().serialize_parameters(safe)
        serialized.update(replaced)
        # An LMConfig's api_base or a data URL may carry a password: stored masked (issue 20).
        return dict(redact_data(serialized))


P = ParamSpec("P")
R = TypeVar("R")


def safe_flow(**options: Any) -> Callable[[Callable[P, R]], Flow[P, R]]:
    """Like ``@prefect.flow(...)``, building a `SafeParamsFlow`."""

    def decorate(fn: Callable[P, R]) -> Flow[P, R]:
        return SafeParamsFlow(fn, **options)

    return decorate
