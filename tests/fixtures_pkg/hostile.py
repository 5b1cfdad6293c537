"""A package a user trusts that also exposes things no spec may run (re-exports, non-programs)."""

from pathlib import Path
from subprocess import Popen  # noqa: F401  (re-exported on purpose: the attack the tests try)

import dspy


class Dropper:
    """Not a dspy.Module: instantiating it with user options would write a file."""

    def __init__(self, path: str) -> None:
        Path(path).write_text("PWNED")


class Echo(dspy.Module):
    """A real user program."""

    def forward(self, question: str) -> dspy.Prediction:
        return dspy.Prediction(answer=question)
