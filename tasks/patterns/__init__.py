"""Reasoning patterns as DSPy modules: self-correcting chain of thought, tree of thoughts, ensembles.

Each is a real ``dspy.Module`` registered in the registry's core catalogue
(``dspex.SelfCorrectingChainOfThought``, ``dspex.TreeOfThoughts``, ``dspex.Ensemble``), so a
pipeline step names it like any module and it routes by the registry::

    {"module": "dspex.TreeOfThoughts", "signature": "question -> answer",
     "options": {"breadth": 3, "depth": 2, "scorer": "judge"}}

Scorers and validators are named, never imported from a spec: ``"judge"`` (an LM judge) or a
registered callable / trusted import path (`tasks.callables`).
"""

from tasks.patterns.ensemble import Ensemble, Tally, vote
from tasks.patterns.scoring import Judge, resolve_scorer
from tasks.patterns.self_correct import SelfCorrectingChainOfThought
from tasks.patterns.tree_of_thoughts import TreeOfThoughts

__all__ = [
    "Ensemble",
    "Judge",
    "SelfCorrectingChainOfThought",
    "Tally",
    "TreeOfThoughts",
    "resolve_scorer",
    "vote",
]
