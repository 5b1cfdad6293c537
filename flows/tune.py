"""The ``tune`` flow: search a spec's variables with Optuna against a metric on a dev set.

Each trial resolves the spec with the values Optuna proposes (`flows.engine.spec.resolve_spec`, so
every trial is checked before it runs) and evaluates it as ordinary ``run-pipeline`` subflow runs:
its batches route to their pools as usual, locally or to the workers of a distributed deployment
(``concurrency`` trials at a time fan out there). Trials are evaluated in **rungs** of rows: after
each rung the mean score so far is reported, and a trial that cannot win is pruned (``hopeless``:
even a perfect score on the rows left would not beat the best finished trial; ``median``: Optuna's
median rule). A combination already evaluated is not run again.

It writes a ``tune-trials`` table artifact (variables, score, rows, tokens, cost, duration, state,
Pareto membership) and a ``tune-best`` markdown artifact with the best concrete spec, which it also
logs and saves as a payload. With ``objective="score_and_cost"`` the study is multi-objective
(maximize score, minimize cost: USD when the LM is priced, else tokens, else seconds) and the artifact
marks the Pareto front. With ``optimize`` it then compiles one module step of the best spec with a
DSPy optimizer (the ``optimize`` flow) on the dev rows the best trial produced: tune the knobs, then
the prompts, in one flow.
"""

from __future__ import annotations

import contextvars
import json
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from prefect import get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic.json_schema import SkipJsonSchema

from dspex.exceptions import InputValidationError, VariableError
from flows.engine.modes import RunMode
from flows.engine.params import LMParam, safe_flow
from flows.engine.spec import PipelineSpec, resolve_spec
from flows.optimize import optimize_program
from flows.pipeline import load_rows, run_pipeline
from flows.tuning.trials import (
    Objective,
    TrialRecord,
    TuneOptimize,
    TuneResult,
    optimize_target,
    write_tune_artifacts,
)
from flows.tuning.variables import Variable
from tasks.payloads import PayloadRef, write_payload

__all__ = [
    "TrialRecord",
    "TuneOptimize",
    "TuneResult",
    "chain_optimizer",
    "default_tune_spec",
    "tune_pipeline",
]


def default_tune_spec() -> PipelineSpec:
    """The demo's spec with two variables: passages retrieved (``k``) and the reasoner."""
    return PipelineSpec.model_validate(
        {
            "name": "rag-tune",
            "description": "Retrieve k passages, answer with the chosen reasoner; k and reasoner are tuned.",
            "variables": {
                "k": {"int": [1, 5], "default": 3, "description": "Passages retrieved per question."},
                "reasoner": {
                    "choice": ["dspy.Predict", "dspy.ChainOfThought"],
                    "default": "dspy.ChainOfThought",
                    "description": "The module that answers.",
                },
            },
            "steps": [
                {"retrieve": "question", "k": "${k}", "corpus": "demo", "output": "context"},
                {
                    "name": "answer",
                    "module": "${reasoner}",
                    "signature": "context: list[str], question: str -> answer: str",
                },
            ],
            "continue_on_error": True,
        }
    )


def demo_devset() -> list[dict[str, Any]]:
    """The bundled questions, with ``gold`` = the answer and its aliases."""
    from tasks.retrieval import load_demo_questions

    return [
        {"id": q.get("id"), "question": q["question"], "gold": [q["answer"], *q.get("aliases", [])]}
        for q in load_demo_questions("all")
    ]


def _rungs(rungs: list[int] | None, n: int) -> list[int]:
    if rungs:
        if any(r < 1 for r in rungs) or rungs != sorted(rungs):
            raise InputValidationError(f"rungs must be increasing positive row counts, got {rungs}")
        return [r for r in rungs if r < n] + [n]
    points = sorted({math.ceil(n / 4), math.ceil(n / 2), n}) if n >= 8 else [n]
    return points


def _distribution(var: Variable) -> Any:
    import optuna

    if var.int_range is not None:
        return optuna.distributions.IntDistribution(var.int_range[0], var.int_range[1], log=var.log)
    if var.float_range is not None:
        return optuna.distributions.FloatDistribution(var.float_range[0], var.float_range[1], log=var.log)
    return optuna.distributions.CategoricalDistribution(list(var.choice or []))


