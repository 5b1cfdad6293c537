"""Adaptive module selection: a ``select`` step runs, batch by batch, the candidate a bandit picks.

    {"select": {"candidates": [{"module": "dspy.Predict", ...}, {"module": "dspy.ChainOfThought", ...}],
                "policy": "bandit", "metric": "exact_match", "gold": "gold"}}

The policy is Thompson sampling over **quality per unit of cost**. Each candidate has a Beta
posterior over its quality (a score in 0..1 per row, from the metric against the gold field, or from
an LM judge when no metric is named) and a running mean of its cost per row: USD or tokens that the
batch's step records report (remote batches included), else milliseconds (before a candidate has run, the registry's learned or
static estimate of its module). For each batch the policy draws a quality from every posterior and
runs the candidate with the highest draw / cost; a candidate never tried goes first. Only a sample of
each batch's rows is scored (``sample``), so the judge costs a fraction of the work.

Every decision is recorded: the row field ``<name>_choice`` names the candidate that produced the row,
a ``select-<step>`` table artifact lists the batches (candidate, draws, quality, cost), and the step's
duration record says how often each candidate ran. What was learned is saved as JSON under
``<DSPEX_HOME>/select/<memory>.json`` (never pickle), so the next run starts from it; a candidate whose
configuration changed starts afresh.

Batches run one after another (each decision learns from the previous batch); the rows of one batch
still run concurrently on the candidate's pool.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dspex.private import open_private
from dspex.settings import Settings
from flows.engine.context import EngineContext, StepRecord
from flows.engine.spec import ModuleStep, SelectStep, iter_steps
from flows.telemetry.artifacts import artifact_key
from tasks.rows import ERROR_FIELD
from tasks.usage import Usage

#: How the engine runs steps over rows (`flows.engine.core.run_steps`).
StepsRunner = Callable[[list[Any], list[dict[str, Any]], EngineContext], list[dict[str, Any]]]

__all__ = [
    "BanditState",
    "CandidateStats",
    "Decision",
    "StepsRunner",
    "ThompsonBandit",
    "load_state",
    "run_select",
    "save_state",
    "state_path",
]

logger = logging.getLogger(__name__)
CostUnit = Literal["usd", "tokens", "latency"]
_FLOOR: dict[str, float] = {"usd": 1e-9, "tokens": 1.0, "latency": 1.0}


class CandidateStats(BaseModel):
    """What the bandit knows about one candidate."""

    model_config = ConfigDict(extra="forbid")

    config: str = Field(description="Hash of the candidate's configuration (a changed one starts afresh).")
    alpha: float = Field(default=1.0, gt=0, description="Beta posterior: 1 + summed row scores.")
    beta: float = Field(default=1.0, gt=0, description="Beta posterior: 1 + summed (1 - row score).")
    batches: int = Field(default=0, ge=0, description="Batches this candidate ran.")
    rows: int = Field(default=0, ge=0, description="Rows this candidate ran.")
    usd: float = Field(default=0.0, ge=0, description="Summed USD cost of its rows (priced calls only).")
    usd_rows: int = Field(default=0, ge=0, description="Rows whose cost was priced.")
    tokens: float = Field(default=0.0, ge=0, description="Summed LM tokens of its rows.")
    token_rows: int = Field(default=0, ge=0, description="Rows whose tokens were counted.")
    ms: float = Field(default=0.0, ge=0, description="Summed wall milliseconds per row.")
    ms_rows: int = Field(default=0, ge=0, description="Rows timed.")

    @property
    def quality(self) -> float:
        """The posterior mean quality."""
        return self.alpha / (self.alpha + self.beta)

    def cost(self, unit: CostUnit) -> float | None:
        """The mean cost per row in ``unit``, or None when not observed."""
        total, n = {"usd": (self.usd, self.usd_rows), "tokens": (self.tokens, self.token_rows)}.get(
            unit, (self.ms, self.ms_rows)
        )
        return max(total / n, _FLOOR[unit]) if n else None


class BanditState(BaseModel):
    """The learned state of one select step, persisted as JSON."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    memory: str
    runs: int = Field(default=0, ge=0, description="Pipeline runs that updated this state.")
    candidates: dict[str, CandidateStats] = Field(default_factory=dict)


