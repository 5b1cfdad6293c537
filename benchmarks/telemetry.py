"""Overhead of telemetry: a 4,000-row pipeline with Prefect events and OpenTelemetry tracing on vs off.

The pipeline is a ``dspy.Predict`` step over an LM that sleeps 20 ms per call (the offline extractive
engine behind a sleep, as in ``benchmarks/pipeline.py``) followed by a template step. Runs alternate
off, on, off, on... in this process, so both see the same machine; the figure is the ratio of the
median wall times (target: on <= 1.03 x off). A third setting, events only, separates the two costs.

* **off**: ``DSPEX_EVENTS_ENABLED=false``, ``DSPEX_TRACING=off``, and the process's tracer provider
  samples nothing (so Prefect's own run spans are not recorded either).
* **events**: events on, tracing off.
* **on**: events on (``dspex.step.routed``, ``dspex.run.summary``... to the embedded Prefect server),
  ``DSPEX_TRACING=on`` with the default sampling, every span recorded and batched to an exporter (in
  memory, cleared per run): one span per run, step and batch, and module and LM spans for the sampled
  rows (each step's first 20, then at most 5 a second; `tasks.tracing`).

Run: ``.venv/bin/python benchmarks/telemetry.py`` (``--quick``: 800 rows; ``--repeats N``;
``--every-row``: trace every row's module and LM calls, no sampling).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DSPEX_HOME", tempfile.mkdtemp(prefix="dspex-bench-"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["DSPEX_RESUME"] = "false"  # every run computes every row (no reuse of an earlier run's rows)

import dspex.bootstrap  # noqa: F401  (Prefect and LiteLLM environment before they load)
from flows import PipelineSpec, run_pipeline
from tasks.lm.offline import OfflineExtractiveEngine

LATENCY_S = 0.020


class SleepyEngine(OfflineExtractiveEngine):
    """The offline engine, 20 ms slower per call: a stand-in for a fast hosted LM."""

    def complete(self, request):  # type: ignore[no-untyped-def]
        time.sleep(LATENCY_S)
        return super().complete(request)


def _tracing() -> tuple[Any, Any]:
    """A global SDK tracer provider whose sampler can be switched, and its in-memory exporter."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

    class Switch(Sampler):
        on = False

        def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
            return SamplingResult(Decision.RECORD_AND_SAMPLE if self.on else Decision.DROP)

        def get_description(self) -> str:
            return "switch"

    sampler = Switch()
    provider = TracerProvider(sampler=sampler)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return sampler, exporter


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="800 rows instead of 4,000")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting (alternating)")
    parser.add_argument("--every-row", action="store_true", help="no sampling: trace every row in full")
    args = parser.parse_args()
    if args.every_row:
        os.environ["DSPEX_TRACING_MAX_ROWS_PER_SECOND"] = "0"
        os.environ["DSPEX_TRACING_SAMPLE_RATE"] = "1"
    n = args.rows or (800 if args.quick else 4000)

    import dspy
    from opentelemetry import trace

    sampler, exporter = _tracing()
    lm = dspy.LM("dspex/offline-extractive", cache=False, num_retries=0, engine=SleepyEngine())
    spec = PipelineSpec.model_validate(
        {
            "name": "bench-telemetry",
            "steps": [
                {"name": "answer", "module": "dspy.Predict", "signature": "context, question -> answer"},
                {"name": "shout", "native": "template", "template": "{{ answer }}!", "output": "loud"},
            ],
        }
    )
    data = [
        {"question": f"What is item {i}?", "context": f"Item {i} is a red box number {i}."} for i in range(n)
    ]
    run_pipeline(spec, data=data[:50], lm=lm)  # warm up: server, imports, registry

    settings = ("off", "events", "on")
    times: dict[str, list[float]] = {setting: [] for setting in settings}
    spans: list[int] = []
    for _ in range(args.repeats):
        for setting in settings:
            on = setting == "on"
            os.environ["DSPEX_EVENTS_ENABLED"] = "false" if setting == "off" else "true"
            os.environ["DSPEX_TRACING"] = "on" if on else "off"
            sampler.on = on
            exporter.clear()
            start = time.perf_counter()
            result = run_pipeline(spec, data=data, lm=lm)
            times[setting].append(time.perf_counter() - start)
            assert result.summary.rows_out == n, result.summary.failed
            if on:
                trace.get_tracer_provider().force_flush()  # type: ignore[attr-defined]
                spans.append(len(exporter.get_finished_spans()))

    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    sampling = "every row" if args.every_row else "default sampling"
    print(
        f"rows: {n}, LM latency {LATENCY_S * 1000:.0f} ms, runs per setting: {args.repeats} (alternating), "
        f"tracing: {sampling}"
    )
    print(f"{'setting':<8}{'median s':>10}{'runs (s)':>30}")
    for setting in settings:
        runs = ", ".join(f"{t:.2f}" for t in times[setting])
        print(f"{setting:<8}{statistics.median(times[setting]):>10.2f}{runs:>30}")
    print(f"spans recorded per 'on' run: {spans}")
    events_ratio = statistics.median(times["events"]) / off
    print(f"events only / off = {events_ratio:.3f}")
    ratio = on / off
    print(f"on / off = {ratio:.3f} (target <= 1.03): {'OK' if ratio <= 1.03 else 'ABOVE TARGET'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
