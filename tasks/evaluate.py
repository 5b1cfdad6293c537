"""Evaluate a DSPy program over a devset: predictions once, then every metric on each example.

The pieces the ``evaluate`` and ``optimize`` flows share live here, as plain functions testable
without Prefect:

* `load_program`: a *fresh* module for a `flows.engine.spec.ModuleStep`, with its saved JSON state
  (``step.state``: a JSON file path/URL, or a `PayloadRef`'s JSON) loaded, for DSPy's own modules
  as well as user programs;
* `resolve_metric`: a metric named natively (``exact_match``, ``f1``, ``passage_match``) or by a
  trusted import path / registered callable;
* `to_examples`: rows to ``dspy.Example`` with their inputs marked, checked before any LM call;
* `evaluate_examples`: run the program on each example (on a pool's executor, inside
  ``dspy.context(lm=...)``) and score it with every metric, keeping failures per example.

`run_evaluation` is the Prefect task around `evaluate_examples` that the flow submits.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from typing import Any

from dspy.dsp.utils.settings import settings as dspy_settings
from dspy.primitives.example import Example
from dspy.primitives.module import Module
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from dspex.exceptions import InputValidationError, MetricError, PipelineSpecError
from tasks.modules import read_program_state
from tasks.rows import to_jsonable

__all__ = [
    "ExampleResult",
    "MetricSummary",
    "ProgressCounter",
    "evaluate_examples",
    "input_keys_for",
    "load_program",
    "metric_field_for",
    "output_keys_for",
    "read_program_state",
    "resolve_metric",
    "run_evaluation",
    "summarize_scores",
    "to_examples",
]

Metric = Callable[..., Any]
Submit = Callable[..., "Future[Any]"]
_TICK_SECONDS = 0.5


class ExampleResult(BaseModel):
    """One evaluated example: what went in, what came out, and each metric's score.

    Attributes:
        index: The example's position in the devset.
        inputs: The input fields given to the program.
        labels: The other fields of the example (the gold answers).
        prediction: The prediction's fields (JSON-able), None when the program failed.
        scores: Metric label -> score; None where that metric could not score this example.
        error: ``Type: message`` of the program's failure, None when it ran.
        metric_errors: Metric label -> ``Type: message`` for metrics that failed on this example.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int
    inputs: dict[str, Any]
    labels: dict[str, Any]
    prediction: dict[str, Any] | None
    scores: dict[str, float | None]
    error: str | None = None
    metric_errors: dict[str, str] = Field(default_factory=dict)


