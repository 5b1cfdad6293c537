"""Fan-out within a pool with prefect-dask (the optional ``dask`` extra): batches on a Dask cluster.

A flow with `prefect_dask.DaskTaskRunner` submits one task per batch; each task runs the batch the way
the ``run-step`` flow does (`flows.engine.step_runner.execute_step_batch`, the LM built from the settings in
the task, never shipped). The Dask cluster is a LocalCluster with in-process workers
(``processes=False``): it starts in a second instead of spawning Pythons that import DSPy, and it
exercises the same Prefect/Dask code path (task submission, futures, results) as a remote cluster.
"""

from typing import Any

import pytest

pytest.importorskip(
    "prefect_dask",
    reason="prefect-dask is an optional extra (pip install prefect-dask); this test covers it when installed",
)

from distributed import get_worker  # noqa: E402  (after the optional-dependency skip)
from prefect import flow, task  # noqa: E402
from prefect_dask import DaskTaskRunner  # noqa: E402

from dspex.settings import get_settings  # noqa: E402
from flows.engine.spec import PipelineSpec  # noqa: E402
from flows.engine.step_runner import execute_step_batch, parse_step  # noqa: E402

pytestmark = pytest.mark.integration

QUESTIONS = [f"What is item number {i}?" for i in range(10)]


@task(name="dask-batch")
def dask_batch(step: dict, rows: list[dict], batch_key: str) -> dict:
    result = execute_step_batch(
        parse_step(step), rows, batch_key=batch_key, pool="general", settings=get_settings()
    )
    return {"worker": get_worker().address, "result": result.model_dump(mode="json")}


# In-process workers: no Pythons to spawn, no serialization; the Prefect/Dask submission path is the same.
RUNNER: Any = DaskTaskRunner(
    cluster_kwargs={"processes": False, "n_workers": 1, "threads_per_worker": 3, "dashboard_address": None}
)


@flow(name="dask-batches", task_runner=RUNNER)
def dask_batches(step: dict, rows: list[dict], batch_size: int) -> list[dict]:
    chunks = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    futures = [dask_batch.submit(step, chunk, f"dask-{n}") for n, chunk in enumerate(chunks)]
    return [future.result() for future in futures]


def test_batches_run_as_tasks_on_a_dask_cluster_and_every_row_comes_back():
    spec = PipelineSpec.model_validate(
        {"name": "dask", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}
    )
    step = spec.steps[0].model_dump(mode="json")
    outcomes = dask_batches(step, [{"question": q} for q in QUESTIONS], batch_size=4)

    assert len(outcomes) == 3  # 4 + 4 + 2 rows
    assert all(o["worker"].startswith("inproc://") for o in outcomes)  # ran on the Dask worker
    results = [o["result"] for o in outcomes]
    assert [len(r["outputs"]) for r in results] == [4, 4, 2]
    outputs = [out for r in results for out in r["outputs"]]
    assert all(err is None for r in results for err in r["errors"])
    assert all(out and out["answer"] for out in outputs)
