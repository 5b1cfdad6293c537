"""How do units compose into a pipeline?

The pipeline spec, the engine, the router's execution side, ready-made flows (``run-pipeline``,
``rag-qa``, ``batch-predict``, ``evaluate``, ``optimize``, ``tune``), and the ``run-step`` flow that a pool
executes in distributed mode.
"""

import dspex.bootstrap  # noqa: F401  (defaults the Prefect environment before Prefect loads)
from flows.batch_predict import BatchPredictResult, batch_predict
from flows.engine.modes import RunMode
from flows.engine.params import LMConfig
from flows.engine.spec import PipelineSpec, resolve_spec
from flows.evaluate import EvaluateResult, evaluate_program
from flows.optimize import OptimizeResult, optimize_program
from flows.pipeline import PipelineResult, PipelineSummary, run_pipeline
from flows.rag import RagResult, rag_qa
from flows.stream import PipelineStream, stream_pipeline
from flows.tune import TuneResult, tune_pipeline
from flows.tuning.variables import Variable

__all__ = [
    "BatchPredictResult",
    "EvaluateResult",
    "LMConfig",
    "OptimizeResult",
    "PipelineResult",
    "PipelineSpec",
    "PipelineStream",
    "PipelineSummary",
    "RagResult",
    "RunMode",
    "TuneResult",
    "Variable",
    "batch_predict",
    "evaluate_program",
    "optimize_program",
    "rag_qa",
    "resolve_spec",
    "run_pipeline",
    "stream_pipeline",
    "tune_pipeline",
]