class MetricSummary(BaseModel):
    """One row of the score table.

    Attributes:
        metric: The metric's label (native name or import path).
        mean: Mean score over all ``n`` examples; a failed example scores 0, as in ``dspy.Evaluate``.
        n: Examples evaluated.
        failed: Examples this metric could not score (the program failed, or the metric raised).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: str
    mean: float
    n: int
    failed: int


class ProgressCounter:
    """A thread-safe count of finished work items that a flow thread polls to update an artifact.

    Worker threads only bump the counter; Prefect's API is called from the thread that owns the run
    context, never from a pool or DSPy worker thread (they do not carry Prefect's context).
    """

    def __init__(self, total: int = 0, stage: str = "") -> None:
        self._lock = threading.Lock()
        self.total = total
        self.done = 0
        self.stage = stage

    def add(self, n: int = 1) -> None:
        """Count ``n`` more finished items."""
        with self._lock:
            self.done += n

    def set_stage(self, stage: str, total: int = 0) -> None:
        """Start a new stage with its own count."""
        with self._lock:
            self.stage, self.total, self.done = stage, total, 0

    def snapshot(self) -> tuple[str, int, int]:
        """``(stage, done, total)`` at this moment."""
        with self._lock:
            return self.stage, self.done, self.total


def load_program(step: Any) -> Module:
    """A fresh DSPy module for ``step``, with ``step.state`` loaded when given.

    `tasks.modules.build_module` caches one instance per configuration and shares it; compiling or
    loading state into it would change every other user's module, so this deep-copies it first.

    Args:
        step: A `flows.engine.spec.ModuleStep`.

    Raises:
        PipelineSpecError: The module cannot be built, or its state cannot be read or does not fit.
    """
    from tasks.modules import build_module

    # build_module loads the state and caches the module per configuration: copy before changing it.
    return build_module(step).deepcopy()


def input_keys_for(step: Any, input_keys: Sequence[str] | None = None) -> list[str]:
    """The example fields that are program inputs: ``input_keys`` or the signature's inputs.

    Raises:
        InputValidationError: No input keys given and the step has no signature to take them from.
    """
    if input_keys:
        return list(input_keys)
    spec = step.signature_spec()
    if spec is None:
        raise InputValidationError(
            f"{step.module} has no signature to take its input fields from; pass input_keys",
            [{"field": "input_keys", "message": "required for a user program", "input": None}],
        )
    return list(spec.input_names)


def output_keys_for(step: Any) -> list[str]:
    """The signature's output fields ([] for a user program without a signature)."""
    spec = step.signature_spec()
    return list(spec.output_names) if spec is not None else []


def to_examples(
    rows: Sequence[Mapping[str, Any]], input_keys: Sequence[str], what: str = "trainset"
) -> list[Example]:
    """``dspy.Example`` objects from rows, inputs marked; every problem reported before any LM call.

    Args:
        rows: The data rows.
        input_keys: Fields that are program inputs (every row must have them).
        what: The dataset's name for messages (``trainset``, ``valset``, ``devset``).

    Raises:
        InputValidationError: No rows, or rows that lack input fields (each such field and row named).
    """
    if not rows:
        raise InputValidationError(
            f"{what} is empty; it needs at least one example",
            [{"field": what, "message": "no rows", "input": None}],
        )
    problems = []
    for i, row in enumerate(rows):
        missing = [key for key in input_keys if key not in row]
        if missing:
            problems.append(
                {"field": ", ".join(missing), "message": f"{what} row {i} lacks it", "input": None}
            )
    if problems:
        first = problems[0]
        raise InputValidationError(
            f"{what}: {len(problems)} row(s) lack input field(s) of the program ({list(input_keys)}); "
            f"first: {first['message']}: {first['field']!r}",
            problems[:50],
        )
    return [Example(**dict(row)).with_inputs(*input_keys) for row in rows]


def resolve_metric(ref: str, *, field: str | None = None) -> Metric:
    """The DSPy metric ``(example, prediction, trace=None)`` a reference names.

    Args:
        ref: A native metric name (``exact_match``, ``f1``, ``passage_match``), a registered callable
            name, or a trusted import path ``pkg.mod:metric`` (see ``DSPEX_TRUSTED_IMPORT_ROOTS``).
        field: For ``exact_match`` and ``f1``: the field compared on both sides (the example's gold
            and the prediction's answer); default ``answer``.

    Raises:
        MetricError: An unknown metric, listing the native ones and how to name others.
    """
    from tasks.metrics import get_metric, metric_names

    if ref in metric_names():
        if ref == "passage_match":
            return get_metric(ref, gold_field=field or "answer")
        return get_metric(ref, gold_field=field or "answer", prediction_field=field or "answer")
    from tasks.callables import resolve_callable

    try:
        return resolve_callable(ref)
    except PipelineSpecError as exc:
        raise MetricError(
            f"unknown metric {ref!r}: native metrics are {', '.join(metric_names())}; others are named by a "
            f"registered callable or a trusted import path 'pkg.mod:fn' ({exc})"
        ) from exc


def _score(metric: Metric, example: Example, prediction: Any) -> float:
    value = metric(example, prediction, None)
    if isinstance(value, bool | int | float):
        return float(value)
    score = getattr(value, "score", None)  # dspy.Prediction(score=..., feedback=...) from GEPA metrics
    if isinstance(score, bool | int | float):
        return float(score)
    raise MetricError(f"a metric must return a number, got {type(value).__name__}: {value!r:.80}")


def _one(
    index: int,
    program: Module,
    example: Example,
    metrics: Mapping[str, Metric],
    lm: Any,
) -> ExampleResult:
    inputs = dict(example.inputs())
    labels = {k: v for k, v in example.items() if k not in inputs}
    try:
        with dspy_settings.context(lm=lm):
            prediction = program(**inputs)
    except Exception as exc:  # one example's failure is recorded; the others go on
        return ExampleResult(
            index=index,
            inputs=to_jsonable(inputs),
            labels=to_jsonable(labels),
            prediction=None,
            scores=dict.fromkeys(metrics),
            error=f"{type(exc).__name__}: {exc}",
        )
    scores: dict[str, float | None] = {}
    errors: dict[str, str] = {}
    for label, metric in metrics.items():
        try:
            scores[label] = _score(metric, example, prediction)
        except Exception as exc:  # a metric that cannot score this example; recorded per example
            scores[label] = None
            errors[label] = f"{type(exc).__name__}: {exc}"
    fields = dict(prediction.items()) if hasattr(prediction, "items") else {"output": prediction}
    return ExampleResult(
        index=index,
        inputs=to_jsonable(inputs),
        labels=to_jsonable(labels),
        prediction=to_jsonable(fields),
        scores=scores,
        metric_errors=errors,
    )


def evaluate_examples(
    program: Module,
    examples: Sequence[Example],
    metrics: Mapping[str, Metric],
    *,
    lm: Any,
    submit: Submit | None = None,
    progress: ProgressCounter | None = None,
    on_tick: Callable[[], None] | None = None,
) -> list[ExampleResult]:
    """Run ``program`` on every example and score it with every metric.

    Args:
        program: The DSPy module (called concurrently: DSPy modules are safe to call from threads).
        examples: Examples with their inputs marked.
        metrics: Label -> metric.
        lm: The LM, entered with ``dspy.context`` in each worker thread.
        submit: An executor's ``submit`` (a pool's); None runs the examples one by one here.
        progress: Counts finished examples.
        on_tick: Called from this thread about twice a second while examples run (progress reports
            go from here, the thread that has Prefect's run context).

    Returns:
        One `ExampleResult` per example, in order.
    """
    if submit is None:
        results = []
        for i, example in enumerate(examples):
            results.append(_one(i, program, example, metrics, lm))
            if progress is not None:
                progress.add()
        return results

    def job(i: int, example: Example) -> ExampleResult:
        result = _one(i, program, example, metrics, lm)
        if progress is not None:
            progress.add()
        return result

    futures = [submit(contextvars.copy_context().run, job, i, example) for i, example in enumerate(examples)]
    pending = set(futures)
    while pending:
        _, pending = wait(pending, timeout=_TICK_SECONDS, return_when=FIRST_EXCEPTION)
        if on_tick is not None:
            on_tick()
    return [future.result() for future in futures]


def summarize_scores(results: Sequence[ExampleResult], labels: Sequence[str]) -> list[MetricSummary]:
    """The score table: per metric, the mean (failures score 0), how many examples, how many failed."""
    n = len(results)
    table = []
    for label in labels:
        values = [r.scores.get(label) for r in results]
        scored = [v for v in values if v is not None]
        table.append(
            MetricSummary(metric=label, mean=sum(scored) / n if n else 0.0, n=n, failed=n - len(scored))
        )
    return table


@task(name="evaluate-program", cache_policy=NO_CACHE)
def run_evaluation(
    step: Any,
    rows: list[dict[str, Any]],
    metric_refs: list[str],
    *,
    input_keys: list[str] | None,
    lm: Any,
    submit: Submit | None,
    progress: ProgressCounter | None = None,
    on_tick: Callable[[], None] | None = None,
) -> tuple[list[ExampleResult], list[MetricSummary], float]:
    """Prefect task: load the program, run it over ``rows`` and score them.

    The examples run on ``submit`` (the general pool's executor); this task's own thread waits and
    calls ``on_tick`` about twice a second, so progress is reported from the thread that has
    Prefect's run context.

    Returns:
        The per-example results, the score table, and the wall time in seconds.
    """
    started = time.perf_counter()
    program = load_program(step)
    examples = to_examples(rows, input_keys_for(step, input_keys), "devset")
    metrics = {ref: resolve_metric(ref, field=metric_field_for(step)) for ref in metric_refs}
    if progress is not None:
        progress.set_stage("evaluate", len(examples))
    results = evaluate_examples(
        program, examples, metrics, lm=lm, submit=submit, progress=progress, on_tick=on_tick
    )
    return results, summarize_scores(results, list(metrics)), time.perf_counter() - started


def metric_field_for(step: Any) -> str:
    """The field native answer metrics compare: ``answer`` when the program has one, else its first output."""
    outputs = output_keys_for(step)
    return "answer" if "answer" in outputs or not outputs else outputs[0]
