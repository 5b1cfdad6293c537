"""The ``rag-qa`` flow, the demo: retrieve (gpu pool) -> ChainOfThought (general pool) -> scores.

It runs the bundled question set against the bundled corpus (or any question set and corpus
given), scores exact match and token F1 against the gold answers natively, and writes a score
table artifact next to the pipeline's duration artifacts.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, ConfigDict

from flows.engine.modes import RunMode
from flows.engine.params import LMParam, safe_flow
from flows.engine.spec import PipelineSpec
from flows.pipeline import PipelineResult, run_pipeline

__all__ = ["RagResult", "rag_qa", "rag_spec"]


class RagResult(BaseModel):
    """Scores of a rag-qa run, and the pipeline result behind them."""

    model_config = ConfigDict(extra="forbid")

    exact_match: float
    f1: float
    questions: int
    failed: int
    lm: dict[str, Any]
    pipeline: PipelineResult


def rag_spec(
    k: int = 3, corpus: str | dict[str, Any] = "demo", module: str = "dspy.ChainOfThought"
) -> PipelineSpec:
    """The demo's pipeline spec."""
    return PipelineSpec.model_validate(
        {
            "name": "rag-qa",
            "description": "Retrieve passages, answer with reasoning, score against gold answers.",
            "inputs": ["question", "gold"],
            "steps": [
                {"retrieve": "question", "k": k, "corpus": corpus, "output": "context"},
                {"module": module, "signature": "context: list[str], question: str -> answer: str"},
                {"native": "metric", "metric": "exact_match", "prediction": "answer", "gold": "gold"},
                {"native": "metric", "metric": "f1", "prediction": "answer", "gold": "gold"},
            ],
            "continue_on_error": True,
        }
    )


def _question_rows(questions: list[dict[str, Any]] | None, limit: int | None) -> list[dict[str, Any]]:
    from tasks.retrieval import load_demo_questions

    rows = questions if questions is not None else load_demo_questions("all")
    out = []
    for q in rows[:limit] if limit else rows:
        gold = [q["answer"], *q.get("aliases", [])] if "answer" in q else q.get("gold", [])
        out.append({"id": q.get("id"), "question": q["question"], "gold": gold})
    return out


@safe_flow(
    name="rag-qa",
    description="Demo: retrieval-augmented QA over the bundled corpus, scored.",
    validate_parameters=True,
)
def rag_qa(
    questions: list[dict[str, Any]] | None = None,
    corpus: str | dict[str, Any] = "demo",
    k: int = 3,
    limit: int | None = None,
    module: str = "dspy.ChainOfThought",
    mode: RunMode = "auto",
    lm: LMParam = None,
) -> RagResult:
    """Answer questions over a corpus and score them.

    Args:
        questions: Rows with ``question`` and ``answer`` (optional ``aliases``); default: the bundled set.
        corpus: ``"demo"``, a PayloadRef's JSON, or a dataset path with a ``text`` column.
        k: Passages retrieved per question.
        limit: Only the first ``limit`` questions.
        module: The answering module (``dspy.ChainOfThought`` or ``dspy.Predict``).
        mode: ``auto`` (dispatch retrieval to gpu and answering to general when their workers are
            live, else run here), ``local`` or ``distributed`` (`flows.engine.modes`).
        lm: The LM (an `LMConfig`, or a live DSPy LM from Python); default: the settings' LM.
    """
    logger = get_run_logger()
    rows = _question_rows(questions, limit)
    result = run_pipeline(rag_spec(k=k, corpus=corpus, module=module), data=rows, lm=lm, mode=mode)
    out = result.rows()
    scored = [r for r in out if "_error" not in r]
    em = sum(r["exact_match"] for r in scored) / len(out) if out else 0.0
    f1 = sum(r["f1"] for r in scored) / len(out) if out else 0.0
    create_table_artifact(
        key="rag-qa-scores",
        table=[
            {"metric": "exact_match", "score": round(em, 4)},
            {"metric": "f1", "score": round(f1, 4)},
            {"metric": "questions", "score": len(out)},
            {"metric": "failed", "score": result.summary.failed},
        ],
        description=f"rag-qa scores (LM: {result.summary.lm.get('model')})",
    )
    logger.info("rag-qa: exact match %.3f, F1 %.3f over %d questions", em, f1, len(out))
    return RagResult(
        exact_match=em,
        f1=f1,
        questions=len(out),
        failed=result.summary.failed,
        lm=result.summary.lm,
        pipeline=result,
    )
