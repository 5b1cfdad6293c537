"""Ensembles: sample N completions of a module, then merge them by majority vote or by an LM judge.

`vote` is the majority rule of ``dspy.majority`` (normalized values, ``None`` votes ignored unless
every vote is ``None``, ties to the earliest completion), and also reports the tally, so a pipeline
row records how strongly its answer won.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dspy
from dspy.predict.aggregation import default_normalize

from dspex.exceptions import PipelineSpecError

__all__ = ["Ensemble", "Tally", "vote"]


@dataclass
class Tally:
    """The result of a vote.

    Attributes:
        winner: The first completion holding the winning value.
        value: The winning (normalized) value.
        counts: Normalized value -> votes, in order of first appearance.
        index: The winner's position among the completions.
    """

    winner: Any
    value: Any
    index: int
    counts: dict[Any, int] = field(default_factory=dict)

    @property
    def agreement(self) -> float:
        """The winner's share of the counted votes."""
        total = sum(self.counts.values())
        return self.counts[self.value] / total if total else 0.0


def vote(
    completions: Sequence[Any],
    field: str | None = None,
    normalize: Callable[[Any], Any] | None = default_normalize,
) -> Tally:
    """Majority vote over ``completions`` on ``field`` (default: the last field of the first one).

    Args:
        completions: Predictions or mappings.
        field: The field voted on.
        normalize: Maps a value to what is compared (None: compare raw values); a value normalized to
            None casts no vote, unless every value does.

    Raises:
        ValueError: No completions.
    """
    if not completions:
        raise ValueError("vote needs at least one completion")
    name = field or list(completions[0].keys())[-1]
    keyed = [(normalize or (lambda v: v))(c[name]) for c in completions]
    counted = [v for v in keyed if v is not None] or keyed
    counts: dict[Any, int] = {}
    for value in counted:
        counts[value] = counts.get(value, 0) + 1
    best = max(counts.values())
    value = next(v for v in counts if counts[v] == best)  # the earliest to reach the top count
    index = keyed.index(value)
    return Tally(winner=completions[index], value=value, index=index, counts=counts)


class _Merge(dspy.Signature):
    """Given several candidate responses to the same task, write the single best response: keep what
    the candidates agree on and what is best supported, and fix their mistakes."""


class Ensemble(dspy.Module):
    """N samples of a module, merged by majority vote or by an LM judge.

    Args:
        signature: The task's signature.
        n: Completions sampled (distinct rollouts at ``temperature``).
        merge: ``vote`` (majority on ``field``) or ``judge`` (an LM writes the final outputs from the
            candidates).
        module: The sampled module: ``dspy.Predict`` or ``dspy.ChainOfThought``.
        field: The output field voted on (default: the signature's last output).
        temperature: Sampling temperature of the completions.

    The prediction carries the merged outputs, ``votes`` (the winner's count, vote only) and
    ``agreement`` (the winner's share, vote only; for judge the share of candidates equal to the
    merged answer).
    """

    def __init__(
        self,
        signature: Any,
        n: int = 5,
        merge: Literal["vote", "judge"] = "vote",
        module: str = "dspy.Predict",
        field: str | None = None,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if n < 1:
            raise TypeError(f"n must be >= 1, got {n}")
        if merge not in ("vote", "judge"):
            raise TypeError(f"merge must be 'vote' or 'judge', got {merge!r}")
        modules = {"dspy.Predict": dspy.Predict, "dspy.ChainOfThought": dspy.ChainOfThought}
        if module not in modules:
            raise PipelineSpecError(f"Ensemble samples dspy.Predict or dspy.ChainOfThought, not {module!r}")
        signature = dspy.ensure_signature(signature)
        self.n, self.merge, self.temperature = n, merge, temperature
        self.output_names = list(signature.output_fields)
        self.field = field or self.output_names[-1]
        if self.field not in self.output_names:
            raise TypeError(f"field {self.field!r} is not an output of the signature ({self.output_names})")
        self.sample = modules[module](signature)
        merged = _Merge
        for name, info in signature.input_fields.items():
            merged = merged.append(name, info, type_=info.annotation)
        merged = merged.append(
            "candidates", dspy.InputField(desc="the candidate responses, numbered"), type_=list[str]
        )
        for name, info in signature.output_fields.items():
            merged = merged.append(name, info, type_=info.annotation)
        self.judge = dspy.Predict(merged)

    def forward(self, **kwargs: Any) -> dspy.Prediction:
        """Sample ``n`` completions and merge them."""
        lm = self.sample.get_lm() if hasattr(self.sample, "get_lm") else None
        lm = lm or dspy.settings.lm
        completions = []
        for rollout in range(self.n):
            with dspy.context(lm=lm.copy(rollout_id=rollout, temperature=self.temperature)):
                completions.append(self.sample(**kwargs))
        tally = vote(completions, self.field)
        if self.merge == "vote":
            outputs = {k: tally.winner.get(k) for k in self.output_names}
            return dspy.Prediction(**outputs, votes=tally.counts[tally.value], agreement=tally.agreement)
        texts = ["; ".join(f"{k}: {c.get(k)}" for k in self.output_names) for c in completions]
        merged = self.judge(**kwargs, candidates=[f"{i + 1}. {t}" for i, t in enumerate(texts)])
        outputs = {k: merged.get(k) for k in self.output_names}
        final = default_normalize(str(outputs[self.field]))
        same = sum(default_normalize(str(c.get(self.field))) == final for c in completions)
        return dspy.Prediction(**outputs, agreement=same / self.n)
