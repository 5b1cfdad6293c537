"""Compile a DSPy program with one of DSPy's optimizers: the unit of work of the optimizer pool.

The optimizers a flow may name are DSPy's own, and only those the registry lists in the
``optimization`` category (the registry is the allowlist) and this module knows how to call:

==================================  ===========================================================
optimizer                           notes
==================================  ===========================================================
LabeledFewShot                      no metric calls; takes labelled demos
BootstrapFewShot                    bootstraps demos that pass the metric
BootstrapFewShotWithRandomSearch    several bootstrapped candidates, best on the valset
MIPROv2                             needs ``optuna`` (``pip install 'dspy[optuna]'``)
COPRO                               proposes instructions; ``eval_kwargs`` given for you
SIMBA                               stochastic mini-batch ascent
GEPA                                needs ``gepa`` (``pip install gepa``); reflection LM
                                    defaults to the task's LM
==================================  ===========================================================

`compile_program` is a plain function (unit-testable without Prefect): it scores the program
before, compiles a fresh copy inside ``dspy.context(lm=...)`` (never ``dspy.configure`` from a
worker thread), and scores it after. `save_program_state` writes the compiled state as JSON (never
pickle): a JSON file that ``ModuleStep.state`` can name, and a `PayloadRef` of the same state.
`run_optimization` is the Prefect task that runs the compile on the optimizer pool's executor.
"""

from __future__ import annotations

import contextvars
import importlib.util
import inspect
import json
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, wait
from typing import Any

from dspy.dsp.utils.settings import settings as dspy_settings
from dspy.primitives.example import Example
from dspy.primitives.module import Module
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from dspex.exceptions import ConfigurationError, PipelineSpecError, UnknownModuleError
from tasks.evaluate import ProgressCounter, evaluate_examples, summarize_scores

__all__ = [
    "OPTIMIZERS",
    "CompileOutcome",
    "SavedState",
    "build_optimizer",
    "compile_program",
    "optimizer_names",
    "resolve_optimizer",
    "run_optimization",
    "save_program_state",
]

#: The optimizers the optimize flow knows how to call, by short name.
OPTIMIZERS: tuple[str, ...] = (
    "LabeledFewShot",
    "BootstrapFewShot",
    "BootstrapFewShotWithRandomSearch",
    "MIPROv2",
    "COPRO",
    "SIMBA",
    "GEPA",
)
# Optional dependencies: (importable module, how to install it).
_DEPENDENCIES = {"GEPA": ("gepa", "pip install gepa"), "MIPROv2": ("optuna", "pip install 'dspy[optuna]'")}
_NO_METRIC = {"LabeledFewShot"}
_TICK_SECONDS = 0.5

Metric = Callable[..., Any]
Submit = Callable[..., "Future[Any]"]


class CompileOutcome(BaseModel):
    """What a compile produced (the program itself travels separately: it is a live object).

    Attributes:
        optimizer: The optimizer's short name.
        score_before: Mean metric score of the program as given, on the scoring set (0..1); None
            when scoring was off (``score=False``).
        score_after: The same, for the compiled program.
        scored_on: ``valset`` when one was given, else ``trainset``.
        metric_calls: Metric calls the optimizer itself made while compiling.
        compile_seconds: Wall time of the compile alone.
        seconds: Wall time of scoring before, compiling and scoring after.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    optimizer: str
    score_before: float | None
    score_after: float | None
    scored_on: str
    metric_calls: int
    compile_seconds: float
    seconds: float


class SavedState(BaseModel):
    """Where a compiled program's state was written.

    Attributes:
        uri: The JSON file (path or fsspec URL) that ``ModuleStep.state`` can name.
        ref: A `tasks.payloads.PayloadRef` of the same state (MessagePack dict).
        demos: Demos per predictor, by predictor name.
        instructions: The instructions per predictor, by predictor name.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str
    ref: Any = Field(description="tasks.payloads.PayloadRef of the state.")
    demos: dict[str, int]
    instructions: dict[str, str]


