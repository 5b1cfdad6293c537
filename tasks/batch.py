"""Run one DSPy module over one batch of rows: the unit of work a pool executes.

`execute_module_batch` is a plain function (unit-testable without Prefect); `run_module_batch` is
the Prefect task around it that the engine dispatches, with retries for transient LM errors only.

Within a batch, rows run concurrently on the pool's executor, each inside ``dspy.context(lm=...)``
(never a global ``dspy.configure`` from a worker thread). Every row ends in one of three ways:

* completed: its outputs are kept (and survive a retry of the batch: completed rows are never
  recomputed, see `_partials`);
* failed for good (bad input, an output the adapter cannot parse, a non-retryable LM error): the
  row carries its error, the batch goes on;
* failed transiently (rate limit, timeout, server error): the batch raises a retryable error so
  Prefect retries it with backoff; on the final attempt the row is reported as failed instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any

import dspy
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field, field_validator

from dspex.exceptions import InputValidationError, StepExecutionError, is_retryable, retry_condition
from dspex.redact import redact
from tasks.modules import build_module
from tasks.rows import MISSING, get_field, to_jsonable

__all__ = ["BatchResult", "RowError", "execute_module_batch", "run_module_batch"]


class RowError(BaseModel):
    """Why one row failed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str = Field(description="The exception's class name.")
    message: str = Field(description="The exception's message (never contains secrets).")

    @field_validator("message")
    @classmethod
    def _no_secrets(cls, value: str) -> str:
        return redact(value)  # keeps the promise above, whoever builds the error
    retryable: bool = Field(description="Whether the error was transient.")


class BatchResult(BaseModel):
    """What one batch produced: per row (in batch order) its outputs or its error, and timings."""

    model_config = ConfigDict(extra="forbid")

    outputs: list[dict[str, Any] | None]
    errors: list[RowError | None]
    latencies_ms: list[float] = Field(description="Per-row LM-call latency (0 for reused rows).")
    wall_ms: float = Field(description="Wall time of the batch.")
    reused: int = Field(default=0, description="Rows taken from an earlier attempt, not recomputed.")
    attempts: int = Field(default=1, description="Which attempt produced this result.")

    @property
    def failed(self) -> int:
        """How many rows failed."""
        return sum(error is not None for error in self.errors)


# Completed rows of batches whose attempt failed, by batch key, so a retry runs only the rest.
# Retries of a task run happen in the same process (Prefect retries in place), local or worker.
_partials: dict[str, dict[int, dict[str, Any]]] = {}
_partials_lock = threading.Lock()

Submit = Callable[..., "Future[Any]"]


