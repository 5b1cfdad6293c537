"""Against a rate-limited, sometimes-down provider: throughput, 429s, outage cost, re-run cost.

A loopback OpenAI-compatible server (`tests/support/openai_server.py`) answers like a model after
``--latency`` seconds, allows ``--limit`` requests per second (a token bucket holding one second's
worth; beyond it: 429 with ``Retry-After``), reports token usage, and has an outage switch. Side by
side, in one process:

1. **rate limit**: ``run_pipeline`` (``DSPEX_LM_REQUESTS_PER_MINUTE`` set to the provider's limit,
   the general pool at 32) versus ``dspy.Parallel(num_threads=32)`` over the same program, each on
   ``--rows`` rows: rows/s (and % of the provider's limit), 429s (% of requests), failed rows. Twice:
   *quiet* (nothing added; the machine's load average is printed, since others may be using it) and
   *loaded* (``--load-procs`` CPU-bound processes spinning beside this one, as on a busy machine).
   Targets, in both: >= 90% of the limit, <= 2% of requests answered 429, no failed row.
2. **outage**: every request answers 500; a 1,000-row run: requests and seconds until it ends, and
   how its rows are accounted (completed, failed, not attempted). Target: <= 60 s, <= 50 requests.
3. **re-run after a failure**: the outage starts after ``--outage-after`` requests of a 1,000-row run;
   once the provider is back, the same pipeline runs again at once, in this process, whose breaker
   is still open: the re-run waits out the cool-down (``DSPEX_BREAKER_RESET_SECONDS``, 5 s here),
   probes and runs the rest. LM requests the re-run makes versus the rows left unfinished.
   Target: the re-run completes every row and pays only for the unfinished rows.

Run: ``.venv/bin/python benchmarks/provider.py`` (``--quick``: 400 rows in part 1; ``--only-rate``:
part 1 alone).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "tests"))  # the loopback server lives with the test support code
os.environ.setdefault("DSPEX_HOME", tempfile.mkdtemp(prefix="dspex-bench-"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("DSPY_CACHEDIR", tempfile.mkdtemp(prefix="dspex-bench-cache-"))

import dspex.bootstrap  # noqa: E402,F401  (Prefect and LiteLLM environment before they load)

ANSWER = "[[ ## answer ## ]]\nforty-two\n\n[[ ## completed ## ]]"
SPEC = {"name": "provider-bench", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}


def _lm(server: Any, **kwargs: Any) -> Any:
    import dspy

    return dspy.LM("openai/test-model", api_base=server.base_url, api_key="sk-bench", cache=False, **kwargs)


def _rows(n: int, tag: str) -> list[dict[str, Any]]:
    return [{"question": f"{tag} question {i}?"} for i in range(n)]


def _env(**values: Any) -> None:
    for key, value in values.items():
        os.environ[f"DSPEX_{key.upper()}"] = str(value)


def _ours(server: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    from flows import PipelineSpec, run_pipeline

    before_requests, before_429 = len(server.chat_requests), server.throttled
    start = time.perf_counter()
    result = run_pipeline(
        PipelineSpec.model_validate(SPEC), data=rows, lm=_lm(server), continue_on_error=True
    )
    seconds = time.perf_counter() - start
    summary = result.summary
    return {
        "seconds": seconds,
        "rows_per_s": summary.rows_out / seconds,
        "requests": len(server.chat_requests) - before_requests,
        "throttled": server.throttled - before_429,
        "failed": summary.failed,
        "completed": summary.rows_out,
        "not_attempted": sum(r.not_attempted for r in summary.steps),
    }


def _parallel(server: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    import logging

    import dspy

    logging.getLogger("dspy.utils.parallelizer").setLevel(logging.CRITICAL)  # one line per failed row
    program = dspy.Predict("question -> answer")
    before_requests, before_429 = len(server.chat_requests), server.throttled
    start = time.perf_counter()
    with dspy.context(lm=_lm(server)):
        outputs = dspy.Parallel(
            num_threads=32, max_errors=len(rows) + 1, provide_traceback=False, disable_progress_bar=True
        )([(program, dspy.Example(**row).with_inputs("question")) for row in rows])
    seconds = time.perf_counter() - start
    done = sum(1 for out in outputs if out is not None)
    return {
        "seconds": seconds,
        "rows_per_s": done / seconds,
        "requests": len(server.chat_requests) - before_requests,
        "throttled": server.throttled - before_429,
        "failed": len(rows) - done,
    }


def _line(name: str, r: dict[str, Any], limit: float) -> str:
    share = 100 * r["throttled"] / max(r["requests"], 1)
    return (
        f"{name:<34} {r['rows_per_s']:>8.1f} {100 * r['rows_per_s'] / limit:>8.1f}% "
        f"{r['throttled']:>6} {share:>6.1f}% {r['failed']:>7} {r['seconds']:>8.1f}"
    )


@contextlib.contextmanager
def _cpu_load(procs: int) -> Any:
    """``procs`` CPU-bound processes spinning beside this one while the block runs."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(procs)]
    try:
        time.sleep(0.5)  # let them take their share of the CPUs before anything is timed
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def _load_average() -> str:
    with contextlib.suppress(OSError):
        return f"{os.getloadavg()[0]:.1f}"
    return "unknown"


