"""How do units compose into a pipeline?

The pipeline spec, the engine, the router's execution side, ready-made flows (``run-pipeline``,
``rag-qa``, ``batch-predict``, ``evaluate``, ``optimize``), and the ``run-step`` flow that a pool
executes in distributed mode.
"""

import dspex.bootstrap  # noqa: F401  (defaults the Prefect environment before Prefect loads)
from flows.batch_predict import BatchPredictResult, batch_predict
from flows.evaluate import EvaluateResult, evaluate_program
from flows.optimize import OptimizeResult, optimize_program
from flows.pipeline import PipelineResult, PipelineSummary, run_pipeline
from flows.rag import RagResult, rag_qa
from flows.spec import PipelineSpec
from flows.streaming import PipelineStream, stream_pipeline

__all__ = [
    "BatchPredictResult",
    "EvaluateResult",
    "OptimizeResult",
    "PipelineResult",
    "PipelineSpec",
    "PipelineStream",
    "PipelineSummary",
    "RagResult",
    "batch_predict",
    "evaluate_program",
    "optimize_program",
    "rag_qa",
    "run_pipeline",
    "stream_pipeline",
]