def _row_inputs(step: Any, row: Mapping[str, Any], input_names: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    missing = []
    for name in input_names:
        value = get_field(row, step.inputs.get(name, name))
        if value is MISSING:
            missing.append(step.inputs.get(name, name))
        else:
            values[name] = value
    if missing:
        raise InputValidationError(
            f"row lacks field(s) {missing} that step {step.name!r} reads",
            [{"field": f, "message": "missing", "input": None} for f in missing],
        )
    return values


def _run_row(
    module: dspy.Module, lm: Any, kwargs: dict[str, Any], output_map: dict[str, str], names: list[str] | None
) -> tuple[dict[str, Any], float]:
    start = time.perf_counter()
    with dspy.context(lm=lm) if lm is not None else _nullcontext():
        prediction = module(**kwargs)
    latency = (time.perf_counter() - start) * 1000
    # Every field the module returns: the signature's outputs and what the module adds to them
    # (ChainOfThought's reasoning, ReAct's trajectory), renamed by the step's output mapping.
    keys = list(prediction.keys()) or (names or [])
    outputs = {output_map.get(key, key): to_jsonable(prediction.get(key)) for key in keys}
    return outputs, latency


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def execute_module_batch(
    step: Any,
    rows: list[dict[str, Any]],
    *,
    lm: Any,
    submit: Submit,
    batch_key: str,
    final_attempt: bool = True,
    attempt: int = 1,
    timeout_s: float | None = None,
) -> BatchResult:
    """Run ``step``'s module over ``rows``.

    Args:
        step: The `flows.spec.ModuleStep`.
        rows: The batch's rows.
        lm: The DSPy LM to use (None: DSPy's configured LM).
        submit: Runs a callable on the pool (``LocalPool.submit`` or an executor's ``submit``).
        batch_key: Identifies this batch across attempts (completed rows are kept under it).
        final_attempt: Whether no retry follows; transient row failures are then reported, not raised.
        attempt: The attempt number, for the result.
        timeout_s: Longest the batch may take; rows still running then fail with a (retryable)
            ``TimeoutError``. Enforced here because Prefect cannot interrupt a task in a thread.

    Raises:
        StepExecutionError: Retryable (``is_retryable`` is true): some rows failed transiently and a
            retry follows; the completed rows are kept for it.
    """
    start = time.perf_counter()
    spec = step.signature_spec()
    input_names = list(spec.input_names) if spec is not None else list(step.inputs)
    output_names = list(spec.output_names) if spec is not None else None
    validator = None
    if spec is not None:
        from tasks.signatures import compile_signature

        validator = compile_signature(step.signature, instructions=step.instructions)
    module = build_module(step)

    with _partials_lock:
        done = dict(_partials.get(batch_key, {}))
    n = len(rows)
    outputs: list[dict[str, Any] | None] = [None] * n
    errors: list[RowError | None] = [None] * n
    latencies = [0.0] * n
    futures: dict[int, Future[Any]] = {}
    for i, row in enumerate(rows):
        if i in done:
            outputs[i] = done[i]
            continue
        try:
            kwargs = _row_inputs(step, row, input_names)
            if validator is not None:
                kwargs = validator.validate_inputs(kwargs)
        except InputValidationError as exc:
            errors[i] = RowError(type=type(exc).__name__, message=str(exc), retryable=False)
            continue
        futures[i] = submit(_run_row, module, lm, kwargs, step.outputs, output_names)

    transient = 0
    deadline = None if timeout_s is None else start + timeout_s
    for i, future in futures.items():
        try:
            remaining = None if deadline is None else max(deadline - time.perf_counter(), 0.0)
            outputs[i], latencies[i] = future.result(timeout=remaining)
        except FuturesTimeout:
            future.cancel()
            transient += 1
            errors[i] = RowError(
                type="TimeoutError",
                message=f"row did not finish within the batch timeout of {timeout_s:.0f} s",
                retryable=True,
            )
        except Exception as exc:  # a row's failure is data: it is classified and reported
            retryable = is_retryable(exc)
            transient += retryable
            errors[i] = RowError(type=type(exc).__name__, message=_message(exc), retryable=retryable)

    if transient and not final_attempt:
        completed = {i: out for i, out in enumerate(outputs) if out is not None}
        with _partials_lock:
            _partials[batch_key] = completed
        error = StepExecutionError(
            f"{transient} of {n} rows failed transiently; retrying the batch "
            f"({len(completed)} completed rows kept)",
            step=step.name,
            completed=len(completed),
        )
        error.retryable = True
        raise error
    with _partials_lock:
        _partials.pop(batch_key, None)
    return BatchResult(
        outputs=outputs,
        errors=errors,
        latencies_ms=latencies,
        wall_ms=(time.perf_counter() - start) * 1000,
        reused=len(done),
        attempts=attempt,
    )


def _message(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 500 else text[:497] + "..."


@task(
    name="run-module-batch",
    retry_condition_fn=retry_condition,
    retry_jitter_factor=0.5,
    cache_policy=NO_CACHE,  # idempotency is by batch key; hashing rows and LMs would only cost
)
def run_module_batch(
    step: Any,
    rows: list[dict[str, Any]],
    *,
    submit: Submit,
    lm: Any,
    batch_key: str,
    retries: int,
    timeout_s: float | None = None,
) -> BatchResult:
    """Prefect task: run a module over a batch on a pool (retried for transient LM errors).

    Args:
        step: The module step.
        rows: The batch's rows.
        submit: The pool's submit (a local pool's, or the worker's own executor's).
        lm: The DSPy LM (built from the settings when None).
        batch_key: The batch's identity across attempts.
        retries: The retries configured for this task run (to know the final attempt).
        timeout_s: The batch's timeout (enforced per row inside the batch).
    """
    from prefect.runtime import task_run

    from tasks.lm import build_lm

    attempt = int(task_run.run_count or 1)
    return execute_module_batch(
        step,
        rows,
        lm=lm if lm is not None else build_lm(),
        submit=submit,
        batch_key=batch_key,
        final_attempt=attempt > retries,
        attempt=attempt,
        timeout_s=timeout_s,
    )
