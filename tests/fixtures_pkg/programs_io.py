"""User programs that declare their fields in different ways (issue 13 item 12)."""

import dspy


class Answerer(dspy.Module):
    """Needs ``question``; ``context`` is optional. No LM call: the answer is derived."""

    def forward(self, question: str, context: str = "") -> dspy.Prediction:
        return dspy.Prediction(answer=f"A:{question}{context}")


class Declared(dspy.Module):
    """Declares its own signature: it produces ``verdict``."""

    signature = "question -> verdict"

    def forward(self, question: str) -> dspy.Prediction:
        return dspy.Prediction(verdict=question.upper())


class KwargsOnly(dspy.Module):
    """Takes anything: its inputs cannot be inferred."""

    def forward(self, **kwargs: str) -> dspy.Prediction:
        return dspy.Prediction(answer=str(sorted(kwargs)))


class Silent(dspy.Module):
    """Produces nothing."""

    def forward(self, question: str) -> dspy.Prediction:
        return dspy.Prediction()