def optimizer_names() -> list[str]:
    """The optimizers the optimize flow accepts: ours that the registry lists as optimizers."""
    import registry

    listed = set(registry.find_by_category("optimization"))
    return [name for name in OPTIMIZERS if f"dspy.{name}" in listed]


def resolve_optimizer(name: str) -> type:
    """The optimizer class for ``name`` (``"MIPROv2"`` or ``"dspy.MIPROv2"``), checked against the registry.

    Raises:
        PipelineSpecError: Not an optimizer this flow runs (lists the valid ones).
        ConfigurationError: Its optional dependency is not installed (says what to install).
    """
    import registry
    from tasks.modules import module_class

    short = name.removeprefix("dspy.")
    valid = optimizer_names()
    if short not in valid:
        raise PipelineSpecError(
            f"unknown optimizer {name!r}; valid optimizers: {', '.join(valid)}", step="optimizer"
        )
    try:
        info = registry.get_module(f"dspy.{short}")
    except UnknownModuleError as exc:  # the registry changed since optimizer_names()
        raise PipelineSpecError(f"{exc}; valid optimizers: {', '.join(valid)}", step="optimizer") from exc
    if info.category != "optimization":
        raise PipelineSpecError(
            f"dspy.{short} is not an optimizer (category {info.category})", step="optimizer"
        )
    if short in _DEPENDENCIES:
        module, install = _DEPENDENCIES[short]
        if importlib.util.find_spec(module) is None:
            raise ConfigurationError(
                f"optimizer {short} needs the optional package {module!r}, which is not installed; "
                f"enable it with `{install}`"
            )
    return module_class(f"dspy.{short}")


def _accepts(cls: type, name: str) -> bool:
    parameters = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
    return name in parameters


class _CountingMetric:
    """A metric that counts its calls; keeps the wrapped metric's name for DSPy's tables."""

    def __init__(self, metric: Metric, *counters: ProgressCounter) -> None:
        self.metric = metric
        self.counters = counters
        self.__name__ = getattr(metric, "__name__", type(metric).__name__)

    def __call__(self, example: Any, prediction: Any, trace: Any = None) -> Any:
        try:
            return self.metric(example, prediction, trace)
        finally:
            for counter in self.counters:
                counter.add()


class _FeedbackMetric(_CountingMetric):
    """GEPA calls its metric with ``(gold, pred, trace, pred_name, pred_trace)``; ours take three."""

    def __call__(
        self, gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None
    ) -> Any:
        return super().__call__(gold, pred, trace)


def build_optimizer(
    name: str, metric: Metric | None, options: Mapping[str, Any] | None, *, lm: Any, num_threads: int
) -> Any:
    """An optimizer instance from its name, metric and JSON options.

    Args:
        name: The optimizer (see `optimizer_names`).
        metric: The (counting) metric; unused by LabeledFewShot.
        options: Constructor options (JSON values), passed through.
        lm: The task's LM: GEPA's ``reflection_lm`` and MIPROv2's prompt and task models unless the
            options name others.
        num_threads: Default ``num_threads`` for optimizers that take one.

    Raises:
        PipelineSpecError: Unknown optimizer, or options it rejects.
        ConfigurationError: Its optional dependency is missing.
    """
    cls = resolve_optimizer(name)
    short = cls.__name__
    kwargs = dict(options or {})
    if short not in _NO_METRIC:
        if metric is None:
            raise PipelineSpecError(f"{short} needs a metric", step="optimizer")
        kwargs["metric"] = metric
    if _accepts(cls, "num_threads"):
        kwargs.setdefault("num_threads", num_threads)
    if short == "MIPROv2":  # it checks for an LM when built, before dspy.context is entered
        kwargs.setdefault("prompt_model", lm)
        kwargs.setdefault("task_model", lm)
    if short == "GEPA":
        kwargs.setdefault("reflection_lm", lm)
        if not any(k in kwargs for k in ("auto", "max_full_evals", "max_metric_calls")):
            kwargs["auto"] = "light"
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        shown = sorted(k for k in kwargs if k not in ("metric", "reflection_lm"))
        raise PipelineSpecError(f"{short} rejected its options {shown}: {exc}", step="optimizer") from exc


