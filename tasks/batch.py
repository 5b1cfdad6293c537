"""Run one DSPy module over one batch of rows: the unit of work a pool executes.

`execute_module_batch` is a plain function (unit-testable without Prefect). The batch executors
(`flows.engine.executors`) call it, in local mode and on a worker alike, with the pool's ``submit``, a
`RowGuard` (the endpoint's circuit breaker and rate limiter) and the `tasks.retry.RetryPolicy`.

Within a batch, rows run concurrently on the pool's executor, each inside ``dspy.context(lm=...)``
(never a global ``dspy.configure`` from a worker thread). Retries happen *here*, per row, and only
here: a plain ``dspy.LM`` is called with its own ``num_retries`` off, and nothing retries the batch
around this function, so a row is tried at most ``policy.attempts`` times. Every row ends one way:

* completed: its outputs are kept;
* failed: bad input, an answer the adapter cannot parse, a non-retryable LM error, or a transient
  error that outlived its retries (``retryable`` true: a resumed run tries it again);
* not attempted: the guard refused it before its first attempt (circuit open, the run stopping) or
  the batch's time ran out before it started; ``not_attempted`` and ``retryable`` are true.
"""

from __future__ import annotations

import inspect
import threading
import time
import typing
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any, Protocol

import dspy
from pydantic import BaseModel, ConfigDict, Field, field_validator

from dspex.exceptions import DSPexError, InputValidationError, is_retryable
from dspex.redact import redact
from tasks import tracing
from tasks.modules import (
    build_module,
    program_class,
    program_input_names,
    program_optional_names,
    returned_fields,
)
from tasks.retry import RetryPolicy
from tasks.rows import absent_inputs, admits_none, get_field, to_jsonable
from tasks.usage import Usage, UsageBox, track

__all__ = [
    "BatchResult",
    "RowError",
    "RowGuard",
    "execute_module_batch",
    "not_attempted_result",
    "without_lm_retries",
]

Submit = Callable[..., "Future[Any]"]


class RowError(BaseModel):
    """Why one row failed (or was not attempted)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str = Field(description="The exception's class name (``NotAttempted`` for a row never tried).")
    message: str = Field(description="The exception's message (never contains secrets).")

    @field_validator("message")
    @classmethod
    def _no_secrets(cls, value: str) -> str:
        return redact(value)  # keeps the promise above, whoever builds the error

    retryable: bool = Field(description="Whether the error was transient (a re-run may succeed).")
    not_attempted: bool = Field(default=False, description="The row never reached the LM in this run.")


class BatchResult(BaseModel):
    """What one batch produced: per row (in batch order) its outputs or its error, and timings."""

    model_config = ConfigDict(extra="forbid")

    outputs: list[dict[str, Any] | None]
    errors: list[RowError | None]
    latencies_ms: list[float] = Field(description="Per-row LM-call latency (0 for rows not run).")
    wall_ms: float = Field(description="Wall time of the batch.")
    reused: int = Field(default=0, description="Rows taken from an earlier result, not recomputed.")
    attempts: int = Field(default=1, description="Most tries any row of the batch took.")
    pool: str = Field(default="", description="The pool that actually ran the batch.")
    usage: Usage = Field(
        default_factory=Usage,
        description="LM tokens and cost the batch's attempts paid for (retries included; reused rows: none).",
    )
    suspended: list[int] = Field(
        default_factory=list,
        description="Rows that stopped at a call still waiting for its answer (provider batch mode): "
        "neither an output nor an error.",
    )

    @property
    def failed(self) -> int:
        """How many rows failed or were not attempted."""
        return sum(error is not None for error in self.errors)

    @property
    def not_attempted(self) -> int:
        """How many rows never reached the LM."""
        return sum(error is not None and error.not_attempted for error in self.errors)


class RowGuard(Protocol):
    """What stands between a row and the LM: the endpoint's breaker and rate limiter, the run's stop."""

    def admit(self) -> str | None:
        """None when the row may make an attempt now; else why not (it is then not attempted)."""

    def record(self, error: BaseException | None) -> None:
        """The outcome of one attempt (None: success)."""

    def give_up(self, error: BaseException) -> None:
        """The row failed for good with ``error`` (no retry left, or not retryable)."""

    def callbacks(self) -> list[Any]:
        """DSPy callbacks to install around the row's LM calls (the rate limiter)."""


