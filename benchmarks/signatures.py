"""Signature parse time: ours (uncached and cached) against ``dspy.Signature(text)``, in one run.

Run: ``.venv/bin/python benchmarks/signatures.py [--quick]``

Each figure is the median over several rounds of the mean time per call within a round (a round is a
batch of calls, so the clock's own overhead does not swamp sub-microsecond calls). "Uncached" clears
the parse cache before every call, so it times the tokenizer, parser and type resolver in full.
Targets (docs/DESIGN.md): uncached >= 20x faster than DSPy, cached >= 1000x.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import dspy

from tasks.signatures import clear_signature_cache, parse_signature

SEED = "question: str, context: list[str] -> answer: str, confidence: float"
TARGET_UNCACHED = 20.0
TARGET_CACHED = 1000.0


def _median_per_call(fn: Callable[[], object], calls: int, rounds: int) -> float:
    """Median over ``rounds`` of the mean seconds per call in a batch of ``calls``."""
    fn()  # warm up (imports, first-call caches)
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls)
    return statistics.median(samples)


def _uncached() -> object:
    clear_signature_cache()
    return parse_signature(SEED)


def _cached() -> object:
    return parse_signature(SEED)


def _dspy() -> object:
    return dspy.Signature(SEED)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a few seconds)")
    args = parser.parse_args()
    rounds = 7 if args.quick else 21

    # Same answers first: a benchmark of a parser that disagrees with DSPy would mean nothing.
    ours, theirs = parse_signature(SEED), dspy.Signature(SEED)
    assert [(f.name, f.annotation) for f in ours.fields] == [
        (n, f.annotation) for n, f in theirs.fields.items()
    ]

    t_dspy = _median_per_call(_dspy, 20 if args.quick else 50, rounds)
    t_uncached = _median_per_call(_uncached, 200 if args.quick else 1000, rounds)
    t_cached = _median_per_call(_cached, 20_000 if args.quick else 200_000, rounds)
    clear_signature_cache()

    r_uncached = t_dspy / t_uncached
    r_cached = t_dspy / t_cached
    rows = [
        ("dspy.Signature(text)", t_dspy, "1.0x", "reference", ""),
        (
            "ours, uncached",
            t_uncached,
            f"{r_uncached:,.1f}x",
            f">= {TARGET_UNCACHED:,.0f}x",
            r_uncached >= TARGET_UNCACHED,
        ),
        (
            "ours, cached",
            t_cached,
            f"{r_cached:,.0f}x",
            f">= {TARGET_CACHED:,.0f}x",
            r_cached >= TARGET_CACHED,
        ),
    ]
    print(f"signature parse, median per call: {SEED!r}")
    print(
        f"dspy {dspy.__version__}, Python {sys.version.split()[0]}, {rounds} rounds{' (quick)' if args.quick else ''}"
    )
    print(f"{'what':<22} {'median':>12} {'vs DSPy':>10} {'target':>10}  result")
    for name, seconds, ratio, target, ok in rows:
        result = "" if ok == "" else ("PASS" if ok else "FAIL")
        print(f"{name:<22} {seconds * 1e6:>9.2f} us {ratio:>10} {target:>10}  {result}")
    passed = r_uncached >= TARGET_UNCACHED and r_cached >= TARGET_CACHED
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
