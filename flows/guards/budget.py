"""A run's cost budget: dispatch a batch only while the projected cost stays within ``max_cost_usd``.

Before a batch starts, `CostBudget.admit` projects the run's cost as what it has spent, plus the
batches in flight, plus this batch, each row at the expected cost per row; when that would exceed
the budget, the batch is refused (its rows are *not attempted*) and the run stops dispatching. The
expected cost per row starts from the registry's learned figure for the step (`flows.estimate`)
and is replaced by what this run's own finished batches actually cost. With no figure yet, one
batch runs alone first, so its cost is known before anything else is committed.

Costs come from `tasks.usage`: requests to a model whose price is unknown cost nothing here, and
the budget says so once (it cannot enforce what it cannot price).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from flows.telemetry import events
from tasks.usage import Usage

__all__ = ["CostBudget"]

logger = logging.getLogger("dspex.budget")

_POLL_S = 0.1


class CostBudget:
    """The cost budget of one run (thread-safe: batches are admitted from many dispatch threads).

    Args:
        max_cost_usd: The budget, in USD.
        per_row_usd: The expected cost of one row before this run has measured any (None: unknown).

    Attributes:
        spent_usd: What the run's finished batches cost.
        exhausted: Whether a batch was refused.
        reason: Why, once exhausted.
    """

    def __init__(self, max_cost_usd: float, per_row_usd: float | None = None) -> None:
        if max_cost_usd <= 0:
            raise ValueError(f"max_cost_usd must be > 0, got {max_cost_usd!r}")
        self.max_cost_usd = max_cost_usd
        self.prior_per_row_usd = per_row_usd
        self.spent_usd = 0.0
        self.exhausted = False
        self.reason: str | None = None
        self._rows_measured = 0
        self._in_flight_rows = 0
        self._in_flight_batches = 0
        self._warned_unpriced: set[str] = set()
        self._cond = threading.Condition()

    @property
    def per_row_usd(self) -> float | None:
        """The expected cost of one row: measured in this run when possible, else the prior."""
        if self._rows_measured:
            return self.spent_usd / self._rows_measured
        return self.prior_per_row_usd

    def admit(self, rows: int, stop: Callable[[], bool] | None = None) -> bool:
        """Whether a batch of ``rows`` may start; when it may, its rows are counted as in flight.

        With no expected cost per row yet, waits until no other batch is in flight (the first batch
        runs alone). Returns False when the projected cost would exceed the budget, or when
        ``stop`` turns true while waiting.

        Args:
            rows: The batch's rows (those that will call the LM).
            stop: The run's stop flag.
        """
        with self._cond:
            while True:
                if self.exhausted or (stop is not None and stop()):
                    return False
                per_row = self.per_row_usd
                if per_row is None and self._in_flight_batches:
                    self._cond.wait(_POLL_S)
                    continue
                projected = self.spent_usd + (self._in_flight_rows + rows) * (per_row or 0.0)
                if per_row is not None and projected > self.max_cost_usd:
                    self.exhausted = True
                    self.reason = (
                        f"cost budget: the next batch ({rows} rows at ~${per_row:.6f}/row) would bring the "
                        f"projected cost to ${projected:.4f}, over max_cost_usd=${self.max_cost_usd:.4f} "
                        f"(spent ${self.spent_usd:.4f})"
                    )
                    logger.warning("stopping dispatch: %s", self.reason)
                    events.budget_exceeded(
                        "cost_usd",
                        limit=self.max_cost_usd,
                        used=round(self.spent_usd, 6),
                        action=f"stopped dispatch (projected ${projected:.4f})",
                    )
                    self._cond.notify_all()
                    return False
                self._in_flight_rows += rows
                self._in_flight_batches += 1
                return True

    def settle(self, rows: int, usage: Usage | None) -> None:
        """A batch admitted with ``rows`` finished and cost ``usage`` (None: it did not run)."""
        with self._cond:
            self._in_flight_rows -= rows
            self._in_flight_batches -= 1
            if usage is not None and usage.requests:
                for model in usage.unpriced_models:
                    if model not in self._warned_unpriced:
                        self._warned_unpriced.add(model)
                        logger.warning(
                            "the cost of model %r is unknown (not in the cost map): max_cost_usd cannot "
                            "account for its requests",
                            model,
                        )
                self.spent_usd += usage.cost_usd or 0.0
                self._rows_measured += rows
            self._cond.notify_all()