class Decision(BaseModel):
    """One batch's decision (one row of the ``select-<step>`` artifact)."""

    model_config = ConfigDict(extra="forbid")

    batch: int
    candidate: str
    rows: int
    reason: str
    draws: dict[str, float] = Field(description="Candidate -> sampled quality / cost (higher is better).")
    unit: str
    quality: float | None = Field(description="Mean score of the sampled rows.")
    scored_rows: int
    cost_per_row: float | None
    failed: int
    ms: float


class ThompsonBandit:
    """Thompson sampling over quality per cost.

    Args:
        state: What earlier runs learned (updated in place).
        names: The candidates, in spec order.
        unit: The cost unit, or ``auto`` (USD when every tried candidate was priced, else tokens when
            any used tokens, else latency).
        priors_ms: Cost prior (ms per row) of candidates not tried yet, for the latency unit.
        rng: The random source (seed it for reproducible decisions).
    """

    def __init__(
        self,
        state: BanditState,
        names: list[str],
        unit: Literal["auto", "usd", "tokens", "latency"],
        priors_ms: Mapping[str, float],
        rng: random.Random,
    ) -> None:
        self.state, self.names, self.unit, self.priors_ms, self.rng = state, names, unit, priors_ms, rng

    def cost_unit(self) -> CostUnit:
        """The unit costs are compared in."""
        if self.unit != "auto":
            return self.unit
        tried = [self.state.candidates[n] for n in self.names if self.state.candidates[n].batches]
        if tried and all(c.usd_rows and c.usd > 0 for c in tried):
            return "usd"
        if any(c.token_rows and c.tokens > 0 for c in tried):
            return "tokens"
        return "latency"

    def choose(self) -> tuple[str, dict[str, float], str]:
        """The candidate for the next batch, every candidate's draw, and why."""
        untried = [n for n in self.names if self.state.candidates[n].batches == 0]
        unit = self.cost_unit()
        draws: dict[str, float] = {}
        for name in self.names:
            stats = self.state.candidates[name]
            cost = stats.cost(unit)
            if cost is None:
                cost = self.priors_ms.get(name) if unit == "latency" else None
            theta = self.rng.betavariate(stats.alpha, stats.beta)
            draws[name] = round(theta / cost, 9) if cost else math.inf
        if untried:
            return untried[0], draws, "not tried yet"
        best = max(self.names, key=lambda n: draws[n])
        return best, draws, f"highest sampled quality per {unit}"

    def update(
        self,
        name: str,
        scores: list[float],
        rows: int,
        *,
        usd: float | None,
        tokens: int,
        ms_per_row: float,
    ) -> None:
        """Learn from one batch: its sampled row scores (0..1) and its cost."""
        stats = self.state.candidates[name]
        stats.alpha += sum(scores)
        stats.beta += sum(1.0 - s for s in scores)
        stats.batches += 1
        stats.rows += rows
        if usd is not None:
            stats.usd += usd
            stats.usd_rows += rows
        if tokens:
            stats.tokens += tokens
            stats.token_rows += rows
        stats.ms += ms_per_row * rows
        stats.ms_rows += rows

    def best(self) -> str:
        """The candidate with the highest posterior mean quality per cost."""
        unit = self.cost_unit()

        def value(name: str) -> float:
            stats = self.state.candidates[name]
            cost = stats.cost(unit)
            return stats.quality / cost if cost else 0.0

        return max(self.names, key=value)


# --- persistence --------------------------------------------------------------------------------