def rate_limit(n: int, limit: float, latency: float, load_procs: int) -> None:
    from support.openai_server import openai_server

    from flows.guards import ratelimit

    print(
        f"\n1. provider limit {limit:.0f} requests/s, {latency * 1000:.0f} ms latency, {n} rows, {os.cpu_count()} CPUs"
    )
    header = f"{'':<34} {'rows/s':>8} {'of limit':>9} {'429s':>6} {'429 %':>7} {'failed':>7} {'seconds':>8}"
    verdicts = []
    with openai_server(responder=lambda messages: ANSWER) as server:
        server.latency_s, server.rate_limit_per_s = latency, limit
        _env(lm_requests_per_minute=limit * 60, pool_general_capacity=32)
        _ours(server, _rows(8, "warm-up"))  # the embedded Prefect server starts here, not in the timing
        for label, procs in (("quiet", 0), ("loaded", load_procs)):
            what = f"{procs} CPU-bound process(es) spinning beside this one" if procs else "nothing added"
            print(f"\n   {label}: {what} (load average {_load_average()} before)")
            print(header)
            with _cpu_load(procs):
                ratelimit.reset_limiters()  # each measurement starts from the configured rate
                time.sleep(1.5)  # let the provider's bucket refill
                ours = _ours(server, _rows(n, f"ours-{label}"))
                time.sleep(1.5)
                theirs = _parallel(server, _rows(n, f"parallel-{label}"))
                seen = _load_average()
            print(_line("ours (run_pipeline, pool 32)", ours, limit))
            print(_line("dspy.Parallel(num_threads=32)", theirs, limit))
            ratio = ours["rows_per_s"] / limit
            ok = ratio >= 0.9 and ours["throttled"] <= 0.02 * ours["requests"] and not ours["failed"]
            verdicts.append((label, ratio, ok))
            print(
                f"   {label}: ours at {ratio:.2f}x the limit (load average {seen} after); "
                f"target (>= 90% of limit, <= 2% 429s, 0 failed): {'met' if ok else 'NOT met'}"
            )
    print(
        "   ratio to the limit: "
        + ", ".join(f"{label} {ratio:.2f}x ({'met' if ok else 'NOT met'})" for label, ratio, ok in verdicts)
    )


def outage(n: int) -> None:
    from support.openai_server import openai_server

    from flows.guards import circuit

    print(f"\n2. outage: every request answers 500; {n} rows")
    with openai_server(responder=lambda messages: ANSWER) as server:
        server.outage_status = 500
        circuit.reset_breakers()
        r = _ours(server, _rows(n, "outage"))
    print(
        f"   ours: ended in {r['seconds']:.1f} s after {r['requests']} requests; rows: {r['completed']} completed, "
        f"{r['failed'] - r['not_attempted']} failed, {r['not_attempted']} not attempted"
    )
    ok = r["seconds"] <= 60 and r["requests"] <= 50 and r["completed"] + r["failed"] == n
    print(f"   target (<= 60 s, <= 50 requests, every row accounted): {'met' if ok else 'NOT met'}")


def rerun(n: int, after: int) -> None:
    from support.openai_server import openai_server

    from flows.guards import circuit

    print(f"\n3. re-run after a failure: the provider goes down after {after} requests of a {n}-row run")
    lock = threading.Lock()
    served = {"n": 0}
    with openai_server() as server:

        def responder(messages: Any) -> str:
            with lock:
                served["n"] += 1
                if served["n"] == after:
                    server.outage_status = 500  # every later request fails, until the switch is reset
            return ANSWER

        server.responder = responder
        circuit.reset_breakers()
        _env(breaker_reset_seconds=5)
        rows = _rows(n, "rerun")
        first = _ours(server, rows)
        server.outage_status = None
        # At once, in this process: its breaker is still open (a new process's would be closed).
        second = _ours(server, rows)
    unfinished = n - first["completed"]
    print(
        f"   first run: {first['completed']} completed, {unfinished} unfinished, {first['requests']} requests\n"
        f"   re-run:    {second['completed']} completed, {second['requests']} LM requests "
        f"for {unfinished} unfinished rows, {second['seconds']:.1f} s (the breaker's 5 s cool-down included)"
    )
    ok = second["completed"] == n and second["requests"] <= unfinished
    print(f"   target (the re-run pays only for unfinished rows): {'met' if ok else 'NOT met'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="400 rows in part 1 instead of 1,200")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--limit", type=float, default=40.0, help="provider requests per second")
    parser.add_argument("--latency", type=float, default=0.2, help="provider latency, seconds")
    parser.add_argument("--outage-after", type=int, default=300)
    parser.add_argument(
        "--load-procs", type=int, default=1, help="CPU-bound processes beside the loaded measurement"
    )
    parser.add_argument("--only-rate", action="store_true", help="part 1 (the rate limit) only")
    args = parser.parse_args()
    _env(task_retry_delay_seconds=0.5)
    rate_limit(args.rows or (400 if args.quick else 1200), args.limit, args.latency, max(args.load_procs, 1))
    if args.only_rate:
        return 0
    outage(1000)
    rerun(1000, args.outage_after)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