class _Refused(Exception):
    """A row the guard did not let make an (other) attempt."""

    def __init__(self, reason: str, last: BaseException | None) -> None:
        self.reason = reason
        self.last = last
        super().__init__(reason)


def not_attempted_result(n: int, reason: str, pool: str = "", start: float | None = None) -> BatchResult:
    """A result whose ``n`` rows were all not attempted, for ``reason``."""
    error = RowError(type="NotAttempted", message=reason, retryable=True, not_attempted=True)
    return BatchResult(
        outputs=[None] * n,
        errors=[error] * n,
        latencies_ms=[0.0] * n,
        wall_ms=0.0 if start is None else (time.perf_counter() - start) * 1000,
        pool=pool,
    )


def without_lm_retries(lm: Any) -> Any:
    """``lm`` with DSPy's own retries off (a plain ``dspy.LM``), so only the `RetryPolicy` retries.

    Other LM classes (a test's DummyLM, a user's client) are returned as they are.
    """
    if type(lm) is dspy.LM and lm.num_retries:
        return lm.copy(num_retries=0)
    return lm


def _row_inputs(
    step: Any, row: Mapping[str, Any], input_names: list[str], nullable: Mapping[str, bool], index: int
) -> dict[str, Any]:
    """The module's keyword arguments from one row; a row missing an input, or null where null is
    not accepted, is refused here, before any LM call (issue 25), naming its row number.

    ``nullable`` maps each input that accepts null to whether a null keeps the parameter's default
    (a ``forward`` parameter with a default is then not passed)."""
    reads = {name: step.inputs.get(name, name) for name in input_names}
    absent = absent_inputs(row, reads, nullable)
    if absent:
        number = row.get("_row", index)
        problems = [
            f"field {reads[name]!r} is {how}" + (f" (input {name!r})" if reads[name] != name else "")
            for name, how in absent.items()
        ]
        hint = (
            "; a signature field typed 'str | None' accepts null"
            if "null" in absent.values() and step.signature
            else ""
        )
        raise InputValidationError(
            f"row {number}: {', '.join(problems)}; step {step.name!r} needs it, so the row was not sent "
            f"to the LM{hint}",
            [
                {"field": reads[name], "message": f"row {number}: {how}", "input": None}
                for name, how in absent.items()
            ],
        )
    values = {name: get_field(row, path) for name, path in reads.items()}
    return {name: v for name, v in values.items() if v is not None or not nullable.get(name)}


def _nullable_inputs(step: Any, spec: Any) -> dict[str, bool]:
    """The inputs that accept null, each mapped to whether a null keeps a default: signature fields
    typed ``Optional``/``X | None`` (False); for a user program without a signature, ``forward``
    parameters with a default (True) or such an annotation (False)."""
    if spec is not None:
        return {f.name: False for f in spec.inputs if f.typed and admits_none(f.annotation)}
    try:
        forward = program_class(step.module).forward
    except (DSPexError, LookupError, ImportError):  # build_module reports why it cannot be built
        return {}
    try:
        hints = typing.get_type_hints(forward)
    except Exception:  # annotations that do not resolve here: a default still makes it nullable
        hints = {}
    nullable = {}
    for parameter in list(inspect.signature(forward).parameters.values())[1:]:
        if parameter.default is not parameter.empty:
            nullable[parameter.name] = True
        elif admits_none(hints.get(parameter.name, str)):
            nullable[parameter.name] = False
    return nullable