def _compile_kwargs(
    short: str,
    trainset: list[Example],
    valset: list[Example] | None,
    options: Mapping[str, Any],
    num_threads: int,
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trainset": trainset, **options}
    if valset is not None and short in ("BootstrapFewShotWithRandomSearch", "MIPROv2", "GEPA"):
        kwargs.setdefault("valset", valset)
    if short == "COPRO":
        kwargs.setdefault("eval_kwargs", {"num_threads": num_threads, "display_progress": False})
    if short == "MIPROv2":
        kwargs.setdefault("requires_permission_to_run", False)
    return kwargs


def compile_program(
    program: Module,
    optimizer: str,
    trainset: list[Example],
    valset: list[Example] | None,
    metric: Metric | None,
    *,
    lm: Any,
    options: Mapping[str, Any] | None = None,
    compile_options: Mapping[str, Any] | None = None,
    num_threads: int = 1,
    score_metric: Metric | None = None,
    progress: ProgressCounter | None = None,
    score: bool = True,
) -> tuple[Module, CompileOutcome]:
    """Score ``program``, compile a copy of it with ``optimizer``, score the result.

    Args:
        program: The student program (not modified: DSPy's optimizers compile a copy, and so do we).
        optimizer: The optimizer's name.
        trainset: Training examples (inputs marked).
        valset: Validation examples; the before/after scores use it, else the trainset.
        metric: The metric the optimizer optimizes (None only for LabeledFewShot).
        lm: The LM, entered with ``dspy.context`` for the whole job.
        options: Optimizer constructor options.
        compile_options: Keyword options of ``compile`` (e.g. ``num_trials`` for MIPROv2).
        num_threads: Threads for scoring and for optimizers that take ``num_threads``.
        score_metric: The metric of the before/after scores; default ``metric`` (exact match when
            there is none).
        progress: Stages ``score-before``, ``compile`` (counting metric calls), ``score-after``.
        score: Score before and after (one program call per scoring-set example each time: 2 x
            the scoring set in LM requests, besides the optimizer's own); False skips both.

    Returns:
        The compiled program and the `CompileOutcome`.

    Raises:
        PipelineSpecError: Unknown optimizer or rejected options (before any LM call).
        ConfigurationError: The optimizer's optional dependency is missing.
    """
    started = time.perf_counter()
    counter = progress or ProgressCounter()
    calls = ProgressCounter()
    short = resolve_optimizer(optimizer).__name__
    wrapper = _FeedbackMetric if short == "GEPA" else _CountingMetric
    counting = None if metric is None else wrapper(metric, calls, counter)
    opt = build_optimizer(short, counting, options, lm=lm, num_threads=num_threads)
    scorer = score_metric or metric
    if scorer is None:
        from tasks.metrics import get_metric

        scorer = get_metric("exact_match")
    scoring_set = valset if valset else trainset
    with dspy_settings.context(lm=lm):
        before = None
        if score:
            counter.set_stage("score-before", len(scoring_set))
            before = _mean_score(program, scoring_set, scorer, lm, num_threads, counter)
        counter.set_stage("compile", 0)
        compile_started = time.perf_counter()
        student = program.deepcopy()
        kwargs = _compile_kwargs(short, trainset, valset, compile_options or {}, num_threads)
        try:
            compiled = opt.compile(student, **kwargs)
        except TypeError as exc:
            if "compile()" not in str(exc):
                raise
            raise PipelineSpecError(
                f"{short}.compile rejected its options {sorted(compile_options or {})}: {exc}",
                step="optimizer",
            ) from exc
        compile_seconds = time.perf_counter() - compile_started
        after = None
        if score:
            counter.set_stage("score-after", len(scoring_set))
            after = _mean_score(compiled, scoring_set, scorer, lm, num_threads, counter)
    outcome = CompileOutcome(
        optimizer=short,
        score_before=before,
        score_after=after,
        scored_on="valset" if valset else "trainset",
        metric_calls=calls.snapshot()[1],
        compile_seconds=compile_seconds,
        seconds=time.perf_counter() - started,
    )
    return compiled, outcome


def _mean_score(
    program: Module,
    examples: Sequence[Example],
    metric: Metric,
    lm: Any,
    threads: int,
    counter: ProgressCounter,
) -> float:
    from concurrent.futures import ThreadPoolExecutor

    # Scoring inside the optimizer job: its own short-lived threads, as dspy.Evaluate would use.
    with ThreadPoolExecutor(max_workers=max(threads, 1), thread_name_prefix="dspex-score") as executor:
        results = evaluate_examples(
            program, examples, {"score": metric}, lm=lm, submit=executor.submit, progress=counter
        )
    return summarize_scores(results, ["score"])[0].mean


def _predictor_facts(program: Module) -> tuple[dict[str, int], dict[str, str]]:
    demos = {name: len(p.demos) for name, p in program.named_predictors()}
    instructions = {name: str(p.signature.instructions) for name, p in program.named_predictors()}
    return demos, instructions


def save_program_state(program: Module, name: str, base_url: str | None = None) -> SavedState:
    """Write ``program.dump_state()`` as a JSON file and as a payload.

    Args:
        program: The (compiled) program.
        name: A safe relative file name without extension (e.g. ``programs/qa-bootstrap-<run id>``).
        base_url: Payload storage URL; default the settings' payload URL.

    Raises:
        PayloadError: The storage cannot be written, or the state is not JSON-able.
    """
    from dspex.exceptions import PayloadError
    from tasks.payloads import payload_uri, storage, write_payload

    state = program.dump_state()
    try:
        text = json.dumps(state, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"the compiled program's state is not JSON-able: {exc}") from exc
    # The payload route (msgpack) and the JSON file name differ only by extension.
    ref = write_payload(json.loads(text), base_url, "msgpack", name=name, inline_max_bytes=0)
    uri = payload_uri(name, "msgpack", base_url).removesuffix(".msgpack") + ".json"
    storage.write_atomic(uri, text.encode("utf-8"))
    demos, instructions = _predictor_facts(program)
    return SavedState(uri=uri, ref=ref, demos=demos, instructions=instructions)


@task(name="compile-program", cache_policy=NO_CACHE)
def run_optimization(
    step: Any,
    optimizer: str,
    trainset: list[Any],
    valset: list[Any] | None,
    metric_ref: str | None,
    *,
    lm: Any,
    submit: Submit,
    options: Mapping[str, Any] | None = None,
    compile_options: Mapping[str, Any] | None = None,
    num_threads: int = 1,
    progress: ProgressCounter | None = None,
    on_tick: Callable[[], None] | None = None,
    score: bool = True,
) -> tuple[Any, CompileOutcome]:
    """Prefect task: build a fresh program and compile it on ``submit`` (the optimizer pool's executor).

    This task's own thread waits for the job and calls ``on_tick`` about twice a second, so the
    progress artifact is updated from the thread that has Prefect's run context.
    """
    from tasks.evaluate import load_program, metric_field_for, resolve_metric

    program = load_program(step)
    metric = None if metric_ref is None else resolve_metric(metric_ref, field=metric_field_for(step))
    context = contextvars.copy_context()
    future = submit(
        context.run,
        compile_program,
        program,
        optimizer,
        trainset,
        valset,
        metric,
        lm=lm,
        options=options,
        compile_options=compile_options,
        num_threads=num_threads,
        progress=progress,
        score=score,
    )
    while not future.done():
        wait([future], timeout=_TICK_SECONDS)
        if on_tick is not None:
            on_tick()
    return future.result()
