"""A user program with two predictors, for batch mode (issue 21): each row takes two batch rounds."""

import dspy


class DraftThenAnswer(dspy.Module):
    """Drafts a note on the question from the context, then answers from the note and the context."""

    signature = "question, context -> answer"

    def __init__(self) -> None:
        super().__init__()
        self.draft = dspy.Predict("question, context -> note")
        self.answer = dspy.Predict("question, context, note -> answer")

    def forward(self, question: str, context: str) -> dspy.Prediction:
        note = self.draft(question=question, context=context).note
        return self.answer(question=question, context=context, note=note)