def _config_hash(step: Any) -> str:
    blob = json.dumps(step.model_dump(mode="json", exclude={"name"}), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def state_path(settings: Settings, memory: str) -> Path:
    """Where a select step's learned state lives."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in memory)[:120]
    return Path(settings.home) / "select" / f"{safe}.json"


def load_state(path: Path, memory: str) -> BanditState:
    """The state saved at ``path``, or a fresh one; a corrupt file is kept aside (``.corrupt``) and
    reported, never silently overwritten."""
    if not path.exists():
        return BanditState(memory=memory)
    try:
        return BanditState.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, OSError, UnicodeDecodeError) as exc:
        aside = path.with_suffix(".corrupt")
        os.replace(path, aside)
        logger.warning("select state %s is unreadable (%s); kept as %s, starting afresh", path, exc, aside)
        return BanditState(memory=memory)


def save_state(path: Path, state: BanditState) -> None:
    """Write ``state`` atomically (a temporary file, then a rename)."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with open_private(tmp, "w") as handle:  # owner-only, like everything under DSPEX_HOME (issue 25)
        handle.write(state.model_dump_json(indent=2))
    os.replace(tmp, path)


# --- scoring ------------------------------------------------------------------------------------


def _row_scorer(step: SelectStep, lm: Any) -> Callable[[dict[str, Any], Any], float]:
    """Score one finished row in 0..1: the metric against the gold field, or the LM judge."""
    from tasks.patterns.scoring import as_score, row_metric
    from tasks.rows import get_field

    options = step.select
    if options.metric is not None:
        metric = row_metric(options.metric, options.prediction, options.gold)
        return lambda row, candidate: metric(row)

    import dspy

    from tasks.patterns.scoring import Judge

    judge = Judge()

    def judged(row: dict[str, Any], candidate: Any) -> float:
        inputs = {f: get_field(row, f, None) for f in candidate.needs()}
        prediction = dspy.Prediction(**{options.prediction: get_field(row, options.prediction, None)})
        with dspy.context(lm=lm) if lm is not None else contextlib.nullcontext():
            return as_score(judge(inputs, prediction))

    return judged


def _priors_ms(candidates: list[Any]) -> dict[str, float]:
    """The registry's estimate (learned when enough samples exist) of each module candidate, in ms."""
    import registry

    priors: dict[str, float] = {}
    for candidate in candidates:
        if isinstance(candidate, ModuleStep):
            priors[str(candidate.name)] = float(registry.estimate(candidate.module).ms)
    return priors


# --- the step -----------------------------------------------------------------------------------


def run_select(
    step: SelectStep,
    rows: list[dict[str, Any]],
    active: list[int],
    ctx: EngineContext,
    run_steps: StepsRunner,
) -> list[Decision]:
    """Run a select step over the ``active`` rows, batch by batch (called by the engine).

    Args:
        step: The select step.
        rows: All rows (extended in place).
        active: Indices of the rows to run.
        ctx: The engine's context.
        run_steps: The engine's `flows.engine.core.run_steps`, which runs the chosen candidate (handed
            in by the engine, so this module builds on the context alone and the engine may import it).

    Returns:
        The decisions, one per batch.
    """
    options = step.select
    started = time.perf_counter()
    candidates: dict[str, Any] = {str(c.name): c for c in options.candidates}  # named by the spec
    names = list(candidates)
    memory = options.memory or f"{step.name}-{_config_hash(step)[:10]}"
    path = state_path(ctx.settings, memory)
    state = load_state(path, memory) if options.persist else BanditState(memory=memory)
    for name, candidate in candidates.items():
        config = _config_hash(candidate)
        if name not in state.candidates or state.candidates[name].config != config:
            state.candidates[name] = CandidateStats(config=config)
    state.candidates = {n: state.candidates[n] for n in names}
    rng = random.Random(options.seed)  # noqa: S311  (sampling decisions, not security)
    bandit = ThompsonBandit(state, names, options.cost, _priors_ms(options.candidates), rng)
    scorer = _row_scorer(step, ctx.lm)
    decision_field = step.decision_field or f"{step.name}_choice"
    sub = ctx.child()
    decisions: list[Decision] = []

    for n, first in enumerate(range(0, len(active), options.batch_rows)):
        if ctx.stop:
            break
        chunk = active[first : first + options.batch_rows]
        name, draws, reason = bandit.choose()
        batch = [rows[i] for i in chunk]  # the same dicts: the candidate extends them in place
        batch_start = time.perf_counter()
        before = len(ctx.records)
        run_steps([candidates[name]], batch, sub)
        # What the candidate's steps paid, from their records (batches on workers included).
        own = {s.name for s in iter_steps([candidates[name]])}
        usage = Usage.total(getattr(r, "usage", None) for r in ctx.records[before:] if r.step in own)
        ms_per_row = (time.perf_counter() - batch_start) * 1000 / len(batch)
        for row in batch:
            row[decision_field] = name
        sampled = rng.sample(range(len(batch)), max(1, round(options.sample * len(batch))))
        scores = []
        for j in sampled:
            if ERROR_FIELD in batch[j]:
                scores.append(0.0)  # a failed row is the worst quality
                continue
            try:
                scores.append(min(max(scorer(batch[j], candidates[name]), 0.0), 1.0))
            except Exception as exc:  # an unscorable row teaches nothing; it is logged, not fatal
                logger.warning("select %s: could not score a row of %s: %s", step.name, name, exc)
        usd = usage.cost_usd if usage.requests and usage.cost_known else None
        bandit.update(name, scores, len(batch), usd=usd, tokens=usage.total_tokens, ms_per_row=ms_per_row)
        unit = bandit.cost_unit()
        decisions.append(
            Decision(
                batch=n,
                candidate=name,
                rows=len(batch),
                reason=reason,
                draws={k: (v if math.isfinite(v) else -1.0) for k, v in draws.items()},
                unit=unit,
                quality=round(sum(scores) / len(scores), 4) if scores else None,
                scored_rows=len(scores),
                cost_per_row=_batch_cost(unit, usd, usage.total_tokens, ms_per_row, len(batch)),
                failed=sum(ERROR_FIELD in r for r in batch),
                ms=round(ms_per_row * len(batch), 1),
            )
        )
    state.runs += 1
    if options.persist:
        try:
            save_state(path, state)
        except OSError as exc:  # learning is an optimization: say so and go on
            logger.warning("could not save select state %s: %s", path, exc)
    counts = {name: sum(d.candidate == name for d in decisions) for name in names}
    best = bandit.best()
    ctx.records.append(
        StepRecord(
            step=str(step.name),
            kind=step.kind,
            rows=len(active),
            batches=len(decisions),
            failed=sum(ERROR_FIELD in rows[i] for i in active),
            actual_ms=round((time.perf_counter() - started) * 1000, 1),
            reason=f"bandit over {len(decisions)} batches: "
            + ", ".join(f"{k} x{v}" for k, v in counts.items())
            + f"; best per {bandit.cost_unit()} now: {best} (quality {state.candidates[best].quality:.2f})",
        )
    )
    _write_artifact(str(step.name), decisions, state, bandit, path)
    return decisions


def _batch_cost(unit: str, usd: float | None, tokens: int, ms_per_row: float, rows: int) -> float | None:
    if unit == "usd":
        return None if usd is None else round(usd / rows, 8)
    if unit == "tokens":
        return round(tokens / rows, 1)
    return round(ms_per_row, 1)


def _write_artifact(
    name: str, decisions: list[Decision], state: BanditState, bandit: ThompsonBandit, path: Path
) -> None:
    """The per-batch decisions as a table artifact, when running inside a flow run."""
    from prefect.artifacts import create_table_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return

    unit = bandit.cost_unit()
    summary = "; ".join(
        f"{n}: quality {s.quality:.2f}, cost {s.cost(unit)} {unit}/row, {s.batches} batches"
        for n, s in state.candidates.items()
    )
    create_table_artifact(
        key=artifact_key("select", name),
        table=[d.model_dump() for d in decisions],
        description=f"Select step {name!r}: one candidate per batch (Thompson sampling over quality per "
        f"{unit}). Learned so far: {summary}. State: {path}",
    )
