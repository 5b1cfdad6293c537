"""Benchmark: registry lookup and routing decision latency, against one ``dspy.Predict`` call.

Run: ``.venv/bin/python benchmarks/registry.py`` (``--quick`` for a smaller run).

Targets (docs: DESIGN.md, performance): p50 <= 20 us, and <= 1% of one ``dspy.Predict`` call on an
instant LM (DSPy's ``DummyLM``), both measured side by side in this run. The registry is the full one
(core catalogue, discovery from the installed dspy, learned estimates for a few modules), built in a
temporary folder so nothing of the project's state is touched.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from registry import ModuleRegistry

__all__ = ["main"]

TARGET_US = 20.0
TARGET_RATIO = 0.01


def _p50_us(call: Callable[[], object], *, batches: int, per_batch: int) -> float:
    """Median per-call time in microseconds over ``batches`` timed batches of ``per_batch`` calls."""
    timings = []
    for _ in range(batches):
        start = time.perf_counter_ns()
        for _ in range(per_batch):
            call()
        timings.append((time.perf_counter_ns() - start) / per_batch / 1000.0)
    return statistics.median(timings)


def _predict_p50_us(calls: int) -> float:
    import dspy
    from dspy.utils import DummyLM

    lm = DummyLM([{"answer": "4"}] * (calls + 20))
    predict = dspy.Predict("question -> answer")
    timings = []
    with dspy.context(lm=lm):
        for i in range(calls + 20):
            start = time.perf_counter_ns()
            predict(question=f"What is 2 + 2? ({i})")  # distinct inputs: no cache hit
            if i >= 20:  # warm-up excluded
                timings.append((time.perf_counter_ns() - start) / 1000.0)
    return statistics.median(timings)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table; exit status 1 when a target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a few seconds)")
    args = parser.parse_args(argv)
    batches, per_batch, predict_calls = (50, 200, 100) if args.quick else (300, 500, 500)

    with tempfile.TemporaryDirectory() as folder:
        registry = ModuleRegistry(path=Path(folder) / "registry.json", min_samples=3)
        rng = random.Random(0)
        for name in ("dspy.Predict", "dspy.ChainOfThought", "dspy.ColBERTv2"):
            for _ in range(10):
                registry.record_duration(name, rng.uniform(5, 50))
        names = registry.names()
        sizes = [None, 50, 500, 5_000, 50_000]
        contexts = [{"input_size": s, "optimize_latency": bool(i % 2)} for i, s in enumerate(sizes)]
        counter = iter(range(10**9))

        def lookup() -> object:
            return registry.get_module(names[next(counter) % len(names)])

        def route() -> object:
            i = next(counter)
            return registry.routing_recommendation(names[i % len(names)], contexts[i % len(contexts)])

        def route_varying_size() -> object:
            i = next(counter)
            return registry.routing_recommendation("dspy.ChainOfThought", {"input_size": i % 100_000})

        def route_after_write() -> float:
            # A write swaps the snapshot, so the timed routing call starts from an empty memo.
            registry.record_duration("dspy.Predict", 10.0)
            start = time.perf_counter_ns()
            registry.routing_recommendation("dspy.Predict", {"input_size": 500})
            return (time.perf_counter_ns() - start) / 1000.0

        write_only = _p50_us(
            lambda: registry.record_duration("dspy.Predict", 10.0), batches=batches, per_batch=50
        )
        after_write = statistics.median(route_after_write() for _ in range(batches * 20))
        rows = [
            ("get_module", _p50_us(lookup, batches=batches, per_batch=per_batch)),
            ("routing_recommendation", _p50_us(route, batches=batches, per_batch=per_batch)),
            (
                "routing, a new input size each call",
                _p50_us(route_varying_size, batches=batches, per_batch=per_batch),
            ),
            ("routing right after a write (memo cold)", after_write),
        ]
    predict_us = _predict_p50_us(predict_calls)

    print(
        f"registry: {len(names)} modules; reference: dspy.Predict on DummyLM, p50 {predict_us:,.1f} us/call"
    )
    header = f"{'operation':<42}{'p50 us':>10}{'% of Predict':>14}{'target':>22}{'':>6}"
    print(header)
    print("-" * len(header))
    missed = False
    for label, p50 in rows:
        ratio = p50 / predict_us
        ok = p50 <= TARGET_US and ratio <= TARGET_RATIO
        missed |= label in ("get_module", "routing_recommendation") and not ok
        target = f"<= {TARGET_US:.0f} us, <= {TARGET_RATIO:.0%}"
        print(f"{label:<42}{p50:>10.2f}{ratio:>14.3%}{target:>22}{'ok' if ok else 'MISS':>6}")
    print(f"{'(record_duration, for reference)':<42}{write_only:>10.2f}{write_only / predict_us:>14.3%}")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
