"""Tune throughput: trials per minute of the ``tune`` flow, local pools versus distributed workers.

Run: ``.venv/bin/python benchmarks/tune.py`` (``--quick`` for fewer trials).

Both modes run on this machine against the same real Prefect server on loopback (``prefect server
start`` with its own PREFECT_HOME in a temporary folder), with the same spec, dev set, trial count
and trial concurrency, and the bundled offline LM:

- **local**: ``tune_pipeline(..., mode="local")``: each trial is a run-pipeline subflow whose batches
  run on the in-process pools;
- **distributed**: the dspex pools are created, ``run-step-general`` is deployed from prefect.yaml and
  ``--workers`` warm ``dspex worker --pool general`` processes are started (the e2e tests' cluster
  helper); ``tune_pipeline(..., mode="distributed")`` then dispatches every trial's batches to them.

The spec answers the bundled questions from their gold passage (``context``) with a variable
reasoner (``dspy.Predict`` / ``dspy.ChainOfThought``) and a variable word limit in the instructions;
pruning is off, so every trial evaluates every row and the two modes do the same work. The figure
is trials per minute of wall time (the whole tune flow, artifacts included); the ratio is
distributed / local. On one machine distributed mode pays a dispatch round trip per batch and gains
no extra cores, so it is expected to be slower here: what it buys is fan-out across machines. When
the cluster cannot start, the script says why and still prints the local figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "deployments"))  # the e2e tests' cluster helper

__all__ = ["bench_spec", "devset", "main"]


def bench_spec() -> Any:
    """Two variables, one module step: the reasoner and a word limit in its instructions."""
    from flows.engine.spec import PipelineSpec

    return PipelineSpec.model_validate(
        {
            "name": "bench-tune",
            "variables": {
                "reasoner": {"choice": ["dspy.Predict", "dspy.ChainOfThought"]},
                "words": {"int": [3, 12], "default": 6},
            },
            "steps": [
                {
                    "name": "answer",
                    "module": "${reasoner}",
                    "signature": "context: list[str], question: str -> answer: str",
                    "instructions": "Answer from the context in at most ${words} words.",
                }
            ],
            "continue_on_error": True,
        }
    )


def devset(n: int) -> list[dict[str, Any]]:
    """``n`` bundled questions with their gold passage as ``context`` and their answers as ``gold``."""
    from tasks.retrieval import load_demo_corpus, load_demo_questions

    passages = {p["id"]: p["text"] for p in load_demo_corpus()}
    rows = [
        {
            "question": q["question"],
            "context": [passages[q["passage_id"]]],
            "gold": [q["answer"], *q["aliases"]],
        }
        for q in load_demo_questions("all")
        if q.get("passage_id") in passages
    ]
    return (rows * (n // len(rows) + 1))[:n]


def _tune(
    mode: Literal["local", "distributed"], trials: int, rows: list[dict[str, Any]], concurrency: int
) -> tuple[float, Any]:
    from flows.tune import tune_pipeline

    start = time.perf_counter()
    result = tune_pipeline(
        bench_spec(),
        devset=rows,
        n_trials=trials,
        pruner="none",
        concurrency=concurrency,
        mode=mode,
        seed=0,
    )
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> int:
    """Measure both modes and print the table; 0 when both ran."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 trials of 16 rows per mode")
    parser.add_argument("--trials", type=int, default=None, help="trials per mode (default 12)")
    parser.add_argument("--rows", type=int, default=None, help="dev rows per trial (default 32)")
    parser.add_argument("--concurrency", type=int, default=2, help="trials evaluated at a time")
    parser.add_argument("--workers", type=int, default=2, help="general-pool workers in distributed mode")
    args = parser.parse_args(argv)
    trials = args.trials or (6 if args.quick else 12)

    from cluster import Cluster, drain_api_workers

    results: dict[str, tuple[float, Any] | str] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dspex-bench-tune-") as root:
        cluster = Cluster(Path(root), extra_env={"DSPEX_POOL_GENERAL_CAPACITY": "4"})
        try:
            cluster.start_server()
            for key in ("PREFECT_API_URL", "PREFECT_HOME", "DSPEX_HOME", "DSPEX_PAYLOAD_URL"):
                os.environ[key] = cluster.env[key]
            os.environ["PREFECT_LOGGING_LEVEL"] = "ERROR"
            os.environ["DSPEX_DISPATCH_POLL_SECONDS"] = "0.2"
            rows = devset(args.rows or (16 if args.quick else 32))  # imports Prefect: after the env
            results["local"] = _tune("local", trials, rows, args.concurrency)
            try:
                cluster.setup(["run-step-general"])
                names = [f"bench-tune-{i}" for i in range(args.workers)]
                for name in names:
                    cluster.start_worker("general", name)
                cluster.wait_workers(names)
                results["distributed"] = _tune("distributed", trials, rows, args.concurrency)
            except Exception as exc:  # report why distributed could not run, keep the local figure
                results["distributed"] = f"could not run: {type(exc).__name__}: {exc}"[:600]
                traceback.print_exc()
            drain_api_workers(cluster.api_url)
        finally:
            cluster.close()
    total = time.perf_counter() - t0

    print(
        f"\nTune throughput: {trials} trials x {len(rows)} rows, {args.concurrency} trials at a time, "
        f"offline LM, no pruning"
    )
    print(f"{'mode':<12} {'wall s':>8} {'trials/min':>11} {'best':>6}  best values")
    per_minute: dict[str, float] = {}
    for mode in ("local", "distributed"):
        outcome = results.get(mode, "not run")
        if isinstance(outcome, str):
            print(f"{mode:<12} {outcome}")
            continue
        wall, result = outcome
        per_minute[mode] = len(result.trials) / wall * 60
        print(
            f"{mode:<12} {wall:>8.1f} {per_minute[mode]:>11.2f} {result.best_score:>6.3f}  {result.best_values}"
        )
    if len(per_minute) == 2:
        print(f"ratio distributed / local: {per_minute['distributed'] / per_minute['local']:.2f}x")
    print(f"whole run (server, deploy, workers, both modes): {total:.0f} s")
    return 0 if len(per_minute) == 2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
