"""What a tune produces: the trial records and result, its artifacts, and the chained optimizer.

`flows.tune` runs the search; this module holds its result models, writes the ``tune-trials`` table
and ``tune-best`` markdown artifacts, and compiles a module step of the best spec with a DSPy
optimizer (the ``optimize`` flow) on the dev rows the best trial produced.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, ConfigDict, Field

from dspex.exceptions import PipelineSpecError
from flows.engine.spec import ModuleStep, PipelineSpec
from flows.telemetry.artifacts import artifact_key
from tasks.payloads import PayloadRef

__all__ = [
    "Objective",
    "TrialRecord",
    "TuneOptimize",
    "TuneResult",
    "optimize_target",
    "write_tune_artifacts",
]

Objective = Literal["score", "score_and_cost"]


class TuneOptimize(BaseModel):
    """Compile one module step of the best spec with a DSPy optimizer after the search."""

    model_config = ConfigDict(extra="forbid")

    step: str = Field(description="The name of the module step to compile (name it in the spec).")
    optimizer: str = Field(
        default="BootstrapFewShot", description="A DSPy optimizer the optimize flow knows."
    )
    options: dict[str, Any] = Field(default_factory=dict, description="The optimizer's constructor options.")
    compile_options: dict[str, Any] = Field(default_factory=dict, description="Options of its compile().")


class TrialRecord(BaseModel):
    """One trial (one row of the ``tune-trials`` artifact)."""

    model_config = ConfigDict(extra="forbid")

    number: int
    state: Literal["complete", "pruned", "failed", "reused"]
    values: dict[str, Any]
    score: float | None = Field(description="Mean metric over the rows evaluated.")
    rows: int = Field(description="Rows evaluated (fewer when pruned).")
    tokens: int = Field(
        description="LM tokens the trial's runs paid (batches on workers included; rows resumed from "
        "an earlier run cost nothing)."
    )
    cost_usd: float | None = Field(description="Priced cost of those tokens; None when unpriced.")
    duration_s: float
    error: str | None = None
    pareto: bool = False


class TuneResult(BaseModel):
    """What a tune found."""

    model_config = ConfigDict(extra="forbid")

    best_values: dict[str, Any]
    best_score: float
    best_spec: PipelineSpec = Field(description="The concrete spec (no variables) of the best trial.")
    best_spec_ref: PayloadRef = Field(description="The same spec saved as a payload (JSON).")
    trials: list[TrialRecord]
    pareto: list[int] = Field(description="Trial numbers on the score/cost Pareto front (multi-objective).")
    objective: Objective
    metric: str
    pruned: int
    duration_s: float
    trials_per_minute: float
    optimized: dict[str, Any] | None = Field(default=None, description="The chained optimizer's outcome.")


def optimize_target(concrete: PipelineSpec, name: str) -> ModuleStep:
    try:
        step = concrete.step(name)
    except KeyError:
        names = [s.name for s in concrete.steps]
        raise PipelineSpecError(
            f"optimize names step {name!r}, which the spec lacks (steps: {names})"
        ) from None
    if not isinstance(step, ModuleStep):
        raise PipelineSpecError("only a module step can be compiled by an optimizer", step=name)
    return step


def write_tune_artifacts(
    spec: PipelineSpec,
    records: list[TrialRecord],
    best: TrialRecord,
    best_spec: PipelineSpec,
    spec_ref: PayloadRef,
    objective: Objective,
    metric: str,
    spec_json: str,
    optimized: dict[str, Any] | None,
) -> None:
    names = sorted(spec.variables)
    table = [
        {
            "trial": r.number,
            **{name: r.values.get(name) for name in names},
            "score": r.score,
            "rows": r.rows,
            "tokens": r.tokens,
            "cost usd": r.cost_usd,
            "duration s": r.duration_s,
            "state": r.state,
            **({"pareto": r.pareto} if objective == "score_and_cost" else {}),
        }
        for r in records
    ]
    create_table_artifact(
        key=artifact_key("tune-trials", spec.name),
        table=table,
        description=f"Trials of tune {spec.name!r}: {metric} per trial ({objective}); "
        f"best trial {best.number}: {best.values} = {best.score}",
    )
    lines = [
        f"# Tune `{spec.name}`: best {metric} {best.score:.4f}",
        "",
        f"- values: `{json.dumps(best.values)}` (trial {best.number} of {len(records)})",
        f"- concrete spec payload: `{spec_ref.uri}`",
    ]
    if optimized:
        lines.append(
            f"- then {optimized['optimizer']} on step `{optimized['step']}`: "
            f"{optimized['score_before']:.4f} -> {optimized['score_after']:.4f} (state `{optimized['state_uri']}`)"
        )
    lines += ["", "```json", spec_json, "```"]
    create_markdown_artifact(
        key=artifact_key("tune-best", spec.name),
        markdown="\n".join(lines),
        description="Best spec of the tune",
    )
