"""Dispatch overhead: one small batch to a work pool and back, ours against Prefect's defaults.

Run: ``.venv/bin/python benchmarks/dispatch.py`` (``--quick`` for fewer repeats).

The script starts a real Prefect server on loopback (``prefect server start``, its own PREFECT_HOME
in a temporary folder, a free port), creates the dspex pools (``dspex pools create``), deploys
``run-step-general`` from prefect.yaml and starts one warm ``dspex worker --pool general``. For the
reference it also creates a ``process``-type pool with a ``run-step`` deployment of the same flow and
starts a plain ``prefect worker start --type process`` with Prefect's default query interval
(``PREFECT_WORKER_QUERY_SECONDS``, 10 s). Every process it starts is stopped in ``finally``.

One dispatch = one batch of 4 rows through ``dspy.Predict`` with the offline LM (the work itself
takes milliseconds), from writing the batch payload to holding the `BatchResult`:

- **ours**: ``flows.distributed.remote_dispatcher(settings)`` (what ``run_pipeline`` uses in
  distributed mode): ``run_deployment(timeout=0)``, then polling the flow run every
  ``dispatch_poll_seconds`` (0.2 s here), against the warm dspex worker (query interval 0.5 s; the
  flow runs in the worker's own process, no interpreter start);
- **Prefect default**: plain ``prefect.deployments.run_deployment(...)`` with its default
  ``poll_interval`` (5 s) against the process worker, which starts a fresh Python per flow run.

Both run one untimed warm-up first. Each row reports the p50 and p95 of the round trip (nearest-rank
percentiles), and *overhead* = round trip minus the batch's own wall time measured in the worker.
Target: our p50 <= 2 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "deployments"))  # the e2e tests' cluster helper

__all__ = ["main", "percentile"]

TARGET_P50_S = 2.0
PROCESS_POOL = "bench-process"
PROCESS_DEPLOYMENT = "run-step/run-step-process"
ROWS = [{"question": q} for q in ("What is 2+2?", "Who wrote Hamlet?", "What is DSPy?", "Where is Paris?")]


def percentile(values: list[float], pct: float) -> float:
    """The nearest-rank percentile of ``values`` (no interpolation: every figure was measured)."""
    ordered = sorted(values)
    rank = max(int(-(-pct * len(ordered) // 100)), 1)  # ceil(pct/100 * n), at least 1
    return ordered[rank - 1]


def _step() -> Any:
    from flows.spec import PipelineSpec

    spec = PipelineSpec.model_validate(
        {"name": "bench", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}
    )
    return spec.steps[0]


def _decision(step: Any) -> Any:
    from flows.router import RouteDecision

    return RouteDecision(
        step=step.name,
        module="dspy.Predict",
        pool="general",
        requested_pool="general",
        reason="benchmark",
        timeout_s=60.0,
        batch_size=len(ROWS),
        batches=1,
        capacity=4,
        per_example_ms=1.0,
        estimate_source="static",
        estimated_ms=4.0,
    )


def _ours(settings: Any, step: Any) -> tuple[float, float]:
    """One dispatch through the remote dispatcher: (round trip s, batch wall s)."""
    from flows.distributed import remote_dispatcher

    dispatch = remote_dispatcher(settings)
    start = time.perf_counter()
    result = dispatch(step, ROWS, _decision(step), f"bench-ours-{uuid.uuid4().hex}")
    elapsed = time.perf_counter() - start
    assert result.failed == 0 and all(out and out.get("answer") for out in result.outputs), result
    return elapsed, result.wall_ms / 1000


def _prefect_default(step: Any) -> tuple[float, float]:
    """One dispatch with plain ``run_deployment`` (default poll interval) to the process pool."""
    from prefect.deployments import run_deployment

    from flows.step_runner import read_batch_result
    from tasks.payloads import write_payload

    key = f"bench-prefect-{uuid.uuid4().hex}"
    start = time.perf_counter()
    batch = write_payload(ROWS, name=f"batches/{key}")
    flow_run: Any = run_deployment(  # sync call: a FlowRun, not a coroutine
        PROCESS_DEPLOYMENT,
        parameters={
            "step": step.model_dump(mode="json"),
            "batch": batch.model_dump(mode="json"),
            "batch_key": key,
            "pool": "general",
        },
    )
    found = read_batch_result(key)
    elapsed = time.perf_counter() - start
    state = flow_run.state.type.value if flow_run.state is not None else "?"
    assert state == "COMPLETED" and found is not None, f"run {flow_run.name} ended {state}"
    return elapsed, found[1].wall_ms / 1000


def _process_pool_and_deployment(api_url: str) -> None:
    """A process-type pool and a run-step deployment on it (what `prefect deploy` would record)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.utilities.callables import parameter_schema
    from prefect.workers.process import ProcessWorker

    from flows.step_runner import run_step

    with get_client(sync_client=True) as client:
        client.create_work_pool(
            WorkPoolCreate(
                name=PROCESS_POOL,
                type="process",
                base_job_template=ProcessWorker.get_default_base_job_template(),
            ),
            overwrite=True,
        )
        flow_id = client.create_flow_from_name("run-step")
        client.create_deployment(
            flow_id,
            "run-step-process",
            work_pool_name=PROCESS_POOL,
            entrypoint="flows/step_runner.py:run_step",
            path=str(REPO),
            pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}],
            parameter_openapi_schema=parameter_schema(run_step).model_dump(),
            parameters={"pool": "general"},
        )


