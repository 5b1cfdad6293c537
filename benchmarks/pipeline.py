"""Pipeline throughput in local mode against plain ``dspy.Parallel``, and learned-estimate error.

4,000 examples go through a one-step ``dspy.Predict`` pipeline whose LM sleeps 20 ms per call (the
offline extractive engine behind a 20 ms sleep, so prompts are really built and parsed), and through
``dspy.Parallel`` over the same program with ``num_threads`` equal to the general pool's capacity.
Both run in this process, one after the other; the ratio is ours / Parallel's throughput (target
>= 0.9). The pipeline is run three times; the table shows each run's estimate error (runs 1 to 3:
static estimate, then learned; target: median absolute error <= 20% by the third run).

Run: ``.venv/bin/python benchmarks/pipeline.py`` (``--quick``: 800 examples).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DSPEX_HOME", tempfile.mkdtemp(prefix="dspex-bench-"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# Every run must pay for its rows: with resume on, runs 2-3 would reuse run 1's rows and both the
# throughput and the estimate-error figures would measure the resume store instead.
os.environ["DSPEX_RESUME"] = "false"

import dspex.bootstrap  # noqa: F401  (Prefect and LiteLLM environment before they load)
from dspex.settings import get_settings
from flows import PipelineSpec, run_pipeline
from tasks.lm.offline import OfflineExtractiveEngine

LATENCY_S = 0.020


class SleepyEngine(OfflineExtractiveEngine):
    """The offline engine, 20 ms slower per call: a stand-in for a fast hosted LM."""

    def complete(self, request):  # type: ignore[no-untyped-def]
        time.sleep(LATENCY_S)
        return super().complete(request)


def sleepy_lm():  # type: ignore[no-untyped-def]
    import dspy

    return dspy.LM("dspex/offline-extractive", cache=False, num_retries=0, engine=SleepyEngine())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="800 examples instead of 4,000")
    parser.add_argument("--examples", type=int, default=None)
    args = parser.parse_args()
    n = args.examples or (800 if args.quick else 4000)
    capacity = get_settings().pool_general_capacity
    data = [
        {"question": f"What is item {i}?", "context": f"Item {i} is a red box number {i}."} for i in range(n)
    ]
    spec = PipelineSpec.model_validate(
        {"name": "bench", "steps": [{"module": "dspy.Predict", "signature": "context, question -> answer"}]}
    )
    lm = sleepy_lm()
    import dspy

    # dspy.Parallel over the same program, same LM, num_threads = the general pool's capacity.
    program = dspy.Predict("context, question -> answer")
    pairs = [(program, dspy.Example(**row).with_inputs("context", "question")) for row in data]
    start = time.perf_counter()
    with dspy.context(lm=lm):
        parallel_out = dspy.Parallel(num_threads=capacity, disable_progress_bar=True)(pairs)
    parallel_s = time.perf_counter() - start
    assert len(parallel_out) == n

    runs = []
    for _ in range(3):
        start = time.perf_counter()
        result = run_pipeline(spec, data=data, lm=lm)
        runs.append((time.perf_counter() - start, result.summary.steps[0]))
        assert result.summary.rows_out == n, result.summary.failed

    print(
        f"\npipeline throughput, local mode, {n} examples, {LATENCY_S * 1000:.0f} ms LM, concurrency {capacity}"
    )
    print(f"{'':28}{'seconds':>10}{'examples/s':>12}")
    print(f"{'dspy.Parallel':28}{parallel_s:>10.2f}{n / parallel_s:>12.1f}")
    for i, (seconds, _) in enumerate(runs, 1):
        print(f"{'run_pipeline, run ' + str(i):28}{seconds:>10.2f}{n / seconds:>12.1f}")
    best = min(seconds for seconds, _ in runs[1:])
    ratio = (n / best) / (n / parallel_s)
    print(
        f"ratio (ours, best of runs 2-3 / Parallel): {ratio:.2f}x   target >= 0.9x   {'PASS' if ratio >= 0.9 else 'FAIL'}"
    )
    first_ratio = (n / runs[0][0]) / (n / parallel_s)
    print(
        f"ratio of run 1 (includes the embedded server's start and static-estimate batching): {first_ratio:.2f}x"
    )

    print("\nestimated vs actual step duration (the 'duration-estimates' artifact)")
    print(f"{'run':>4}{'estimate':>10}{'batches':>9}{'estimated ms':>14}{'actual ms':>11}{'error %':>9}")
    for i, (_, record) in enumerate(runs, 1):
        print(
            f"{i:>4}{record.estimate_source:>10}{record.batches:>9}{record.estimated_ms:>14.0f}"
            f"{record.actual_ms:>11.0f}{record.error_pct:>9.1f}"
        )
    third = runs[2][1].error_pct or 0.0
    print(f"run 3 absolute error: {third:.1f}%   target <= 20%   {'PASS' if third <= 20 else 'FAIL'}")
    print(
        f"median absolute error of runs 2-3: {statistics.median(r.error_pct or 0 for _, r in runs[1:]):.1f}%"
    )
    return 0 if ratio >= 0.9 and third <= 20 else 1


if __name__ == "__main__":
    raise SystemExit(main())
