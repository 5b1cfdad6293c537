"""The ``batch-predict`` flow: run a pipeline over a whole dataset, streaming it in chunks.

A dataset (JSONL, CSV, Parquet path or fsspec URL, or a `PayloadRef`) is read into Arrow (columnar and
compact) and cut into zero-copy slices of ``chunk_rows``; only one chunk at a time becomes Python row
dicts, goes through `run_pipeline` (a subflow, with its own duration artifacts) and is written out as
one output payload. The result lists the parts by reference, so a 100k-row run never holds 100k
row dicts at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect import get_run_logger
from prefect.states import Completed
from pydantic import BaseModel, ConfigDict, Field

from dspex.exceptions import InputValidationError, LMBatchPendingError
from flows.batch_api.mode import deployment_run, schedule_recheck
from flows.engine.modes import RunMode
from flows.engine.params import LMParam, safe_flow
from flows.engine.spec import PipelineSpec
from flows.pipeline import PipelineResult, run_pipeline
from tasks.payloads import Dataset, PayloadRef

__all__ = ["DEMO_DATASET", "BatchPredictResult", "batch_predict", "open_dataset"]

#: The bundled question set (40 rows with ``question``), the default dataset of a quick run.
DEMO_DATASET = str(Path(__file__).resolve().parents[1] / "tasks" / "data" / "questions.jsonl")


class BatchPredictResult(BaseModel):
    """The output parts (one payload per chunk, in order) and the totals."""

    model_config = ConfigDict(extra="forbid")

    parts: list[PayloadRef] = Field(description="Output rows of each chunk, in dataset order.")
    rows_in: int
    rows_out: int = Field(description="Rows that completed every step.")
    failed: int
    awaiting_batches: list[str] = Field(
        default_factory=list,
        description="Provider batches still being answered (batch mode in a deployment run): the parts "
        "of their chunks come with the scheduled re-check's result.",
    )

    def rows(self) -> list[dict[str, Any]]:
        """Every output row (reads all parts: for small results and tests)."""
        from tasks.payloads import read_rows

        return [row for part in self.parts for row in read_rows(part)]


def open_dataset(dataset: str | PayloadRef | dict[str, Any]) -> Dataset:
    """The dataset a parameter names: a path/URL, ``"demo"`` (the bundled questions), a PayloadRef, or
    a PayloadRef's JSON."""
    if not isinstance(dataset, str):
        return Dataset.from_ref(dataset)
    return Dataset.from_path(DEMO_DATASET if dataset == "demo" else dataset)


@safe_flow(
    name="batch-predict",
    description="Run a DSPex pipeline over a dataset file or payload, in chunks.",
    validate_parameters=True,
)
def batch_predict(
    spec: PipelineSpec,
    dataset: str | PayloadRef = "demo",
    chunk_rows: int = 10_000,
    mode: RunMode = "auto",
    lm: LMParam = None,
    batch_api: bool = False,
) -> BatchPredictResult:
    """Run ``spec`` over every row of ``dataset``, ``chunk_rows`` rows at a time.

    Args:
        spec: The pipeline.
        dataset: A JSONL/CSV/Parquet path or fsspec URL, or a `PayloadRef`; ``"demo"`` (the
            default): the bundled questions.
        chunk_rows: Rows per chunk (one `run_pipeline` subflow each).
        mode: ``auto`` (default; decided per chunk, `flows.engine.modes`), ``local`` or ``distributed``.
        lm: The LM (an `LMConfig`, or a live DSPy LM from Python); default: the settings' LM.
        batch_api: Send the module steps' LM calls through the provider's batch API (about half the
            price; `flows.batch_api.mode`); default: the spec's ``lm_batch``, else ``DSPEX_LM_BATCH_API``.
            In a deployment run, no worker is held while the provider works: every chunk submits its
            batch, the run ends ``AwaitingBatch``, and a scheduled re-check of this deployment with
            the same parameters picks up where it stopped.
    """
    logger = get_run_logger()
    if chunk_rows < 1:
        raise InputValidationError(f"chunk_rows must be >= 1, got {chunk_rows}")
    data = open_dataset(dataset)
    parts: list[PayloadRef] = []
    rows_out = failed = 0
    offset = 0
    # A deployment run never holds its worker while the provider works.
    waits: Literal["poll", "exit"] = "exit" if deployment_run() is not None else "poll"
    pending: list[LMBatchPendingError] = []
    for n, chunk in enumerate(data.batches(chunk_rows)):
        rows = chunk.to_rows()
        for i, row in enumerate(rows):
            row["_row"] = offset + i  # dataset-wide row numbers in outputs and failures
        chunk_flow = run_pipeline.with_options(flow_run_name=f"{spec.name}-chunk-{n}")
        result: PipelineResult | LMBatchPendingError = chunk_flow(
            spec,
            data=rows,
            lm=lm,
            mode=mode,
            continue_on_error=True,
            lm_batch=True if batch_api else None,
            lm_batch_wait=waits,
        )
        if isinstance(result, LMBatchPendingError):  # its batch is submitted: the next chunk's goes too
            pending.append(result)
            offset += len(rows)
            logger.info("chunk %d: %s", n, result)
            continue
        parts.append(result.output)
        rows_out += result.summary.rows_out
        failed += result.summary.failed
        offset += len(rows)
        logger.info(
            "chunk %d: %d rows, %d failed (%d of %d done)",
            n,
            len(rows),
            result.summary.failed,
            offset,
            len(data),
        )
    if pending:  # end without holding the worker; the re-check runs this flow again with the same parameters
        soonest = min(pending, key=lambda p: p.check_in_s)
        recheck = schedule_recheck(soonest)
        message = f"{len(pending)} chunk(s) waiting for provider batches {[p.batch_id for p in pending]}" + (
            f"; re-check scheduled as flow run {recheck}" if recheck else ""
        )
        waiting = BatchPredictResult(
            parts=parts,
            rows_in=len(data),
            rows_out=rows_out,
            failed=failed,
            awaiting_batches=[p.batch_id for p in pending],
        )
        return Completed(name="AwaitingBatch", message=message, data=waiting)  # type: ignore[return-value]
    return BatchPredictResult(parts=parts, rows_in=len(data), rows_out=rows_out, failed=failed)
