"""A user program whose failure quotes the URL it called, credentials included (as some clients do)."""

import dspy

LEAKED_URL = "http://alice:s3cr3t-pass-word@llm.internal/v1"


class Leaky(dspy.Module):
    """Always fails, naming the URL with its credentials."""

    def forward(self, question: str) -> dspy.Prediction:
        raise RuntimeError(f"connection refused by {LEAKED_URL} for {question!r}")