def _wait_worker(pool: str, name_prefix: str, cluster: Any, timeout: float = 90) -> None:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            if any(w.name.startswith(name_prefix) for w in client.read_workers_for_work_pool(pool)):
                return
            for key, proc in cluster.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{key} exited:\n{cluster.log(key)}")
            time.sleep(0.5)
    raise TimeoutError(f"no worker {name_prefix}* registered in pool {pool!r} within {timeout} s")


def _row(name: str, trips: list[float], works: list[float]) -> list[str]:
    overheads = [t - w for t, w in zip(trips, works, strict=True)]
    return [
        name,
        str(len(trips)),
        f"{percentile(trips, 50):.2f}",
        f"{percentile(trips, 95):.2f}",
        f"{percentile(overheads, 50):.2f}",
        f"{percentile(overheads, 95):.2f}",
        f"{statistics.median(works) * 1000:.0f}",
    ]


def main(argv: list[str] | None = None) -> int:
    """Start the cluster, measure both dispatch paths, print the table; 0 when the target is met."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 of ours, 2 of Prefect's (about 1.5 min)")
    parser.add_argument("--repeats", type=int, default=None, help="timed dispatches of ours (default 15)")
    parser.add_argument("--baseline-repeats", type=int, default=None, help="of Prefect's (default 4)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (6 if args.quick else 15)
    baseline_repeats = args.baseline_repeats or (2 if args.quick else 4)

    from cluster import BIN, Cluster  # the e2e tests' helper: server, pools, deploys, workers

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dspex-bench-dispatch-") as root:
        cluster = Cluster(Path(root), extra_env={"DSPEX_POOL_GENERAL_CAPACITY": "4"})
        try:
            cluster.start_server()
            # This process is the orchestrator: same server, same shared payload folder.
            for key in ("PREFECT_API_URL", "PREFECT_HOME", "DSPEX_HOME", "DSPEX_PAYLOAD_URL"):
                os.environ[key] = cluster.env[key]
            os.environ["PREFECT_LOGGING_LEVEL"] = "ERROR"
            cluster.setup(["run-step-general"])
            _process_pool_and_deployment(cluster.api_url)
            cluster.start_worker("general", "bench-warm")
            cluster._spawn(  # Prefect's defaults: no query-seconds override, a fresh Python per run
                "worker-process",
                [
                    str(BIN / "prefect"),
                    "worker",
                    "start",
                    "--pool",
                    PROCESS_POOL,
                    "--type",
                    "process",
                    "--name",
                    "bench-process",
                ],
            )
            _wait_worker("general", "bench-warm", cluster)
            _wait_worker(PROCESS_POOL, "bench-process", cluster)
            setup_s = time.perf_counter() - t0

            from dspex.settings import get_settings

            settings = get_settings(dispatch_poll_seconds=0.2, worker_grace_seconds=30)
            step = _step()
            _ours(settings, step)  # warm-up: the worker imports the flow, dspy and the LM once
            ours = [_ours(settings, step) for _ in range(repeats)]
            _prefect_default(step)  # warm-up: the process worker's first poll and imports
            theirs = [_prefect_default(step) for _ in range(baseline_repeats)]
        finally:
            cluster.close()
    total_s = time.perf_counter() - t0

    ours_trips, ours_work = [t for t, _ in ours], [w for _, w in ours]
    their_trips, their_work = [t for t, _ in theirs], [w for _, w in theirs]
    header = ["path", "n", "p50 s", "p95 s", "overhead p50 s", "overhead p95 s", "batch work ms"]
    rows = [
        header,
        _row("ours: remote_dispatcher + warm dspex worker", ours_trips, ours_work),
        _row("Prefect default: run_deployment + process worker", their_trips, their_work),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    print(f"\nDispatch of one {len(ROWS)}-row batch to a work pool and back (offline LM)")
    for n, row in enumerate(rows):
        print(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))
    p50 = percentile(ours_trips, 50)
    ratio = percentile(their_trips, 50) / p50
    print(f"\nours, each round trip (s): {' '.join(f'{t:.2f}' for t in ours_trips)}")
    print(f"Prefect default, each (s): {' '.join(f'{t:.2f}' for t in their_trips)}")
    print(f"ratio p50 Prefect default / ours: {ratio:.1f}x")
    print(
        f"target: ours p50 <= {TARGET_P50_S:.1f} s -> {'met' if p50 <= TARGET_P50_S else 'NOT met'} ({p50:.2f} s)"
    )
    print(f"setup (server, pools, deploy, workers): {setup_s:.0f} s; whole run: {total_s:.0f} s")
    return 0 if p50 <= TARGET_P50_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
