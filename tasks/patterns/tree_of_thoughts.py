"""Tree of thoughts: grow reasoning one thought at a time, keeping the best of ``breadth`` children.

At each of ``depth`` levels, ``breadth`` children of the current best node are generated (distinct
samples: each call gets its own rollout id at temperature 1), each child is scored, and the best
becomes the node the next level grows from. Exactly ``breadth x depth`` nodes are explored, one LM
call each (plus one judge call per node when the scorer is the LM judge). Every node proposes the
task's outputs along with its thought; the answer is the best final node's.
"""

from __future__ import annotations

from typing import Any

import dspy

from tasks.patterns.scoring import as_score, resolve_scorer

__all__ = ["TreeOfThoughts"]

_PATH = dspy.InputField(desc="the reasoning so far, one thought per line (empty at the start)")
_THOUGHT = dspy.OutputField(desc="the next step of reasoning, building on the reasoning so far")


class TreeOfThoughts(dspy.Module):
    """Breadth x depth search over thoughts, scored by a metric or an LM judge.

    Args:
        signature: The task's signature.
        breadth: Children generated per level.
        depth: Levels (thoughts in the final path).
        scorer: ``"judge"`` (an LM judge) or a registered callable ``fn(inputs, prediction) -> float``.
        temperature: Sampling temperature of the children (distinct rollouts).

    The prediction carries the outputs of the best final node, ``thoughts`` (the chosen path),
    ``score`` (its score) and ``nodes_explored``.
    """

    def __init__(
        self,
        signature: Any,
        breadth: int = 3,
        depth: int = 2,
        scorer: str = "judge",
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if breadth < 1 or depth < 1:
            raise TypeError(f"breadth and depth must be >= 1, got {breadth} x {depth}")
        signature = dspy.ensure_signature(signature)
        self.breadth, self.depth, self.temperature = breadth, depth, temperature
        self.output_names = list(signature.output_fields)
        grown = signature.append("reasoning_so_far", _PATH, type_=str).prepend("thought", _THOUGHT, type_=str)
        self.expand = dspy.Predict(grown)
        scorer_fn = resolve_scorer(scorer, signature.instructions)
        assert scorer_fn is not None
        self.scorer = scorer_fn

    def forward(self, **kwargs: Any) -> dspy.Prediction:
        """Explore ``breadth x depth`` nodes; answer with the best final node."""
        lm = self.expand.lm or dspy.settings.lm
        path: list[str] = []
        best: tuple[float, dspy.Prediction] | None = None
        explored = 0
        for level in range(self.depth):
            best = None
            for child in range(self.breadth):
                rollout = level * self.breadth + child
                with dspy.context(lm=lm.copy(rollout_id=rollout, temperature=self.temperature)):
                    node = self.expand(**kwargs, reasoning_so_far="\n".join(path))
                explored += 1
                score = as_score(self.scorer(kwargs, node))
                if best is None or score > best[0]:
                    best = (score, node)
            assert best is not None
            path.append(str(best[1].get("thought", "")))
        assert best is not None
        score, node = best
        outputs = {k: node.get(k) for k in self.output_names}
        return dspy.Prediction(**outputs, thoughts=path, score=score, nodes_explored=explored)