class _Search:
    """The state of one search: what was evaluated, the best complete score, the trial records."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.memo: dict[str, tuple[str, float | None, Any]] = {}
        self.records: list[TrialRecord] = []
        self.best: float | None = None
        self.outputs: dict[int, list[dict[str, Any]]] = {}


@safe_flow(
    name="tune",
    description="Search a pipeline spec's variables with Optuna against a metric on a dev set "
    "(pruned in rungs of rows); save the best concrete spec.",
    task_runner=ThreadPoolTaskRunner(max_workers=32),
    validate_parameters=True,
)
def tune_pipeline(
    spec: PipelineSpec | None = None,
    devset: list[dict[str, Any]] | PayloadRef | str | SkipJsonSchema[Any] = None,
    metric: str = "exact_match",
    prediction: str = "answer",
    gold: str = "gold",
    n_trials: int = 30,
    rungs: list[int] | None = None,
    pruner: Literal["hopeless", "median", "none"] = "hopeless",
    objective: Objective = "score",
    concurrency: int = 1,
    seed: int | None = 0,
    timeout_s: float | None = None,
    optimize: TuneOptimize | None = None,
    lm: LMParam = None,
    mode: RunMode = "auto",
) -> TuneResult:
    """Tune ``spec``'s variables.

    Args:
        spec: A spec with ``variables``; default: the demo's retrieve -> answer spec over ``k`` and
            the reasoner.
        devset: Rows with the spec's inputs and the gold field (rows, a `PayloadRef`, a dataset path);
            default (or ``"demo"``): the bundled questions.
        metric: ``exact_match``, ``f1``, ``passage_match``, or a registered callable.
        prediction: The output row field scored.
        gold: The row field holding the gold answer(s).
        n_trials: Trials to run (fewer when ``timeout_s`` passes first).
        rungs: Row counts after which a trial reports and may be pruned; default quarter, half, all.
        pruner: ``hopeless`` (cannot beat the best even if perfect from here), ``median`` (Optuna's
            median rule) or ``none``. Multi-objective studies are never pruned.
        objective: ``score`` or ``score_and_cost`` (Pareto front of score vs cost).
        concurrency: Trials evaluated at a time (their batches fan out to the pools).
        seed: Seed of Optuna's sampler.
        timeout_s: Stop starting trials after this long.
        optimize: Then compile a module step of the best spec with a DSPy optimizer.
        lm: The LM (as for run-pipeline); default: the settings' LM.
        mode: ``auto``, ``local`` or ``distributed`` (as for run-pipeline).

    Raises:
        VariableError: The spec has no variables, or a trial's values do not resolve.
        MetricError: An unknown metric (before any trial).
        InputValidationError: An empty devset or bad rungs (before any trial).
    """
    import optuna

    from tasks.patterns.scoring import row_metric

    logger = get_run_logger()
    started = time.perf_counter()
    spec = spec if spec is not None else default_tune_spec()
    if n_trials < 1 or concurrency < 1:
        raise InputValidationError(f"n_trials and concurrency must be >= 1, got {n_trials} and {concurrency}")
    if not spec.variables:
        raise VariableError(f"spec {spec.name!r} declares no variables to tune")
    rows = demo_devset() if devset is None or devset == "demo" else load_rows(devset)
    if not rows:
        raise InputValidationError("tune needs a non-empty devset")
    missing = [i for i, r in enumerate(rows) if gold not in r]
    if missing:
        raise InputValidationError(f"devset rows {missing[:10]} lack the gold field {gold!r}")
    score_row = row_metric(metric, prediction, gold)
    multi = objective == "score_and_cost"
    # Rungs only matter to a pruner; without one a trial is one run over every row.
    points = _rungs(rungs, len(rows)) if pruner != "none" and not multi else [len(rows)]
    resolve_spec(spec)  # the defaults resolve (checked before any trial)
    if optimize is not None:
        optimize_target(resolve_spec(spec), optimize.step)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        directions=["maximize", "minimize"] if multi else ["maximize"],
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(n_trials // 3, 1))),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3) if pruner == "median" and not multi else None,
    )
    study.enqueue_trial({name: var.default_value() for name, var in spec.variables.items()})
    distributions = {name: _distribution(var) for name, var in spec.variables.items()}
    search = _Search()
    logger.info(
        "tune %s: %d trials over %s on %d rows (rungs %s), metric %s, objective %s",
        spec.name,
        n_trials,
        sorted(spec.variables),
        len(rows),
        points,
        metric,
        objective,
    )

    def one_trial(trial: Any) -> None:
        record, values = _run_trial(
            trial, spec, rows, points, score_row, search, lm, mode, pruner if not multi else "none"
        )
        with search.lock:
            search.records.append(record)
            if record.state in ("complete", "reused") and record.score is not None:
                search.best = record.score if search.best is None else max(search.best, record.score)
        state = {
            "complete": optuna.trial.TrialState.COMPLETE,
            "reused": optuna.trial.TrialState.COMPLETE,
            "pruned": optuna.trial.TrialState.PRUNED,
            "failed": optuna.trial.TrialState.FAIL,
        }[record.state]
        if state == optuna.trial.TrialState.COMPLETE:
            study.tell(trial, values if multi else values[0])
        else:
            study.tell(trial, state=state)

    asked = 0
    while asked < n_trials and not (timeout_s is not None and time.perf_counter() - started > timeout_s):
        wave = [study.ask(distributions) for _ in range(min(concurrency, n_trials - asked))]
        asked += len(wave)
        if len(wave) == 1:
            one_trial(wave[0])
            continue
        parent = contextvars.copy_context()
        with ThreadPoolExecutor(max_workers=len(wave), thread_name_prefix="dspex-tune") as pool:
            for future in [pool.submit(parent.copy().run, one_trial, t) for t in wave]:
                future.result()

    return _finish(
        spec, search, study, objective, metric, optimize, started, lm, mode, rows, gold, prediction
    )


def _run_trial(
    trial: Any,
    spec: PipelineSpec,
    rows: list[dict[str, Any]],
    points: list[int],
    score_row: Callable[[dict[str, Any]], float],
    search: _Search,
    lm: Any,
    mode: RunMode,
    pruner: str,
) -> tuple[TrialRecord, list[float]]:
    """Evaluate one trial in rungs; returns its record and objective values."""
    from tasks.usage import Usage

    values = dict(trial.params)
    key = json.dumps(values, sort_keys=True, default=str)
    started = time.perf_counter()
    with search.lock:
        seen = search.memo.get(key)
    if seen is not None and seen[0] == "complete":
        _, score, objective_values = seen
        record = TrialRecord(
            number=trial.number, state="reused", values=values, score=score, rows=0, tokens=0,
            cost_usd=None, duration_s=0.0,
        )  # fmt: skip
        return record, objective_values
    try:
        concrete = resolve_spec(spec, values)
    except VariableError as exc:
        return _failed(trial.number, values, started, exc), [0.0]
    scores: list[float] = []
    outputs: list[dict[str, Any]] = []
    usages: list[Usage] = []
    done = 0
    state: Literal["complete", "pruned", "failed"] = "complete"
    error = None
    for step, upto in enumerate(points):
        chunk = rows[done:upto]
        try:
            result = run_pipeline.with_options(flow_run_name=f"{spec.name}-trial-{trial.number}-rung-{step}")(
                concrete, data=[dict(r) for r in chunk], lm=lm, mode=mode, continue_on_error=True
            )
        except Exception as exc:  # a trial that cannot run is a failed trial, not a failed search
            state, error = "failed", f"{type(exc).__name__}: {exc}"[:500]
            break
        # What the run's steps paid, wherever their batches ran (rows resumed from earlier runs cost 0).
        usages.extend(record.usage for record in result.summary.steps)
        out = result.rows()
        outputs.extend(out)
        scores.extend(0.0 if "_error" in r else _safe(score_row, r) for r in out)
        done = upto
        mean = sum(scores) / len(scores)
        if done >= len(rows) or pruner == "none":
            continue
        trial.report(mean, done)
        if pruner == "median" and trial.should_prune():
            state = "pruned"
            break
        if pruner == "hopeless":
            with search.lock:
                best = search.best
            if best is not None and (sum(scores) + (len(rows) - done)) / len(rows) < best - 1e-12:
                state = "pruned"
                break
    usage = Usage.total(usages)
    score = sum(scores) / len(scores) if scores else None
    cost = usage.cost_usd if usage.requests and usage.cost_known else None
    cost_value = cost if cost is not None else (usage.total_tokens or (time.perf_counter() - started))
    objective_values = [score or 0.0, float(cost_value)]
    with search.lock:
        search.memo[key] = (state, score, objective_values)
        if state == "complete":
            search.outputs[trial.number] = outputs
    record = TrialRecord(
        number=trial.number,
        state=state,
        values=values,
        score=round(score, 6) if score is not None else None,
        rows=done if state != "failed" else len(outputs),
        tokens=usage.total_tokens,
        cost_usd=cost,
        duration_s=round(time.perf_counter() - started, 3),
        error=error,
    )
    return record, objective_values


def _safe(score_row: Callable[[dict[str, Any]], float], row: dict[str, Any]) -> float:
    try:
        return min(max(float(score_row(row)), 0.0), 1.0)
    except (ValueError, TypeError, KeyError):  # an unscorable row (MetricError is a ValueError) scores 0
        return 0.0


def _failed(number: int, values: dict[str, Any], started: float, exc: Exception) -> TrialRecord:
    return TrialRecord(
        number=number, state="failed", values=values, score=None, rows=0, tokens=0, cost_usd=None,
        duration_s=round(time.perf_counter() - started, 3), error=str(exc)[:500],
    )  # fmt: skip


def _finish(
    spec: PipelineSpec,
    search: _Search,
    study: Any,
    objective: Objective,
    metric: str,
    optimize: TuneOptimize | None,
    started: float,
    lm: Any,
    mode: RunMode,
    rows: list[dict[str, Any]],
    gold: str,
    prediction: str,
) -> TuneResult:
    logger = get_run_logger()
    records = sorted(search.records, key=lambda r: r.number)
    complete = [r for r in records if r.state in ("complete", "reused") and r.score is not None]
    if not complete:
        errors = "; ".join(sorted({r.error or "" for r in records if r.error}))[:1000]
        raise VariableError(f"no trial of {spec.name!r} completed ({len(records)} tried): {errors}")
    pareto: list[int] = []
    if objective == "score_and_cost":
        pareto = sorted(t.number for t in study.best_trials)
        for record in records:
            record.pareto = record.number in pareto
    top = max(r.score or 0.0 for r in complete)
    best = min((r for r in complete if r.score == top), key=lambda r: r.number)
    best_spec = resolve_spec(spec, best.values)
    optimized = None
    if optimize is not None:
        produced = search.outputs.get(best.number)
        if produced is None:  # the best was a reused trial: its first evaluation holds the rows
            twin = next(
                (r.number for r in records if r.values == best.values and r.number in search.outputs), None
            )
            produced = search.outputs.get(twin, []) if twin is not None else []
        best_spec, optimized = chain_optimizer(best_spec, optimize, produced, metric, gold, prediction, lm)
    spec_ref = write_payload(best_spec.model_dump(mode="json"), format="msgpack")
    spec_json = best_spec.model_dump_json(indent=2)
    elapsed = time.perf_counter() - started
    write_tune_artifacts(spec, records, best, best_spec, spec_ref, objective, metric, spec_json, optimized)
    logger.info(
        "tune %s: best %s = %.4f (%s) after %d trials (%d pruned); spec %s\n%s",
        spec.name,
        metric,
        best.score,
        best.values,
        len(records),
        sum(r.state == "pruned" for r in records),
        spec_ref.uri,
        spec_json,
    )
    return TuneResult(
        best_values=best.values,
        best_score=float(best.score or 0.0),
        best_spec=best_spec,
        best_spec_ref=spec_ref,
        trials=records,
        pareto=pareto,
        objective=objective,
        metric=metric,
        pruned=sum(r.state == "pruned" for r in records),
        duration_s=round(elapsed, 3),
        trials_per_minute=round(len(records) / elapsed * 60, 2) if elapsed > 0 else 0.0,
        optimized=optimized,
    )


def chain_optimizer(
    best_spec: PipelineSpec,
    optimize: TuneOptimize,
    produced: list[dict[str, Any]],
    metric: str,
    gold: str,
    prediction: str,
    lm: Any,
) -> tuple[PipelineSpec, dict[str, Any]]:
    """Compile the named step on the dev rows the best trial produced (its inputs as the pipeline
    computed them, the gold answer as the label); return the spec with the compiled state."""
    step = optimize_target(best_spec, optimize.step)
    spec_inputs = step.signature_spec()
    names = list(spec_inputs.input_names) if spec_inputs is not None else list(step.inputs)
    label = next(iter(spec_inputs.output_names), prediction) if spec_inputs is not None else prediction
    train = []
    for row in produced:
        if "_error" in row:
            continue
        gold_value = row.get(gold)
        if isinstance(gold_value, list):
            gold_value = gold_value[0] if gold_value else None
        if gold_value is None:
            continue
        example = {name: row.get(step.inputs.get(name, name)) for name in names}
        train.append({**example, label: gold_value})
    result = optimize_program(
        program=step,
        trainset=train,
        optimizer=optimize.optimizer,
        metric=metric if metric in ("exact_match", "f1") else "exact_match",
        options=optimize.options or None,
        compile_options=optimize.compile_options or None,
        lm=lm,
    )
    compiled = best_spec.model_dump(mode="json")
    _set_state(compiled["steps"], optimize.step, result.state_uri)
    new_spec = PipelineSpec.model_validate(compiled)
    return new_spec, {
        "step": optimize.step,
        "optimizer": result.optimizer,
        "state_uri": result.state_uri,
        "score_before": result.score_before,
        "score_after": result.score_after,
        "trainset_size": result.trainset_size,
    }


def _set_state(steps: list[dict[str, Any]], name: str, state: str) -> bool:
    for step in steps:
        if step.get("name") == name:
            step["state"] = state
            return True
        for key in ("then", "otherwise", "steps"):
            if isinstance(step.get(key), list) and _set_state(step[key], name, state):
                return True
        if isinstance(step.get("parallel"), dict):
            for branch in step["parallel"].values():
                if _set_state(branch, name, state):
                    return True
    return False
