"""Streaming: time to the first output row and total wall time, pipelined vs the barrier engine.

A 3-step pipeline (``dspy.Predict`` -> a template -> ``dspy.Predict``) over 2,000 rows, in batches
of 63 rows, on an LM that sleeps 500 ms per call, a hosted model's latency (the offline extractive
engine behind a sleep, so prompts are really built and parsed), except that the rows of one batch
(the last: a slow tail) are 10x slower in the first step. With ``--latency-ms 50`` the run is bound
by this machine's CPU instead (two cores: ~1 ms of DSPy work per call, 128 threads), where no
engine can overlap anything and pipelining only adds its chunks' task runs. Both engines run in this process on the same data, LM and pool capacity, side by
side: `run_pipeline` (the barrier engine: each step waits for every row of the one before) and
`stream_pipeline` (pipelined: each batch moves on as soon as it is done; rows are yielded as they
complete). Targets: the first pipelined row <= 10% of the barrier's total time; pipelined total
<= 0.8x the barrier's.

Then the cold start (``--cold-start``): the wall time of a ``dspex run`` process with a 10-row spec
until its first output row (``--stream``), cold (a fresh Prefect server per process, Prefect's
default) and warm (the shared local server of `deployments.local.server` and its warm runner,
`deployments.local.warm_runner`, already up); target warm <= 3 s.

Run: ``.venv/bin/python benchmarks/streaming.py`` (``--quick``: 600 rows; ``--cold-start`` adds the
CLI measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DSPEX_HOME", tempfile.mkdtemp(prefix="dspex-bench-"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DSPEX_POOL_GENERAL_CAPACITY", "128")
# Each run computes every row: no reuse of batches an earlier run completed (flows/guards/resume.py).
os.environ["DSPEX_RESUME"] = "false"

import dspex.bootstrap  # noqa: F401,E402  (Prefect and LiteLLM environment before they load)
from flows import PipelineSpec, run_pipeline, stream_pipeline  # noqa: E402
from tasks.lm.offline import OfflineExtractiveEngine  # noqa: E402

LATENCY_S = 0.500  # set by --latency-ms
SLOW_FACTOR = 10
BATCH = 63


class StragglerEngine(OfflineExtractiveEngine):
    """The offline engine behind a 50 ms sleep; first-step calls for 'hard' rows sleep 10x longer."""

    def complete(self, request: Any) -> Any:
        text = " ".join(getattr(p, "text", "") or "" for m in request.messages for p in m.parts)
        slow = "hard" in text and "[[ ## shout ## ]]" not in text  # the first step only
        time.sleep(LATENCY_S * (SLOW_FACTOR if slow else 1))
        return super().complete(request)


def straggler_lm() -> Any:
    import dspy

    return dspy.LM("dspex/offline-extractive", cache=False, num_retries=0, engine=StragglerEngine())


SPEC = {
    "name": "stream-bench",
    "steps": [
        {"module": "dspy.Predict", "signature": "context, question -> answer", "batch_size": BATCH},
        {"native": "template", "template": "{{ answer }}!", "output": "shout"},
        {"module": "dspy.Predict", "signature": "shout -> verdict", "batch_size": BATCH, "name": "judge"},
    ],
}


def pipeline_figures(n: int) -> tuple[float, float, float]:
    """(barrier total, pipelined first row, pipelined total), seconds."""
    spec = PipelineSpec.model_validate(SPEC)
    data = [
        {
            "question": f"What is {'hard ' if i >= n - BATCH else ''}item {i}?",
            "context": f"Item {i} is a red box number {i}.",
        }
        for i in range(n)
    ]
    lm = straggler_lm()
    run_pipeline(spec, data=data[:20], lm=lm)  # warm: the embedded server, module cache, imports

    start = time.perf_counter()
    barrier = run_pipeline(spec, data=data, lm=lm)
    barrier_s = time.perf_counter() - start
    assert barrier.summary.rows_out == n, barrier.summary.failed

    start = time.perf_counter()
    first = None
    seen = 0
    stream = stream_pipeline(spec, data, lm=lm, chunk_rows=BATCH)
    for _ in stream:
        if first is None:
            first = time.perf_counter() - start
        seen += 1
    pipelined_s = time.perf_counter() - start
    assert seen == n and stream.result.summary.rows_out == n
    assert stream.result.rows() == barrier.rows(), "pipelined output differs from the barrier engine's"
    return barrier_s, first or pipelined_s, pipelined_s


def cold_start_figures() -> tuple[float, float, float]:
    """Seconds: (Python imports alone, first row of `dspex run --stream` cold, warm)."""
    work = Path(tempfile.mkdtemp(prefix="dspex-cold-"))
    (work / "spec.json").write_text(
        json.dumps({"name": "qa", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]})
    )
    (work / "data.jsonl").write_text(
        "".join(json.dumps({"question": f"What is item {i}?"}) + "\n" for i in range(10))
    )
    # `dspex` itself, from this checkout (the console script's entry point, run by this interpreter).
    dspex = [sys.executable, "-c", "from deployments.console import main; main()"]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DSPEX_", "PREFECT_"))}
    base["DSPEX_HOME"] = str(work / ".dspex")
    base["PYTHONPATH"] = str(ROOT)

    def first_row(env: dict[str, str]) -> float:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [*dspex, "run", "--stream", "spec.json", "data.jsonl"],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        elapsed = time.perf_counter() - start
        proc.communicate(timeout=300)
        assert line.startswith("{"), f"no row from dspex run: {line!r}"
        return elapsed

    start = time.perf_counter()  # the floor: importing what `dspex run` imports, nothing else
    subprocess.run([sys.executable, "-c", "import deployments.cli, flows"], env=base, cwd=work, check=True)
    imports = time.perf_counter() - start
    cold = first_row({**base, "DSPEX_SHARED_SERVER": "false"})
    first_row(base)  # starts the shared server and the warm runner (paid once, like the cold figure)
    runner = work / ".dspex" / "server" / "runner.sock"
    deadline = time.monotonic() + 60
    while not runner.exists() and time.monotonic() < deadline:  # the runner imports in the background
        time.sleep(0.2)
    warm = min(first_row(base) for _ in range(2))
    subprocess.run([*dspex, "server", "stop"], cwd=work, env=base, capture_output=True, check=False)
    return imports, cold, warm


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="600 rows instead of 2,000")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--cold-start", action="store_true", help="also time `dspex run` cold and warm")
    parser.add_argument("--latency-ms", type=float, default=500.0, help="the LM's latency per call")
    args = parser.parse_args()
    global LATENCY_S
    LATENCY_S = args.latency_ms / 1000
    n = args.rows or (600 if args.quick else 2000)

    barrier_s, first_s, pipelined_s = pipeline_figures(n)
    first_ratio = first_s / barrier_s
    total_ratio = pipelined_s / barrier_s
    print(
        f"\nstreaming, {n} rows, 3 steps, batches of {BATCH}, {LATENCY_S * 1000:.0f} ms LM, "
        f"one batch {SLOW_FACTOR}x slower in step 1, pool capacity {os.environ['DSPEX_POOL_GENERAL_CAPACITY']}"
    )
    print(f"{'':28}{'first row s':>12}{'total s':>10}")
    print(f"{'barrier engine':28}{barrier_s:>12.2f}{barrier_s:>10.2f}")
    print(f"{'pipelined (stream_pipeline)':28}{first_s:>12.2f}{pipelined_s:>10.2f}")
    ok_first = first_ratio <= 0.10
    ok_total = total_ratio <= 0.80
    print(f"first row / barrier total: {first_ratio:.3f}   target <= 0.10   {'PASS' if ok_first else 'FAIL'}")
    print(f"total / barrier total:     {total_ratio:.3f}   target <= 0.80   {'PASS' if ok_total else 'FAIL'}")
    ok = ok_first and ok_total
    if args.cold_start:
        imports, cold, warm = cold_start_figures()
        print("\n`dspex run --stream`, 10 rows, seconds to the first output row")
        print(f"python imports alone (what a run in its own process waits for first): {imports:.2f}")
        print(f"cold (a Prefect server per process): {cold:.2f}")
        print(
            f"warm (server and runner up):         {warm:.2f}   target <= 3 s   {'PASS' if warm <= 3 else 'FAIL'}"
        )
        ok = ok and warm <= 3
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
