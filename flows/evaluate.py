"""The ``evaluate`` flow: score a program (optionally with compiled state) on a devset.

The program is described exactly like a pipeline module step (``{"module": "dspy.ChainOfThought",
"signature": "question -> answer"}``, or a registered ``pkg.mod:Program``), with ``state`` naming
a compiled state file (what the ``optimize`` flow returns). Examples run on the general pool's
executor; each metric scores every example. The flow writes a score table artifact (one row per
metric: mean, n, failed), a progress artifact, and the per-example results as a payload.

In distributed mode the flow itself is what a deployment runs on a work pool; within that run,
examples use the local bounded executor of the pool it names.

The defaults are the demo's (issue 26.3: the scheduled defaults scored 0.0 while the demo scored
EM 0.525): `DEFAULT_PROGRAM` is the demo's reader (``context, question -> answer`` with chain of
thought), and the ``"demo"`` dataset is the bundled questions with the demo's retrieved passages
as ``context`` and every accepted answer as gold (`demo_rows`), so a quick run or a schedule with
the offline LM scores what the demo scores.
"""

from __future__ import annotations

import time
from typing import Any, cast
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import SkipJsonSchema

from dspex.exceptions import PipelineSpecError
from dspex.settings import Settings, get_settings
from flows.engine.params import LMParam, resolve_lm, safe_flow
from flows.engine.pools import LocalPool, get_local_pool
from flows.engine.spec import ModuleStep, PipelineSpec, RetrieveStep
from flows.pipeline import load_rows
from flows.telemetry.artifacts import artifact_key
from tasks.evaluate import (
    MetricSummary,
    ProgressCounter,
    input_keys_for,
    metric_field_for,
    resolve_metric,
    run_evaluation,
    to_examples,
)
from tasks.payloads import PayloadRef, read_rows, write_payload
from tasks.retrieval.demo import DemoSplit

__all__ = [
    "DEFAULT_PROGRAM",
    "DEMO_PASSAGES",
    "EvaluateResult",
    "ProgressArtifact",
    "demo_rows",
    "evaluate_program",
    "load_examples_rows",
    "pick_pool",
    "validate_program",
]


#: The program a quick run evaluates (and optimizes): the demo's reader, chain-of-thought QA over
#: retrieved passages (`flows.rag.rag_spec`'s module step).
DEFAULT_PROGRAM = ModuleStep(
    module="dspy.ChainOfThought", signature="context: list[str], question: str -> answer: str"
)
#: Passages per question the ``"demo"`` dataset carries in ``context`` (the demo's ``k``).
DEMO_PASSAGES = 3


def demo_rows(split: DemoSplit = "all", k: int = DEMO_PASSAGES) -> list[dict[str, Any]]:
    """The demo's data for evaluation and optimization: each bundled question, its top-``k``
    passages of the bundled corpus (retrieved as the demo retrieves them) and its gold answers.

    Args:
        split: ``all``, ``train`` or ``dev`` (`tasks.retrieval.load_demo_questions`).
        k: Passages per question.

    Returns:
        Rows ``{"id", "question", "context": [passage, ...], "answer": [gold, alias, ...]}``.
    """
    from tasks.retrieval import load_demo_questions
    from tasks.retrieve import retrieve_batch

    questions = load_demo_questions(split)
    step = RetrieveStep(retrieve="question", k=k, corpus="demo", output="context")
    passages, _ms = retrieve_batch(step, [q["question"] for q in questions])
    return [
        {
            "id": q.get("id"),
            "question": q["question"],
            "context": found,
            "answer": [q["answer"], *q.get("aliases", [])],  # exact match and F1 take any of them
        }
        for q, found in zip(questions, passages, strict=True)
    ]


def load_examples_rows(data: Any, step: ModuleStep, split: DemoSplit = "all") -> list[dict[str, Any]]:
    """The rows of an evaluate/optimize dataset: ``"demo"`` is `demo_rows` when ``step`` reads
    ``context`` (the demo's program), else the bundled questions as `flows.pipeline.load_rows` gives."""
    spec = step.signature_spec()
    if data == "demo" and spec is not None and "context" in spec.input_names:
        return demo_rows(split)
    return load_rows(data)


