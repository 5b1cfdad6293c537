"""Provider batch API (issue 21): 10,000 rows of a two-predictor program through /v1/batches.

The loopback OpenAI-compatible server of the tests answers each batch ``--delay`` seconds after it
was created. The run waits the way a deployment run does (``lm_batch_wait="exit"``): each *check* is
one `run_pipeline` call that either ends at a pending batch (``LMBatchPendingError``) or goes on;
between checks nothing runs (the scheduled re-check of a deployment). Printed:

* requests submitted and rounds (a two-predictor program: two rounds, one request per row each);
* cost at batch prices vs the same tokens at online prices (target: batch <= 0.55x online);
* worker-seconds held while the provider works (the checks that found a batch still pending) vs the
  batch's wall time, first submission to last completion (target: <= 5%), and apart every check's
  time, the rounds' own work included (replaying the rows' programs, submitting, collecting);
* our overhead per round (target: <= 2 s for 10,000 rows): building, uploading and submitting the
  file and collecting the answers, plus whatever running the rows' programs over all the passes
  costs beyond a **reference measured in the same run**: the same program over the same rows once,
  every answer at hand (the replay LM over a store that answers every request, DSPy's plain adapter,
  no replay memo): the DSPy work any run of these rows pays, online too (the online path adds HTTP
  and LiteLLM to it). Each batch pass runs a row's program from the start: DSPy formats the round's
  new calls and parses the newly answered ones; calls answered before come from the replay memo,
  neither formatted nor parsed again. Apart, the programs' time per pass and its ratio to the
  reference.

The provider answers with a fixed reply holding both predictors' fields (fast, so the figures are ours).

Run: ``.venv/bin/python benchmarks/batch_api.py`` (``--rows``, ``--delay``; ``--quick``: 1,000 rows).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("DSPEX_HOME", tempfile.mkdtemp(prefix="dspex-bench-"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["DSPEX_TRUSTED_IMPORT_ROOTS"] = '["fixtures_pkg"]'
os.environ["DSPEX_RESUME"] = "false"

import dspex.bootstrap  # noqa: E402,F401  (Prefect and LiteLLM environment before they load)

MODEL = "openai/gpt-4o-mini"  # priced online and in batch by the cost map; served by the loopback server
SPEC = {"name": "bench-batch", "steps": [{"module": "fixtures_pkg.batch_programs:DraftThenAnswer"}]}


def reference_ms(step: Any, data: list[dict[str, Any]], lm: Any, reply: str) -> float:
    """The rows' programs once, every answer at hand: milliseconds (see the module docstring)."""
    import dspy

    from flows.batch_api.mode import _inline
    from tasks.batch import execute_module_batch
    from tasks.lm.replay import Answer, ReplayLM, ResponseStore
    from tasks.retry import RetryPolicy

    answer = Answer(
        response={
            "object": "chat.completion",
            "model": MODEL,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 60, "completion_tokens": 12, "total_tokens": 72},
        }
    )

    class Answered(ResponseStore):
        def get(self, key: str) -> Answer | None:
            return answer

    start = time.perf_counter()
    with dspy.context(adapter=dspy.settings.adapter):
        result = execute_module_batch(
            step,
            [dict(r) for r in data],
            lm=ReplayLM(lm, Answered()),
            submit=_inline,
            policy=RetryPolicy(attempts=1),
            pool="reference",
        )
    elapsed = (time.perf_counter() - start) * 1000
    if result.failed or result.suspended:
        raise RuntimeError(f"the reference pass failed rows: {result.errors[:3]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--delay", type=float, default=30.0, help="seconds the provider takes per batch")
    parser.add_argument("--quick", action="store_true", help="1,000 rows, 10 s batches")
    args = parser.parse_args()
    rows_n, delay = (1_000, 10.0) if args.quick else (args.rows, args.delay)
    os.environ["DSPEX_LM_BATCH_POLL_SECONDS"] = str(max(delay / 4, 1.0))
    os.environ["DSPEX_LM_BATCH_POLL_MAX_SECONDS"] = str(max(delay / 2, 1.0))

    import dspy
    from prefect.testing.utilities import prefect_test_harness
    from support.openai_server import openai_server

    import registry
    from dspex.exceptions import LMBatchPendingError
    from flows import PipelineSpec, run_pipeline
    from tasks.usage import price

    registry.register_user_module("fixtures_pkg.batch_programs:DraftThenAnswer", category="custom")
    spec = PipelineSpec.model_validate(SPEC)
    data = [
        {"question": f"What colour is box {i}?", "context": f"Box {i} is a red box on shelf {i % 97}."}
        for i in range(rows_n)
    ]
    reply = "[[ ## note ## ]]\nred\n\n[[ ## answer ## ]]\nred\n\n[[ ## completed ## ]]"
    with (
        prefect_test_harness(server_startup_timeout=180),
        openai_server(responder=lambda _m: reply) as server,
    ):
        server.batch.delay_s = delay
        lm = dspy.LM(MODEL, api_base=server.base_url, api_key="sk-bench", cache=False, num_retries=0)
        checks: list[float] = []
        waiting: list[float] = []  # checks that only found the same batch still pending
        last_batch: str | None = None
        started = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            result = run_pipeline(
                spec, data=[dict(r) for r in data], lm=lm, lm_batch=True, lm_batch_wait="exit"
            )
            checks.append(time.perf_counter() - t0)
            if not isinstance(result, LMBatchPendingError):
                break
            if result.batch_id == last_batch:
                waiting.append(checks[-1])
            last_batch = result.batch_id
            time.sleep(
                result.check_in_s
            )  # no process holds anything here: a deployment's re-check is scheduled
        total = time.perf_counter() - started
        (record,) = result.summary.steps
        batch = record.lm_batch
        usage = result.summary.usage
        online_cost = price(MODEL, usage.prompt_tokens, usage.completion_tokens)
        held = sum(checks)
        print(f"rows: {rows_n}, program: two predictors, provider delay per batch: {delay:.0f} s")
        print(f"rounds: {batch.rounds}, requests submitted: {batch.requests}, batches: {batch.batch_ids}")
        print(
            f"duplicate submissions: {len(server.batch.duplicates)}, online requests: {len(server.chat_requests)}"
        )
        print(
            f"cost: batch ${usage.cost_usd:.4f} vs online ${online_cost:.4f} for the same tokens "
            f"({usage.prompt_tokens} prompt + {usage.completion_tokens} completion): "
            f"{usage.cost_usd / online_cost:.3f}x (target <= 0.55x; price: {batch.price})"
        )
        print(
            f"worker-seconds held while the provider works (the {len(waiting)} checks that found a batch "
            f"still pending): {sum(waiting):.1f} s vs the batch's wall time {batch.wait_s:.1f} s: "
            f"{sum(waiting) / max(batch.wait_s, 1e-9) * 100:.1f}% (target <= 5%)"
        )
        print(
            f"worker-seconds of every check, the rounds' own work too (replaying the rows' programs, "
            f"submitting, collecting): {held:.1f} s over {len(checks)} checks (end to end {total:.1f} s): "
            f"{held / max(batch.wait_s, 1e-9) * 100:.1f}% of the batch's wall time"
        )
        reference = reference_ms(spec.steps[0], data, lm, reply)
        passes = [*batch.replay_ms, batch.finish_ms]
        programs = sum(passes)
        beyond = max(programs - reference, 0.0) / batch.rounds
        overhead = max(batch.io_ms) + beyond
        print(
            "per pass, running the rows' programs (from the start; DSPy formats the new calls only): "
            + ", ".join(f"{ms / 1000:.2f} s" for ms in passes)
            + f" (the last: every answer at hand); all passes {programs / 1000:.2f} s"
        )
        print(
            f"reference, measured in this run: the rows' programs once with every answer at hand "
            f"(the DSPy work an online run pays too, before HTTP): {reference / 1000:.2f} s; "
            f"batch mode's passes / reference: {programs / reference:.2f}x"
        )
        print(
            "per round, our files and calls (JSONL, upload, submit, collect, state): "
            + ", ".join(f"{ms / 1000:.2f} s" for ms in batch.io_ms)
        )
        print(
            f"our overhead per round: {overhead / 1000:.2f} s = {max(batch.io_ms) / 1000:.2f} s of I/O at most "
            f"+ {beyond / 1000:.2f} s of programs beyond the reference per round (target <= 2 s for "
            f"{rows_n:,} rows)"
        )
        print(
            f"each check's wall time (the worker-seconds of one scheduled run): {', '.join(f'{c:.1f}' for c in checks)} s"
        )
        print(f"rows failed: {result.summary.failed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