def _call(
    module: dspy.Module,
    lm: Any,
    kwargs: dict[str, Any],
    output_map: dict[str, str],
    names: list[str] | None,
    callbacks: list[Any],
    usages: list[Usage] | None = None,
    trace: tracing.BatchTrace | None = None,
    index: int = 0,
    step: Any = None,
) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if lm is not None:
        overrides["lm"] = lm
    if trace is not None:
        callbacks = [*trace.callbacks(index), *callbacks]
    if callbacks:
        overrides["callbacks"] = [*(dspy.settings.get("callbacks") or []), *callbacks]
    # Usage is tracked per attempt, failed ones included: they were paid for too.
    tracked = UsageBox()
    started = time.time_ns()
    try:
        with track(tracked), dspy.context(**overrides):
            prediction = module(**kwargs)
    except BaseException as exc:
        if trace is not None:
            trace.failed(index, module, exc, started)
        raise
    finally:
        if usages is not None:
            usages.append(tracked.value)  # list.append is atomic across the pool's threads
    # Every field the module returns: the signature's outputs and what the module adds to them
    # (ChainOfThought's reasoning, ReAct's trajectory), renamed by the step's output mapping; a
    # user program may also return a dict, a pydantic model or a str (issue 24).
    fields = returned_fields(prediction, step, names)
    return {output_map.get(key, key): to_jsonable(value) for key, value in fields.items()}


def _run_row(
    call: Callable[[list[Any]], dict[str, Any]],
    guard: RowGuard | None,
    policy: RetryPolicy,
    abandoned: threading.Event,
    tries: list[int],
    index: int,
) -> tuple[dict[str, Any], float]:
    """One row with its retries: (outputs, latency of the successful attempt); ``tries[index]``
    counts its attempts."""
    last: BaseException | None = None
    attempt = 0
    while True:
        reason = "the batch's time ran out" if abandoned.is_set() else (guard.admit() if guard else None)
        if reason is not None:
            raise _Refused(reason, last)
        attempt += 1
        tries[index] = attempt
        start = time.perf_counter()
        try:
            outputs = call(guard.callbacks() if guard else [])
        except Exception as exc:  # classified: retried here, or reported as the row's error
            if guard is not None:
                guard.record(exc)
            if not is_retryable(exc) or attempt >= policy.attempts:
                if guard is not None:
                    guard.give_up(exc)
                raise
            last = exc
            # Wait out the backoff in short steps, so an open circuit or a stop ends it early.
            until = time.monotonic() + policy.delay(attempt, exc)
            while (left := until - time.monotonic()) > 0 and not abandoned.is_set():
                if guard is not None and guard.admit() is not None:
                    break
                time.sleep(min(left, 0.1))
            continue
        if guard is not None:
            guard.record(None)
        return outputs, (time.perf_counter() - start) * 1000


