"""A user program, as a user's own package would define it."""

import dspy


class Shout(dspy.Module):
    """Answer, then shout the answer."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = dspy.Predict("question -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        answer = self.answer(question=question).answer
        return dspy.Prediction(loud=answer.upper() + "!")
