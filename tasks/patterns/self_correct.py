"""Self-correcting chain of thought: reason, check the answer, and retry with feedback, up to N times.

The first attempt is a plain ``dspy.ChainOfThought``. An attempt is rejected when its output does
not parse into the signature's types (DSPy's adapter raises) or when the validator (a named scorer:
a registered callable, or ``"judge"``) scores it below the threshold. A rejected attempt's answer and
the reason go back to the LM as ``feedback`` for the next attempt.
"""

from __future__ import annotations

from typing import Any

import dspy
from dspy.utils.exceptions import AdapterParseError

from tasks.patterns.scoring import as_score, resolve_scorer

__all__ = ["SelfCorrectingChainOfThought"]

_FEEDBACK = dspy.InputField(desc="why earlier attempts were rejected; correct those mistakes in this attempt")


class SelfCorrectingChainOfThought(dspy.Module):
    """Chain of thought that validates its outputs and retries with feedback.

    Args:
        signature: The task's signature.
        max_retries: Retries after the first attempt (so at most ``max_retries + 1`` attempts).
        validator: ``"judge"``, a registered callable ``fn(inputs, prediction) -> float | bool``, or
            None to validate against the signature only.
        threshold: The validator's score an attempt needs.

    The prediction carries the signature's outputs, ``reasoning``, ``attempts`` (how many were made)
    and ``valid`` (whether the last attempt passed). When every attempt fails to parse, the last
    parse error is raised.
    """

    def __init__(
        self,
        signature: Any,
        max_retries: int = 2,
        validator: str | None = None,
        threshold: float = 1.0,
    ) -> None:
        super().__init__()
        if max_retries < 0:
            raise TypeError(f"max_retries must be >= 0, got {max_retries}")
        signature = dspy.ensure_signature(signature)
        self.max_retries = max_retries
        self.threshold = threshold
        self.output_names = list(signature.output_fields)
        self.attempt = dspy.ChainOfThought(signature)
        self.retry = dspy.ChainOfThought(signature.append("feedback", _FEEDBACK, type_=str))
        self.validator = resolve_scorer(validator, signature.instructions)

    def forward(self, **kwargs: Any) -> dspy.Prediction:
        """Run up to ``max_retries + 1`` attempts; return the first valid one (or the last)."""
        notes: list[str] = []
        last: dspy.Prediction | None = None
        last_error: AdapterParseError | None = None
        for n in range(1, self.max_retries + 2):
            try:
                if notes:
                    prediction = self.retry(**kwargs, feedback="\n".join(notes))
                else:
                    prediction = self.attempt(**kwargs)
            except AdapterParseError as exc:
                last_error = exc
                notes.append(
                    f"attempt {n}: the output did not fit the required fields and types ({_short(exc)})"
                )
                continue
            last, last_error = prediction, None
            problem = self._problem(kwargs, prediction)
            if problem is None:
                return _finish(prediction, n, valid=True)
            answer = "; ".join(f"{k}={prediction.get(k)!r}" for k in self.output_names)
            notes.append(f"attempt {n} answered {answer}, which was rejected: {problem}")
        if last is None:
            assert last_error is not None
            raise last_error
        return _finish(last, self.max_retries + 1, valid=False)

    def _problem(self, inputs: dict[str, Any], prediction: dspy.Prediction) -> str | None:
        empty = [k for k in self.output_names if prediction.get(k) in (None, "")]
        if empty:
            return f"empty output field(s) {empty}"
        if self.validator is None:
            return None
        score = as_score(self.validator(inputs, prediction))
        if score < self.threshold:
            return f"the validator scored it {score:.2f} (needs {self.threshold:.2f})"
        return None


def _finish(prediction: dspy.Prediction, attempts: int, *, valid: bool) -> dspy.Prediction:
    return dspy.Prediction(**dict(prediction.items()), attempts=attempts, valid=valid)


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