def execute_module_batch(
    step: Any,
    rows: list[dict[str, Any]],
    *,
    lm: Any,
    submit: Submit,
    guard: RowGuard | None = None,
    policy: RetryPolicy | None = None,
    timeout_s: float | None = None,
    pool: str = "",
    on_row_done: Callable[[int, dict[str, Any]], None] | None = None,
    suspend: type[BaseException] | None = None,
) -> BatchResult:
    """Run ``step``'s module over ``rows``.

    Args:
        step: The `flows.engine.spec.ModuleStep`.
        rows: The batch's rows.
        lm: The DSPy LM to use (None: DSPy's configured LM); its own retries are turned off.
        submit: Runs a callable on the pool (``LocalPool.submit`` or an executor's ``submit``).
        guard: The endpoint's breaker and limiter and the run's stop (None: no guard).
        policy: How many times a row is tried, and the waits (default: 3 tries).
        timeout_s: Longest the batch may take. Rows still running then fail with a retryable
            ``TimeoutError`` and are never called again; rows not started are not attempted.
        pool: The pool running the batch (recorded in the result).
        on_row_done: Called on the pool's thread with a row's index and outputs as soon as it
            completes (resume's row journal: a killed process loses only the rows in flight).
        suspend: An exception (``BaseException``, so the row's program and the retries let it through)
            that ends a row for now rather than failing it: the row gets neither an output nor an
            error, and its index goes in ``suspended`` (batch mode's `tasks.lm.replay.NeedsAnswer`).
    """
    start = time.perf_counter()
    policy = policy or RetryPolicy()
    lm = without_lm_retries(lm)
    spec = step.signature_spec()
    # A user program without a signature: its forward()'s parameters (issue 13).
    input_names = list(spec.input_names) if spec is not None else program_input_names(step)
    nullable = _nullable_inputs(step, spec)
    output_names = list(spec.output_names) if spec is not None else None
    # A user program must produce what its step's signature declares (no silent empty field).
    must_produce = [step.outputs.get(n, n) for n in output_names or []] if ":" in step.module else []
    validator = None
    if spec is not None:
        from tasks.signatures import compile_signature

        validator = compile_signature(step.signature, instructions=step.instructions)
    module = build_module(step)
    optional_names = program_optional_names(step)

    n = len(rows)
    outputs: list[dict[str, Any] | None] = [None] * n
    errors: list[RowError | None] = [None] * n
    latencies = [0.0] * n
    tries = [0] * n
    abandoned = threading.Event()
    futures: dict[int, Future[Any]] = {}
    usages: list[Usage] = []
    suspended: list[int] = []
    suspends: tuple[type[BaseException], ...] = (suspend,) if suspend is not None else ()
    trace = tracing.current_batch()
    for i, row in enumerate(rows):
        try:
            kwargs = _row_inputs(step, row, input_names, nullable, i)
            if validator is not None:
                kwargs = validator.validate_inputs(kwargs)
            for name in optional_names:  # forward's optional parameters the row has (issue 24)
                value = get_field(row, step.inputs.get(name, name), None)
                if name not in kwargs and value is not None:  # a null keeps forward's default
                    kwargs[name] = value
        except InputValidationError as exc:
            errors[i] = RowError(type=type(exc).__name__, message=str(exc), retryable=False)
            continue

        def call(callbacks: list[Any], kwargs: dict[str, Any] = kwargs, index: int = i) -> dict[str, Any]:
            produced = _call(
                module, lm, kwargs, step.outputs, output_names, callbacks, usages, trace, index, step=step
            )
            missing = [name for name in must_produce if produced.get(name) is None]
            if missing:
                raise ValueError(
                    f"{step.module} returned {sorted(k for k, v in produced.items() if v is not None)}, "
                    f"not the output(s) {missing} its step's signature declares"
                )
            if on_row_done is not None:
                on_row_done(index, produced)
            return produced

        futures[i] = submit(_run_row, call, guard, policy, abandoned, tries, i)

    deadline = None if timeout_s is None else start + timeout_s
    for i, future in futures.items():
        try:
            remaining = None if deadline is None else max(deadline - time.perf_counter(), 0.0)
            outputs[i], latencies[i] = future.result(timeout=remaining)
        except suspends:
            suspended.append(i)
        except FuturesTimeout:
            # Threads cannot be interrupted: the row's in-flight call runs out on its own (bounded
            # by the LM timeout), but `abandoned` stops it from being tried again.
            abandoned.set()
            started = not future.cancel()
            errors[i] = RowError(
                type="TimeoutError" if started else "NotAttempted",
                message=f"the batch timeout of {timeout_s:.0f} s ran out"
                + ("" if started else " before this row started"),
                retryable=True,
                not_attempted=not started,
            )
        except _Refused as refused:
            if refused.last is None:
                errors[i] = RowError(
                    type="NotAttempted", message=refused.reason, retryable=True, not_attempted=True
                )
            else:
                errors[i] = RowError(
                    type=type(refused.last).__name__,
                    message=f"{_message(refused.last)} (not retried: {refused.reason})",
                    retryable=True,
                )
        except Exception as exc:  # a row's failure is data: it is classified and reported
            errors[i] = RowError(type=type(exc).__name__, message=_message(exc), retryable=is_retryable(exc))
    return BatchResult(
        outputs=outputs,
        errors=errors,
        latencies_ms=latencies,
        wall_ms=(time.perf_counter() - start) * 1000,
        attempts=max(tries, default=0) or 1,
        pool=pool,
        # Rows abandoned at a timeout may still add their usage later: it is not counted.
        usage=Usage.total(list(usages)),
        suspended=suspended,
    )


def _message(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 500 else text[:497] + "..."
