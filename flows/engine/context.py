"""What the engine carries through a run: its context, the step records, and the row-failure helpers.

`EngineContext` is what every step handler receives (settings, LM, executor, stop signals, resume
store, budgets); `StepRecord` is one row of the duration artifact (estimate versus actual);
`fail_row` writes a failed row's ``_error`` field (`tasks.rows.ERROR_FIELD`). The core
(`flows.engine.core`), the provider batch mode (`flows.batch_api.mode`) and adaptive selection
(`flows.tuning.select`) all build on these, so none of them imports another's step handlers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dspex.redact import redact
from dspex.settings import Settings
from flows.engine.executors.base import BatchExecutor
from flows.engine.executors.local import LocalExecutor
from tasks.batch import RowError
from tasks.rows import ERROR_FIELD, get_field
from tasks.usage import Usage

if TYPE_CHECKING:
    from flows.engine.spec import ModuleStep, RetrieveStep
    from flows.guards.budget import CostBudget
    from flows.guards.interrupts import RunStop
    from flows.guards.resume import ResumeStore

__all__ = [
    "ERROR_FIELD",
    "EngineContext",
    "FailureBudget",
    "StepRecord",
    "batch_key",
    "fail_row",
    "run_log",
]

logger = logging.getLogger("flows.engine.core")


class StepRecord(BaseModel):
    """Estimate versus actual for one executed step (one row of the duration artifact)."""

    model_config = ConfigDict(extra="forbid")

    step: str
    kind: str
    module: str = ""
    pool: str = "inline"
    requested_pool: str = Field(default="", description="The pool the registry (or the step) asked for.")
    actual_pool: list[str] = Field(
        default_factory=list,
        description="The pool(s) that actually ran the batches, after any fallback at dispatch time "
        "(empty when no batch ran).",
    )
    batch_size: int = 0
    batches: int = 0
    rows: int = 0
    failed: int = 0
    not_attempted: int = Field(default=0, description="Rows never tried (circuit open, run stopped).")
    estimated_ms: float | None = None
    actual_ms: float = 0.0
    error_pct: float | None = None
    estimate_source: Literal["static", "learned", "none"] = "none"
    reason: str = "native steps run inline in the flow"
    reused_rows: int = 0
    usage: Usage = Field(default_factory=Usage, description="LM tokens and cost this step paid for.")
    estimated_tokens: float | None = Field(
        default=None, description="Tokens the registry's learned figures expected (None: none learned)."
    )
    estimated_cost_usd: float | None = Field(
        default=None, description="Cost the learned figures expected (None: none learned, or unpriced)."
    )
    lm_batch: Any = Field(
        default=None,
        description="Provider batch API details of a batch-mode step (flows.batch_api.mode.LMBatchRecord): "
        "rounds, batch ids, submitted/completed times; None for online steps.",
    )


@dataclass
class FailureBudget:
    """The rows of a run that failed for good, against its ``max_errors`` (issue 24).

    DSPy's ``dspy.Parallel`` and ``dspy.Evaluate`` record a failed example and go on, until
    ``max_errors`` examples failed; a run here does the same. One budget is shared by every context
    of a run (pipelined chunks, parallel branches), so their failures add up.

    Attributes:
        max_errors: Failed rows tolerated; one more exceeds the budget (None: no limit).
        live: Rows the local executor reported as failed while their batch was still running.
        settled: Failed rows of finished batches and inline steps.
    """

    max_errors: int | None = None
    live: int = 0
    settled: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, n: int, *, live: bool = False) -> None:
        """Count ``n`` failed rows (``live``: reported one by one as they fail)."""
        if n <= 0:
            return
        with self._lock:
            if live:
                self.live += n
            else:
                self.settled += n

    @property
    def failed(self) -> int:
        """Rows known to have failed (the per-row reports may run ahead of the settled batches)."""
        return max(self.live, self.settled)

    @property
    def exceeded(self) -> bool:
        """Whether more than ``max_errors`` rows failed."""
        return self.max_errors is not None and self.failed > self.max_errors


@dataclass
class EngineContext:
    """What the engine needs while it runs one pipeline.

    Attributes:
        settings: Effective settings.
        lm: The DSPy LM (None: built from settings inside each batch).
        lm_key: A stable description of the LM, part of each batch key.
        continue_on_error: Whether failed rows let the pipeline go on; when false, the first row
            that fails for good stops the run: no new batch starts, no row makes a new attempt.
        executor: Runs the batches (default: a `LocalExecutor` on the in-process pools).
        on_progress: Called with the fraction of routed batches done.
        records: Step records, in execution order.
        stop: Set to stop the run (a failed row under ``continue_on_error=false``, an interrupt):
            batches and rows not started yet are reported *not attempted*.
        halt: The run's `flows.guards.interrupts.RunStop` (signals, budget): `stopping` reads it too, and
            waits for running batches are bounded by its grace period once it is set.
        resume: Completed rows of earlier runs to reuse, and the store of this run's results.
        budget: The run's cost budget (checked before each batch starts).
        failures: The run's failure budget (``max_errors``): exceeding it stops the run like a
            failure under ``continue_on_error=false``.
    """

    settings: Settings
    lm: Any
    lm_key: str
    continue_on_error: bool
    executor: BatchExecutor | None = None
    on_progress: Callable[[float], None] | None = None
    records: list[StepRecord] = field(default_factory=list)
    stop: bool = False
    batches_total: int = 0
    batches_done: int = 0
    halt: RunStop | None = None
    resume: ResumeStore | None = None
    budget: CostBudget | None = None
    failures: FailureBudget = field(default_factory=FailureBudget)
    batch_mode: Any = None  # a flows.batch_api.mode.BatchMode: the steps it names use the provider batch API

    def stopping(self) -> bool:
        """Whether the run is stopping (``stop``, its `RunStop`, or more than ``max_errors`` failures)."""
        return self.stop or self.failures.exceeded or (self.halt is not None and self.halt())

    def get_executor(self) -> BatchExecutor:
        """The executor, a `LocalExecutor` bound to this context when none was given."""
        if self.executor is None:
            self.executor = LocalExecutor(
                self.settings, self.lm, stop=self.stopping, store=self.resume, on_row_failed=self._row_failed
            )
        return self.executor

    def _row_failed(self, error: BaseException) -> None:
        self.failures.add(1, live=True)
        if not self.continue_on_error or self.failures.exceeded:
            self.stop = True

    def availability(self, pool: str) -> tuple[bool, str]:
        """Whether a pool can take work now (the executor's answer: local capacity, live workers)."""
        return self.get_executor().availability(pool)

    def child(self) -> EngineContext:
        """A context for a branch of this run (parallel, conditional, map, select): it shares the
        executor, records, stop signals, stores and budgets, and lets its rows fail (the parent
        propagates their errors)."""
        return EngineContext(
            settings=self.settings,
            lm=self.lm,
            lm_key=self.lm_key,
            continue_on_error=True,  # failures are propagated to the parent rows below
            executor=self.get_executor(),  # bound to the root context: its stop holds in branches too
            on_progress=None,
            records=self.records,
            halt=self.halt,
            resume=self.resume,
            budget=self.budget,
            failures=self.failures,  # one budget per run: branches' failures count against it
            batch_mode=self.batch_mode,
        )


def run_log(message: str, *args: Any) -> None:
    """Log to the flow run (shown in the UI) when inside one, else to this module's logger."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        get_run_logger().info(message, *args)
    except MissingContextError:
        logger.info(message, *args)


def fail_row(row: dict[str, Any], step: str | None, error: RowError | BaseException) -> None:
    if isinstance(error, RowError):
        row[ERROR_FIELD] = {
            "step": step,
            "type": error.type,
            "message": error.message,
            "retryable": error.retryable,
        }
        if error.not_attempted:
            row[ERROR_FIELD]["not_attempted"] = True
    else:
        row[ERROR_FIELD] = {"step": step, "type": type(error).__name__, "message": redact(str(error))}


def batch_key(step: ModuleStep | RetrieveStep, rows: list[dict[str, Any]], lm_key: str) -> str:
    """Identity of a batch: the step's configuration, the inputs it reads, and the LM."""
    # Where and how fast a batch runs is not what it computes: pool, batch size and rate limits are out.
    config = step.model_dump(
        mode="json", exclude={"name", "batch_size", "pool", "requests_per_minute", "tokens_per_minute"}
    )
    retrieve = {getattr(step, "retrieve", "")} - {""}
    reads = sorted(set(getattr(step, "inputs", {}).values()) | set(step.needs()) | retrieve)
    inputs = [{f: get_field(row, f, None) for f in reads} for row in rows]
    blob = json.dumps([config, inputs, lm_key], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]
