"""User programs as DSPy tutorials write them (issue 24): optional inputs, every kind of return."""

import dspy
import pydantic


class Styled(dspy.Module):
    """``style`` is optional: rows that carry it must reach ``forward``. No LM call."""

    def forward(self, question: str, style: str = "plain") -> dspy.Prediction:
        return dspy.Prediction(answer=f"{style}:{question}")


class Hidden(dspy.Module):
    """Returns its predictor's prediction: its outputs are the predictor's signature's."""

    def __init__(self) -> None:
        super().__init__()
        self.respond = dspy.Predict("question -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        return self.respond(question=question)


class Texter(dspy.Module):
    """Returns a plain ``str``: the value of its sole predictor output, ``answer``."""

    def __init__(self) -> None:
        super().__init__()
        self.respond = dspy.Predict("question -> answer")

    def forward(self, question: str) -> str:
        return self.respond(question=question).answer


class Bare(dspy.Module):
    """Returns a ``str`` and declares nothing: the row gets it as ``output``."""

    def forward(self, question: str) -> str:
        return f"bare:{question}"


class Verdict(pydantic.BaseModel):
    label: str
    score: float


class Typed(dspy.Module):
    """Returns a pydantic model: each of its fields is a row field."""

    def forward(self, question: str) -> Verdict:
        return Verdict(label=question.upper(), score=1.0)


class Dicty(dspy.Module):
    """Returns a dict."""

    def forward(self, question: str) -> dict:
        return {"answer": f"dict:{question}"}


class Weird(dspy.Module):
    """Returns a number: no row can hold that as fields."""

    def forward(self, question: str) -> int:
        return 42
