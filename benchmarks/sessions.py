"""Session turn overhead: the Python fast path (no flow run per turn) vs the ``session-turn`` flow.

Each turn runs ``dspy.Predict("question, context -> answer")`` on the bundled offline LM (instant, so
what is measured is the overhead): a plain call of the same program with a ``dspy.History`` (the
reference), `Session.turn` (store lease, load, commit on the embedded SQLite store), and the
``session-turn`` flow (one Prefect flow run per turn, plus the history artifact) on the embedded
Prefect server. Prints p50 and p90 per turn and the overhead over the plain call.

Run: ``.venv/bin/python benchmarks/sessions.py`` (``--quick``: fewer turns).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DSPEX_HOME", tempfile.mkdtemp(prefix="dspex-bench-"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import dspex.bootstrap  # noqa: F401  (Prefect and LiteLLM environment before they load)

QA = {"module": "dspy.Predict", "signature": "question, context -> answer"}
CONTEXT = "The Eiffel Tower in Paris was finished in 1889 for the World Fair."


def _timed(turns: int, call: Callable[[int], object]) -> list[float]:
    times = []
    for n in range(turns):
        start = time.perf_counter()
        call(n)
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 fast-path and 10 flow turns")
    args = parser.parse_args()
    fast_turns, flow_turns = (30, 10) if args.quick else (200, 30)

    import dspy

    from flows.sessions.session import HISTORY_FIELD, open_session
    from flows.sessions.turns import session_turn
    from tasks.lm import build_lm

    lm = build_lm()
    program = dspy.Predict(
        dspy.Signature("question, context -> answer").prepend(
            HISTORY_FIELD, dspy.InputField(), type_=dspy.History
        )
    )
    history: list[dict[str, str]] = []

    def plain(n: int) -> None:
        question = f"When was the tower finished? ({n})"
        with dspy.context(lm=lm):
            out = program(question=question, context=CONTEXT, history=dspy.History(messages=list(history)))
        history.append({"question": question, "context": CONTEXT, "answer": out.answer})

    session = open_session(QA, lm=lm)
    flow_session = session_turn(inputs={"question": "warm-up?", "context": CONTEXT}, lm=lm).session_id
    results = {
        "plain program call (reference)": _timed(fast_turns, plain),
        "Session.turn (fast path)": _timed(
            fast_turns,
            lambda n: session.turn(question=f"When was the tower finished? ({n})", context=CONTEXT),
        ),
        "session-turn flow": _timed(
            flow_turns,
            lambda n: session_turn(
                inputs={"question": f"When was the tower finished? ({n})", "context": CONTEXT},
                session_id=flow_session,
                lm=lm,
            ),
        ),
    }
    print("\nsession turn latency, offline (instant) LM, ms per turn; history grows every turn")
    print(f"{'':34}{'turns':>6}{'p50':>9}{'p90':>9}{'overhead p50':>14}")
    base = statistics.median(results["plain program call (reference)"])
    for name, times in results.items():
        p50 = statistics.median(times)
        p90 = statistics.quantiles(times, n=10)[-1]
        print(f"{name:34}{len(times):>6}{p50:>9.1f}{p90:>9.1f}{p50 - base:>14.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
