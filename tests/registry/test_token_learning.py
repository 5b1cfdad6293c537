"""Learned tokens and cost per row (issue 12): recorded per (module, LM model), persisted, estimated."""

from __future__ import annotations

from pathlib import Path

import pytest

from dspex.exceptions import RegistryQueryError, UnknownModuleError
from registry import ModuleRegistry
from registry.learning import TokenSeries


def _registry(tmp_path: Path) -> ModuleRegistry:
    return ModuleRegistry(discover=False, path=tmp_path / "registry.json")


def test_estimate_is_the_median_per_row_from_the_first_sample(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    assert reg.token_estimate("dspy.Predict", "openai/gpt-4o-mini") is None
    for prompt, cost in ((100, 0.001), (120, 0.002), (1000, 0.05)):
        reg.record_tokens(
            "dspy.Predict", "openai/gpt-4o-mini", prompt_tokens=prompt, completion_tokens=10, cost_usd=cost
        )
    learned = reg.token_estimate("dspy.Predict", "openai/gpt-4o-mini")
    assert learned is not None and learned.samples == 3
    assert (learned.prompt_tokens, learned.completion_tokens, learned.cost_usd) == (120, 10, 0.002)
    # Another model is another series.
    assert reg.token_estimate("dspy.Predict", "openai/gpt-4o") is None


def test_unknown_cost_stays_unknown_not_zero(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    reg.record_tokens("dspy.Predict", "openai/local", prompt_tokens=50, completion_tokens=5, cost_usd=None)
    learned = reg.token_estimate("dspy.Predict", "openai/local")
    assert learned is not None and learned.cost_usd is None and learned.prompt_tokens == 50


def test_bad_figures_and_unknown_modules_are_typed_errors(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    with pytest.raises(RegistryQueryError):
        reg.record_tokens("dspy.Predict", "m", prompt_tokens=-1, completion_tokens=0, cost_usd=0.0)
    with pytest.raises(RegistryQueryError):
        reg.record_tokens("dspy.Predict", "m", prompt_tokens=1, completion_tokens=float("nan"), cost_usd=None)
    with pytest.raises(UnknownModuleError):
        reg.record_tokens("no.Such", "m", prompt_tokens=1, completion_tokens=1, cost_usd=None)


def test_learned_usage_survives_save_and_load(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    reg.record_tokens(
        "dspy.ChainOfThought", "openai/gpt-4o-mini", prompt_tokens=80, completion_tokens=20, cost_usd=0.0004
    )
    reg.record_tokens(
        "dspy.ChainOfThought", "openai/gpt-4o-mini", prompt_tokens=90, completion_tokens=30, cost_usd=None
    )
    reg.save()
    again = _registry(tmp_path)
    again.load()
    assert again.token_estimate("dspy.ChainOfThought", "openai/gpt-4o-mini") == reg.token_estimate(
        "dspy.ChainOfThought", "openai/gpt-4o-mini"
    )


def test_series_keeps_a_window() -> None:
    series = TokenSeries(())
    for i in range(10):
        series = series.add((float(i), 1.0, 0.1), window=4)
    assert [p for p, _, _ in series.samples] == [6.0, 7.0, 8.0, 9.0]