class EvaluateResult(BaseModel):
    """What an evaluation produced.

    Attributes:
        scores: The score table, one row per metric.
        results: Per-example results (inputs, labels, prediction, scores, error), as a payload.
        examples: Examples evaluated.
        failed: Examples on which the program itself failed.
        program: The module evaluated, and its state when one was loaded.
        lm: The LM used (never its key).
        pool: The pool the examples ran on.
        duration_s: Wall time of the evaluation.
    """

    model_config = ConfigDict(extra="forbid")

    scores: list[MetricSummary]
    results: PayloadRef
    examples: int
    failed: int
    program: dict[str, Any]
    lm: dict[str, Any]
    pool: str
    duration_s: float = Field(ge=0)

    def score(self, metric: str) -> float:
        """The mean score of ``metric``."""
        for row in self.scores:
            if row.metric == metric:
                return row.mean
        raise KeyError(metric)

    def rows(self) -> list[dict[str, Any]]:
        """Read the per-example results back."""
        return read_rows(self.results)


def validate_program(program: ModuleStep | dict[str, Any]) -> ModuleStep:
    """Check a program step the way a pipeline spec checks its steps (registry, signature, mapping).

    Raises:
        PipelineSpecError: An unknown module, an optimizer, a bad signature (names the step).
    """
    try:
        spec = PipelineSpec.model_validate({"name": "program", "steps": [program]})
    except ValidationError as exc:  # surface the spec's own typed error, which names the step
        for error in exc.errors():
            original = (error.get("ctx") or {}).get("error")
            if isinstance(original, PipelineSpecError):
                raise original from None
        raise PipelineSpecError(f"invalid program: {exc}") from exc
    step = spec.steps[0]
    if not isinstance(step, ModuleStep):
        raise PipelineSpecError("the program must be a module step ({'module': ..., 'signature': ...})")
    return step


def pick_pool(name: str, settings: Settings) -> LocalPool:
    """The local pool ``name``, or the general pool when it cannot take work and the policy allows.

    Raises:
        PoolUnavailableError: It cannot take work and ``DSPEX_FALLBACK_POLICY`` is ``fail``.
    """
    from flows.engine.router import fallback_pool

    pool = get_local_pool(name, settings)
    ok, reason = pool.availability()
    if ok:
        return pool
    chosen = fallback_pool(name, reason, settings, lambda p: get_local_pool(p, settings).availability())
    get_run_logger().warning("pool %s cannot take work (%s); using the %s pool", name, reason, chosen)
    return get_local_pool(chosen, settings)


class ProgressArtifact:
    """A Prefect progress artifact that follows a `ProgressCounter`'s stages.

    Args:
        key: The artifact key.
        description: Shown with the artifact.
        stages: Stage name -> (start %, end %); a stage with no known total moves towards its end
            as its count grows, never reaching it.
    """

    def __init__(self, key: str, description: str, stages: dict[str, tuple[float, float]]) -> None:
        self.stages = stages
        self.description = description
        self.last = -1.0
        self.artifact_id = create_progress_artifact(progress=0.0, key=key, description=description)

    def percent(self, stage: str, done: int, total: int) -> float:
        """The overall percentage for ``done`` of ``total`` in ``stage``."""
        start, end = self.stages.get(stage, (0.0, 0.0))
        # An unknown total (an optimizer's metric calls) approaches the stage's end, never reaching it.
        fraction = min(done / total, 1.0) if total > 0 else done / (done + 50.0)
        return round(start + (end - start) * fraction, 1)

    def tick(self, counter: ProgressCounter) -> None:
        """Update the artifact from the counter (only when it moved)."""
        stage, done, total = counter.snapshot()
        self.update(
            self.percent(stage, done, total),
            f"{self.description}: {stage} {done}" + (f"/{total}" if total else ""),
        )

    def update(self, percent: float, description: str | None = None) -> None:
        """Set the progress (0..100) and, optionally, the description."""
        if self.artifact_id is None or percent <= self.last:
            return
        self.last = percent
        update_progress_artifact(
            artifact_id=cast(UUID, self.artifact_id), progress=percent, description=description
        )


