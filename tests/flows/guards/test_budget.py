"""Tests of `flows.guards.budget.CostBudget`: batches admitted only while the projected cost fits."""

from __future__ import annotations

import threading
import time

import pytest

from flows.guards.budget import CostBudget
from tasks.usage import Usage


def _cost(usd: float, model: str | None = None) -> Usage:
    return Usage(
        requests=1,
        prompt_tokens=10,
        cost_usd=None if model else usd,
        unpriced_models=[model] if model else [],
    )


def test_projects_from_the_prior_and_refuses_before_going_over() -> None:
    budget = CostBudget(1.0, per_row_usd=0.1)
    assert budget.admit(5)  # 0.5 projected
    assert budget.admit(4)  # 0.9 projected (in flight counts)
    assert not budget.admit(2)  # 1.1 would pass the budget
    assert budget.exhausted and budget.reason is not None and "max_cost_usd" in budget.reason
    assert not budget.admit(1)  # once exhausted, nothing more starts


def test_measured_cost_replaces_the_prior() -> None:
    budget = CostBudget(1.0, per_row_usd=0.001)
    assert budget.admit(2)
    budget.settle(2, _cost(0.4))  # the real cost is 0.2 per row
    assert budget.per_row_usd == pytest.approx(0.2)
    assert budget.admit(2)  # 0.4 + 0.4
    assert not budget.admit(2)  # 0.4 + 0.4 + 0.4 > 1.0


def test_without_a_figure_the_first_batch_runs_alone() -> None:
    budget = CostBudget(1.0)
    assert budget.admit(3)
    admitted = threading.Event()

    def second() -> None:
        if budget.admit(3):
            admitted.set()

    waiter = threading.Thread(target=second)
    waiter.start()
    time.sleep(0.3)
    assert not admitted.is_set()  # waits for the first batch's cost
    budget.settle(3, _cost(0.3))  # 0.1 per row: 0.3 spent + 0.3 projected fits
    waiter.join(timeout=5)
    assert admitted.is_set()


def test_a_stop_releases_a_waiting_batch() -> None:
    budget = CostBudget(1.0)
    assert budget.admit(1)
    stop = threading.Event()
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(budget.admit(1, stop.is_set)))
    waiter.start()
    stop.set()
    waiter.join(timeout=5)
    assert result == [False] and not budget.exhausted


def test_unpriced_models_cannot_be_enforced_and_say_so(caplog: pytest.LogCaptureFixture) -> None:
    budget = CostBudget(0.01, per_row_usd=None)
    assert budget.admit(2)
    budget.settle(2, _cost(0.0, model="openai/local"))
    assert budget.spent_usd == 0.0 and budget.admit(100)
    assert "openai/local" in caplog.text and "cannot account" in caplog.text


def test_a_batch_that_did_not_run_frees_its_rows() -> None:
    budget = CostBudget(1.0, per_row_usd=0.1)
    assert budget.admit(9)
    budget.settle(9, None)
    assert budget.admit(9) and budget.spent_usd == 0.0


def test_a_non_positive_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="max_cost_usd"):
        CostBudget(0.0)
