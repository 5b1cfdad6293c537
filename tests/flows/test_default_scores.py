"""Issue 26.3: the scheduled evaluate and optimize deployments, run with their defaults and the
offline LM, scored 0.0 (a program without passages, over questions only) while the demo scored
EM 0.525. Their defaults are now the demo's program and data; and optimize's before/after scoring
is an option (issue 24), on by default.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.serve import load_project
from flows.engine.pools import shutdown_local_pools
from flows.evaluate import evaluate_program
from flows.optimize import optimize_program

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROJECT = load_project(Path(__file__).resolve().parents[2] / "prefect.yaml")


def _parameters(name: str) -> dict:
    (entry,) = [d for d in PROJECT["deployments"] if d["name"] == name]
    return dict(entry.get("parameters") or {})


@pytest.fixture(autouse=True)
def _fresh_pools():
    yield
    shutdown_local_pools()


def test_the_evaluate_deployments_defaults_score_what_the_demo_scores():
    result = evaluate_program(**_parameters("evaluate"))  # what the nightly schedule runs
    assert result.lm.get("offline")
    assert result.examples == 40 and result.failed == 0
    assert result.score("exact_match") == pytest.approx(0.525)  # the demo's EM over the same questions
    assert result.score("f1") > 0.5


def test_the_optimize_deployments_defaults_score_before_and_after_and_scoring_can_be_off():
    params = _parameters("optimize")
    assert params["score"] is True
    result = optimize_program(**params)  # what the weekly schedule runs
    assert result.score_before is not None and result.score_before > 0
    assert result.score_after is not None and result.score_after > 0
    skipped = optimize_program(**(params | {"score": False}))
    assert (skipped.score_before, skipped.score_after) == (None, None)