@safe_flow(
    name="evaluate",
    description="Score a DSPy program (optionally with compiled state) on a devset with one or more metrics.",
    validate_parameters=True,
)
def evaluate_program(
    program: ModuleStep = DEFAULT_PROGRAM,
    devset: list[dict[str, Any]] | PayloadRef | str | SkipJsonSchema[Any] = "demo",
    metrics: list[str] | None = None,
    input_keys: list[str] | None = None,
    lm: LMParam = None,
) -> EvaluateResult:
    """Evaluate ``program`` on ``devset``.

    Args:
        program: The program as a module step; ``state`` names compiled state (a JSON file or a
            PayloadRef's JSON) to load first. Default: `DEFAULT_PROGRAM`.
        devset: Rows (with the program's inputs and the gold fields), a DataFrame, a `PayloadRef`,
            a dataset path/URL, or ``"demo"`` (the default: the bundled questions, with the demo's
            retrieved passages as ``context`` for a program that reads it; `demo_rows`).
        metrics: Native metric names (``exact_match``, ``f1``, ``passage_match``) or trusted import
            paths / registered callables; default ``["exact_match"]``.
        input_keys: Which fields are inputs; default the signature's inputs.
        lm: The LM (an `LMConfig`, or a live DSPy LM from Python); default: the settings' LM.
            Never stored with a key.

    Raises:
        PipelineSpecError: A bad program (before any LM call).
        MetricError: An unknown metric (before any LM call).
        InputValidationError: An empty devset or rows that lack input fields (before any LM call).
    """
    from tasks.lm import describe_lm

    logger = get_run_logger()
    settings = get_settings()
    started = time.perf_counter()
    step = validate_program(program)
    rows = load_examples_rows(devset, step)
    metric_refs = list(metrics or ["exact_match"])
    keys = input_keys_for(step, input_keys)
    for ref in metric_refs:  # bad names fail here, before any LM call
        resolve_metric(ref, field=metric_field_for(step))
    to_examples(rows, keys, "devset")

    chosen_lm = resolve_lm(lm, settings)
    lm_info = describe_lm(chosen_lm)
    logger.info(
        "evaluate %s on %d examples with %s (LM: %s)",
        step.module,
        len(rows),
        metric_refs,
        lm_info.get("label") or lm_info.get("model"),
    )
    pool = pick_pool("general", settings)
    counter = ProgressCounter()
    progress = ProgressArtifact(
        artifact_key("evaluate-progress"), f"evaluate {step.module}", {"evaluate": (0.0, 100.0)}
    )
    results, table, _ = run_evaluation.submit(
        step,
        rows,
        metric_refs,
        input_keys=keys,
        lm=chosen_lm,
        submit=pool.submit,
        progress=counter,
        on_tick=lambda: progress.tick(counter),
    ).result()
    progress.update(100.0, f"evaluate {step.module}: done")
    results_ref = write_payload([r.model_dump(mode="json") for r in results], format="msgpack")
    failed = sum(r.error is not None for r in results)
    create_table_artifact(
        key=artifact_key("evaluate-scores"),
        table=[row.model_dump() for row in table],
        description=f"Scores of {step.module}"
        + (f" (state {step.state})" if step.state else "")
        + f" on {len(rows)} examples; LM: {lm_info.get('label') or lm_info.get('model')}; "
        f"per-example results: {results_ref.uri}",
    )
    for row in table:
        logger.info("%s: mean %.4f over %d (%d failed)", row.metric, row.mean, row.n, row.failed)
    return EvaluateResult(
        scores=table,
        results=results_ref,
        examples=len(results),
        failed=failed,
        program={"module": step.module, "signature": step.signature, "state": step.state},
        lm=lm_info,
        pool=pool.name,
        duration_s=time.perf_counter() - started,
    )
