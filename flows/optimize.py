"""The ``optimize`` flow: compile a DSPy program with a DSPy optimizer, on the optimizer pool.

Give it a program (a pipeline module step), a trainset (and optionally a valset), an optimizer
(see `tasks.optimize.OPTIMIZERS`; the registry is the allowlist) and a metric. It checks all of it
before any LM call, runs the compile as a Prefect task on the optimizer pool's executor, and writes:

* the compiled program's JSON state, as a JSON file (name it in a module step's ``state``) and as
  a payload, plus a markdown artifact (``optimized-program``) with both and a preview;
* a progress artifact (``optimize-progress``): score-before, compile (metric calls), score-after;
* a before/after score table artifact (``optimize-scores``).

Scoring before and after costs one program call per scoring-set example each time (2 x the valset,
or the trainset, in LM requests, besides the optimizer's own): ``score`` (default on) turns it off,
and the run's estimate line says what it adds (issue 24). The defaults are the demo's program and
data (`flows.evaluate.DEFAULT_PROGRAM`, `flows.evaluate.demo_rows`), so a scheduled run with the
offline LM has something to optimize (issue 26.3: it scored 0.0 -> 0.0).

    result = optimize_program({"module": "dspy.ChainOfThought", "signature": "question -> answer"},
                              trainset=rows, optimizer="BootstrapFewShot", metric="exact_match")
    result.program  # the module step with state=<the compiled state file>, ready for a pipeline
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from dspex.settings import get_settings
from flows.engine.params import LMParam, resolve_lm, safe_flow
from flows.engine.spec import ModuleStep
from flows.evaluate import DEFAULT_PROGRAM, ProgressArtifact, load_examples_rows, pick_pool, validate_program
from flows.telemetry.artifacts import artifact_key
from tasks.evaluate import (
    ProgressCounter,
    input_keys_for,
    metric_field_for,
    resolve_metric,
    to_examples,
)
from tasks.optimize import build_optimizer, resolve_optimizer, run_optimization, save_program_state
from tasks.payloads import PayloadRef

__all__ = ["OptimizeResult", "optimize_program"]

# Progress artifact: how the stages share 0..100 %.
_STAGES = {"score-before": (0.0, 10.0), "compile": (10.0, 90.0), "score-after": (90.0, 99.0)}


class OptimizeResult(BaseModel):
    """What an optimization produced.

    Attributes:
        program: The program step with ``state`` set to the compiled state file: run it in a
            pipeline, or pass it to the evaluate flow.
        state_uri: The compiled state as a JSON file (path or fsspec URL).
        state_ref: The same state as a payload.
        optimizer: The optimizer's name.
        metric: The metric optimized.
        score_before: Mean metric score before compiling (0..1), on ``scored_on``; None when
            ``score`` was off.
        score_after: The same after compiling.
        scored_on: ``valset`` or ``trainset``.
        trainset_size: Training examples.
        valset_size: Validation examples (0 when none was given).
        demos: Demos per predictor of the compiled program.
        metric_calls: Metric calls the optimizer made.
        lm: The LM used (never its key).
        pool: The pool the compile ran on.
        estimated_ms: The registry's estimate of the optimizer's duration before the run.
        duration_s: Wall time of the flow's work (scoring, compiling, saving).
    """

    model_config = ConfigDict(extra="forbid")

    program: ModuleStep
    state_uri: str
    state_ref: PayloadRef
    optimizer: str
    metric: str | None
    score_before: float | None
    score_after: float | None
    scored_on: str
    trainset_size: int
    valset_size: int
    demos: dict[str, int]
    metric_calls: int
    lm: dict[str, Any]
    pool: str
    estimated_ms: int | None = None
    duration_s: float = Field(ge=0)


def _rounded(score: float | None) -> float | str:
    return round(score, 4) if score is not None else "not scored"


def _shown(score: float | None) -> str:
    return f"{score:.4f}" if score is not None else "not scored"


def _preview(state_text: str, limit: int = 1200) -> str:
    return state_text if len(state_text) <= limit else state_text[:limit] + "\n... (truncated)"


@safe_flow(
    name="optimize",
    description="Compile a DSPy program with a DSPy optimizer on the optimizer pool; save its JSON state.",
    task_runner=ThreadPoolTaskRunner(max_workers=4),
    validate_parameters=True,
)
def optimize_program(
    program: ModuleStep = DEFAULT_PROGRAM,
    trainset: list[dict[str, Any]] | PayloadRef | str | SkipJsonSchema[Any] = "demo",
    valset: list[dict[str, Any]] | PayloadRef | str | SkipJsonSchema[Any] = None,
    optimizer: str = "BootstrapFewShot",
    metric: str | None = "exact_match",
    input_keys: list[str] | None = None,
    options: dict[str, Any] | None = None,
    compile_options: dict[str, Any] | None = None,
    lm: LMParam = None,
    name: str | None = None,
    score: bool = True,
) -> OptimizeResult:
    """Compile ``program`` with ``optimizer`` on ``trainset``.

    Args:
        program: The program as a pipeline module step (``state`` may name a starting state);
            default: `flows.evaluate.DEFAULT_PROGRAM`.
        trainset: Rows with the program's inputs and gold fields, a DataFrame, a `PayloadRef`, a
            dataset path/URL, or ``"demo"`` (the default: the bundled questions, with the demo's
            retrieved passages as ``context`` for a program that reads it; `flows.evaluate.demo_rows`).
        valset: Optional validation rows (same forms); scores and candidate selection use it.
        optimizer: LabeledFewShot, BootstrapFewShot, BootstrapFewShotWithRandomSearch, MIPROv2, COPRO,
            SIMBA or GEPA (GEPA and MIPROv2 when their optional dependency is installed).
        metric: A native metric name or a trusted import path; None only for LabeledFewShot (the
            scores then use exact match).
        input_keys: Which fields are inputs; default the signature's inputs.
        options: The optimizer's constructor options (JSON), passed through.
        compile_options: Keyword options of its ``compile`` (e.g. ``num_trials`` for MIPROv2).
        lm: The LM (an `LMConfig`, or a live DSPy LM from Python); default: the settings' LM.
            Never stored with a key.
        name: The saved state's file name (letters, digits, ``._-``); default from the program,
            optimizer and a unique id.
        score: Score the program before and after compiling (2 x the scoring set in LM requests);
            False skips both, and the scores are None.

    Raises:
        PipelineSpecError: A bad program, an unknown optimizer or options it rejects (before any LM call).
        MetricError: An unknown metric (before any LM call).
        ConfigurationError: The optimizer's optional dependency is not installed.
        InputValidationError: An empty trainset, or rows lacking input fields (before any LM call).
    """
    import registry
    from tasks.lm import describe_lm

    logger = get_run_logger()
    settings = get_settings()
    started = time.perf_counter()

    # Everything is checked before the first LM call.
    step = validate_program(program)
    short = resolve_optimizer(optimizer).__name__
    metric_ref = metric
    if metric_ref is not None:
        resolve_metric(metric_ref, field=metric_field_for(step))
    keys = input_keys_for(step, input_keys)
    train = to_examples(load_examples_rows(trainset, step), keys, "trainset")
    val = to_examples(load_examples_rows(valset, step), keys, "valset") if valset is not None else None
    chosen_lm = resolve_lm(lm, settings)
    threads = max(settings.pool_general_capacity, 1)
    build_optimizer(
        short, (lambda *a: 0.0) if metric_ref else None, options, lm=chosen_lm, num_threads=threads
    )
    lm_info = describe_lm(chosen_lm)

    registry_name = f"dspy.{short}"
    estimate = registry.estimate(registry_name, input_size=len(train))
    pool = pick_pool(registry.get_pool_type(registry_name), settings)
    scoring = len(val) if val else len(train)
    logger.info(
        "optimize %s with %s on %d examples (pool %s, estimate %d ms, LM %s); %s",
        step.module,
        short,
        len(train),
        pool.name,
        estimate.ms,
        lm_info.get("label") or lm_info.get("model"),
        f"scoring before and after adds 2 x {scoring} = {2 * scoring} program calls (score=false skips it)"
        if score
        else "no scoring before and after (score=false)",
    )
    counter = ProgressCounter()
    progress = ProgressArtifact(
        artifact_key("optimize-progress"), f"optimize {step.module} with {short}", _STAGES
    )
    compile_started = time.perf_counter()
    success = False
    try:
        compiled, outcome = run_optimization.submit(
            step,
            short,
            train,
            val,
            metric_ref,
            lm=chosen_lm,
            submit=pool.submit,
            options=options,
            compile_options=compile_options,
            num_threads=threads,
            progress=counter,
            on_tick=lambda: progress.tick(counter),
            score=score,
        ).result()
        success = True
    finally:
        registry.record_duration(
            registry_name,
            (time.perf_counter() - compile_started) * 1000,
            pool=pool.name,
            input_size=len(train),
            success=success,
        )

    file_name = name or artifact_key(step.name or "program", short, uuid.uuid4().hex[:12])
    saved = save_program_state(compiled, f"programs/{file_name}" if name is None else file_name)
    progress.update(100.0, f"optimize {step.module} with {short}: done")

    create_table_artifact(
        key=artifact_key("optimize-scores"),
        table=[
            {"stage": "before", "score": _rounded(outcome.score_before), "scored on": outcome.scored_on},
            {"stage": "after", "score": _rounded(outcome.score_after), "scored on": outcome.scored_on},
        ],
        description=f"{metric_ref or 'exact_match'} of {step.module} before and after {short} "
        f"({len(train)} train, {len(val or [])} val examples; LM: {lm_info.get('label') or lm_info.get('model')})",
    )
    state_text = json.dumps(json.loads(_read_text(saved.uri)), indent=2)
    create_markdown_artifact(
        key=artifact_key("optimized-program"),
        markdown="\n".join(
            [
                f"# Optimized `{step.module}` with {short}",
                "",
                f"- score ({metric_ref or 'exact_match'}, {outcome.scored_on}): "
                f"**{_shown(outcome.score_before)} -> {_shown(outcome.score_after)}**",
                f"- state file: `{saved.uri}` (use it as the module step's `state`)",
                f"- state payload: `{saved.ref.uri}`",
                f"- demos per predictor: {saved.demos}",
                f"- metric calls while compiling: {outcome.metric_calls}; compile {outcome.compile_seconds:.2f} s",
                f"- LM: `{lm_info.get('model')}`"
                + (" (offline, extractive, deterministic)" if lm_info.get("offline") else ""),
                "",
                "```json",
                _preview(state_text),
                "```",
            ]
        ),
        description=f"Compiled state of {step.module} ({short})",
    )
    logger.info(
        "optimize %s: %s %s -> %s on %s; state %s",
        short,
        metric_ref,
        _shown(outcome.score_before),
        _shown(outcome.score_after),
        outcome.scored_on,
        saved.uri,
    )
    return OptimizeResult(
        program=step.model_copy(update={"state": saved.uri}),
        state_uri=saved.uri,
        state_ref=saved.ref,
        optimizer=short,
        metric=metric_ref,
        score_before=outcome.score_before,
        score_after=outcome.score_after,
        scored_on=outcome.scored_on,
        trainset_size=len(train),
        valset_size=len(val or []),
        demos=saved.demos,
        metric_calls=outcome.metric_calls,
        lm=lm_info,
        pool=pool.name,
        estimated_ms=estimate.ms,
        duration_s=time.perf_counter() - started,
    )


def _read_text(uri: str) -> str:
    import fsspec

    with fsspec.open(uri, "rt", encoding="utf-8") as handle:
        return str(handle.read())
