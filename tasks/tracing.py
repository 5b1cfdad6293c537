"""OpenTelemetry traces of a pipeline run: one span per run, per step, per DSPy module call and per
LM call, tied to the Prefect flow run.

The span tree of a run::

    dspex.pipeline <name>            (child of Prefect's own flow-run span when Prefect traces too)
      dspex.step <step>              (one per executed step)
        dspy.module <Class>          (one per module call on a row; nested modules nest)
          dspy.lm <model>            (one per LM call: model, provider, tokens, cache hit, error)

Sampling: DSPy's callback machinery costs about as much per call as the CPU work of a fast LM call,
so module and LM spans are recorded for a sample of rows: the first ``DSPEX_TRACING_HEAD_ROWS`` rows
of each step (default 20), then at most ``DSPEX_TRACING_MAX_ROWS_PER_SECOND`` rows a second per step
(default 5; 0: no limit), each drawn with probability ``DSPEX_TRACING_SAMPLE_RATE`` (default 1), so
the cost is bounded whatever the throughput. Every attempt that fails is traced whether its row was
sampled or not (its ``dspy.module`` span is recorded after the fact, with its error), and every batch
has a ``dspex.batch <step>`` span with the whole batch's figures (rows, failures, tokens, cost, rows
traced), so totals never depend on the sample. A run is traced below the step level only where its rows run::

    dspex.step <step>
      dspex.batch <step>            (local mode: on the orchestrator; distributed: on the worker,
        dspy.module <Class>          under a dspex.dispatch <step> span, through W3C trace context)

Module and LM spans come from a DSPy callback (`SpanCallback`, a `dspy.utils.callback.BaseCallback`)
rather than OpenInference's DSPy instrumentation: that one patches DSPy's classes process-wide,
records prompts and outputs by default, and reports neither tokens nor cache hits, which an
operator needs. Spans never carry prompts, outputs, API keys or the LM's keyword arguments: only
model names, counts, timings, flags and error types.

Where spans go: ``DSPEX_TRACING`` (``auto``, ``on``, ``off``). With ``auto``, a run is traced when
the process already has an SDK tracer provider (installed by the caller, e.g. a test's in-memory
exporter, or by a platform's OpenTelemetry distro) or when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set,
in which case DSPex installs a provider that batches spans to that OTLP/HTTP endpoint. Otherwise
nothing is traced and each hook costs one context-variable read. Needs the ``[tracing]`` extra.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from dspy.utils.callback import BaseCallback

from dspex.exceptions import ConfigurationError

__all__ = [
    "TRACER_NAME",
    "BatchTrace",
    "SpanCallback",
    "batch_span",
    "continue_trace",
    "current_batch",
    "dispatch_span",
    "get_tracer",
    "install_otlp_provider",
    "step_span",
    "trace_run",
]

logger = logging.getLogger(__name__)

#: The instrumentation scope name of every DSPex span.
TRACER_NAME = "dspex"

_RUN: ContextVar[_RunTrace | None] = ContextVar("dspex_trace_run", default=None)
# The OpenTelemetry context of the innermost DSPex span. Spans take their parent from here, not from
# OpenTelemetry's current span: Prefect makes its own task-run span current inside each batch, and a
# module span belongs under its step. Context variables follow the engine's threads and tasks.
_PARENT: ContextVar[Any] = ContextVar("dspex_trace_parent", default=None)


def _open_span(tracer: Any, name: str, attributes: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Start a span under the innermost DSPex span (or the current span), make it current and the
    parent of what follows; returns the span and the two tokens `_close_span` needs."""
    from opentelemetry import context, trace

    span = tracer.start_span(name, context=_PARENT.get(), attributes=attributes)
    ctx = trace.set_span_in_context(span)
    return span, context.attach(ctx), _PARENT.set(ctx)


def _close_span(otel_token: Any, parent_token: Any) -> None:
    from opentelemetry import context

    _PARENT.reset(parent_token)
    context.detach(otel_token)


_install_lock = threading.Lock()
_installed_provider: Any = None


def _sdk_available() -> bool:
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        return False
    return True


def install_otlp_provider() -> Any:
    """Install (once per process) a global SDK tracer provider that batches spans to the OTLP/HTTP
    endpoint named by ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the exporter reads the standard ``OTEL_*``
    variables itself). Prefect's own flow- and task-run spans then go there too.

    Raises:
        ConfigurationError: The ``[tracing]`` extra (OpenTelemetry SDK, OTLP exporter) is missing.
    """
    global _installed_provider
    with _install_lock:
        if _installed_provider is not None:
            return _installed_provider
        try:
            from opentelemetry import trace
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:
            raise ConfigurationError(
                "tracing needs the [tracing] extra: pip install 'dspex-prefect[tracing]' "
                f"(missing: {exc.name})"
            ) from exc
        provider = TracerProvider(resource=Resource.create({"service.name": "dspex"}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        _installed_provider = provider
        return provider


def get_tracer(settings: Any) -> Any:
    """The tracer a run should use under ``settings.tracing``, or None when the run is not traced.

    Raises:
        ConfigurationError: Tracing is ``on`` but the ``[tracing]`` extra is missing.
    """
    mode = settings.tracing
    if mode == "off":
        return None
    if not _sdk_available():
        if mode == "on":
            raise ConfigurationError("DSPEX_TRACING=on needs the [tracing] extra (opentelemetry-sdk)")
        return None
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        if mode == "auto" and not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            return None
        provider = install_otlp_provider()
    return provider.get_tracer(TRACER_NAME)


def _flow_run_id() -> str | None:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx is not None and ctx.flow_run is not None else None


class _RunTrace:
    """What a traced run (or a worker's part of one) shares: the tracer, the span callback, and the
    sampler's state per step (rows offered so far, the rate limit's token bucket)."""

    def __init__(self, tracer: Any, settings: Any, flow_run_id: str | None) -> None:
        self.tracer = tracer
        self.flow_run_id = flow_run_id
        self.callback = SpanCallback(tracer, flow_run_id=flow_run_id)
        self.head = int(getattr(settings, "tracing_head_rows", 20))
        self.rate = float(getattr(settings, "tracing_sample_rate", 1.0))
        self.per_second = float(getattr(settings, "tracing_max_rows_per_second", 5.0))
        self._steps: dict[str, list[float]] = {}  # step -> [rows seen, tokens, last refill]
        self._lock = threading.Lock()

    def choose(self, step: str, n: int) -> frozenset[int]:
        """Which of a batch's ``n`` rows to trace in full: the step's first ``head`` rows, then rows
        drawn with probability ``rate``, at most ``per_second`` a second (a token bucket holding one
        second's worth; 0: no limit)."""
        now = time.monotonic()
        with self._lock:
            state = self._steps.setdefault(step, [0, self.per_second, now])
            seen = int(state[0])
            state[0] = seen + n
            head = min(max(self.head - seen, 0), n)
            chosen = list(range(head))
            draw = random.random
            limited = self.per_second > 0
            if limited:
                state[1] = min(self.per_second, state[1] + (now - state[2]) * self.per_second)
                state[2] = now
            for i in range(head, n):
                if self.rate < 1 and draw() >= self.rate:
                    continue
                if limited:
                    if state[1] < 1:
                        break
                    state[1] -= 1
                chosen.append(i)
        return frozenset(chosen)


@contextlib.contextmanager
def trace_run(pipeline: str, *, settings: Any, rows: int, lm_model: str | None = None) -> Iterator[Any]:
    """Trace a pipeline run: open its root span; steps and batches inside it are traced.

    Args:
        pipeline: The pipeline's name.
        settings: The effective settings (``tracing``, ``tracing_head_rows``, ``tracing_sample_rate``).
        rows: Input rows.
        lm_model: The LM's model name.

    Yields:
        The run's span, or None when the run is not traced.
    """
    tracer = get_tracer(settings)
    if tracer is None:
        yield None
        return
    attributes: dict[str, Any] = {"dspex.pipeline": pipeline, "dspex.rows": rows}
    flow_run = _flow_run_id()
    if flow_run:
        attributes["prefect.flow_run.id"] = flow_run
    if lm_model:
        attributes["gen_ai.request.model"] = lm_model
    token = _RUN.set(_RunTrace(tracer, settings, flow_run))
    try:
        with _span(tracer, f"dspex.pipeline {pipeline}", attributes) as span:
            yield span
    finally:
        _RUN.reset(token)


def _record_error(span: Any, exc: BaseException) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", type(exc).__name__)
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


@contextlib.contextmanager
def _step(tracer: Any, name: str, kind: str, rows: int) -> Iterator[Any]:
    attributes = {"dspex.step": name, "dspex.step.kind": kind, "dspex.rows": rows}
    with _span(tracer, f"dspex.step {name}", attributes) as span:
        yield span


@contextlib.contextmanager
def _span(tracer: Any, name: str, attributes: dict[str, Any]) -> Iterator[Any]:
    """A DSPex span around a block: the parent of spans opened inside it; errors mark it failed."""
    span, otel_token, parent_token = _open_span(tracer, name, attributes)
    try:
        yield span
    except BaseException as exc:
        _record_error(span, exc)
        raise
    finally:
        _close_span(otel_token, parent_token)
        span.end()


def step_span(name: str | None, kind: str, rows: int) -> contextlib.AbstractContextManager[Any]:
    """A span around one step of a traced run (a no-op context outside `trace_run`)."""
    run = _RUN.get()
    if run is None:
        return contextlib.nullcontext()
    return _step(run.tracer, str(name), kind, rows)


class BatchTrace:
    """One traced batch: its span, which rows are traced in full, and the after-the-fact span of a
    failed attempt on a row that was not.

    Attributes:
        span: The ``dspex.batch <step>`` span.
        rows: Indices (in the batch) of the rows whose module and LM calls are traced.
    """

    def __init__(self, run: _RunTrace, span: Any, rows: frozenset[int]) -> None:
        self._run = run
        self.span = span
        self.rows = rows
        self._parent = _PARENT.get()

    def callbacks(self, index: int) -> list[Any]:
        """The DSPy callbacks for row ``index``: the span callback when the row is traced."""
        return [self._run.callback] if index in self.rows else []

    def failed(self, index: int, module: Any, error: BaseException, started_ns: int) -> None:
        """Record a failed attempt of an untraced row as its module span (a traced row's callback
        already did)."""
        if index in self.rows:
            return
        cls = type(module).__name__
        attributes: dict[str, Any] = {"dspy.module": cls, "dspex.sampled": False}
        if self._run.flow_run_id:
            attributes["prefect.flow_run.id"] = self._run.flow_run_id
        span = self._run.tracer.start_span(
            f"dspy.module {cls}", context=self._parent, attributes=attributes, start_time=started_ns
        )
        span.set_attribute("dspex.latency_ms", round((time.time_ns() - started_ns) / 1e6, 3))
        _record_error(span, error)
        span.end()

    def finish(self, result: Any) -> None:
        """Put the batch's figures on its span (a `tasks.batch.BatchResult`)."""
        usage = result.usage
        for key, value in (
            ("dspex.rows.failed", result.failed),
            ("dspex.rows.not_attempted", result.not_attempted),
            ("dspex.rows.traced", len(self.rows)),
            ("dspex.attempts", result.attempts),
            ("gen_ai.usage.input_tokens", usage.prompt_tokens),
            ("gen_ai.usage.output_tokens", usage.completion_tokens),
            ("dspex.lm.requests", usage.requests),
        ):
            self.span.set_attribute(key, int(value))
        if usage.cost_usd is not None:
            self.span.set_attribute("dspex.cost_usd", float(usage.cost_usd))
        if result.pool:
            self.span.set_attribute("dspex.pool", result.pool)


_BATCH: ContextVar[BatchTrace | None] = ContextVar("dspex_trace_batch", default=None)


@contextlib.contextmanager
def batch_span(
    step: str, pool: str, rows: int, chosen: frozenset[int] | None = None
) -> Iterator[BatchTrace | None]:
    """Trace one batch where its rows run: yields its `BatchTrace` (None when the run is not traced).

    Args:
        step: The step's name.
        pool: The pool running the batch.
        rows: The batch's rows.
        chosen: The rows to trace in full (default: the run's sampler chooses).
    """
    run = _RUN.get()
    if run is None:
        yield None
        return
    if chosen is None:
        chosen = run.choose(step, rows)
    attributes = {"dspex.step": step, "dspex.pool": pool, "dspex.rows": rows}
    with _span(run.tracer, f"dspex.batch {step}", attributes) as span:
        trace = BatchTrace(run, span, chosen)
        token = _BATCH.set(trace)
        try:
            yield trace
        finally:
            _BATCH.reset(token)


#: Trace-context key carrying the rows a worker should trace in full (comma-separated indices).
_ROWS_KEY = "dspex-trace-rows"
_FLOW_RUN_KEY = "dspex-flow-run"


@contextlib.contextmanager
def dispatch_span(step: str, pool: str, rows: int, batch_key: str) -> Iterator[dict[str, str] | None]:
    """Trace a batch sent to a worker: yields the W3C trace context to pass it (with the rows to
    trace in full), or None when the run is not traced."""
    run = _RUN.get()
    if run is None:
        yield None
        return
    from opentelemetry.propagate import inject

    attributes = {"dspex.step": step, "dspex.pool": pool, "dspex.rows": rows, "dspex.batch_key": batch_key}
    with _span(run.tracer, f"dspex.dispatch {step}", attributes):
        carrier: dict[str, str] = {}
        inject(carrier, context=_PARENT.get())
        carrier[_ROWS_KEY] = ",".join(str(i) for i in sorted(run.choose(step, rows)))
        if run.flow_run_id:
            carrier[_FLOW_RUN_KEY] = run.flow_run_id
        yield carrier


@contextlib.contextmanager
def continue_trace(carrier: dict[str, str] | None, settings: Any) -> Iterator[frozenset[int] | None]:
    """On a worker: continue the orchestrator's trace from ``carrier`` (see `dispatch_span`) when
    this process can export spans; yields the rows to trace in full, or None (not traced)."""
    tracer = get_tracer(settings) if carrier else None
    if tracer is None or carrier is None:
        yield None
        return
    from opentelemetry.propagate import extract

    rows = frozenset(int(i) for i in carrier.get(_ROWS_KEY, "").split(",") if i.strip().isdigit())
    run_token = _RUN.set(_RunTrace(tracer, settings, carrier.get(_FLOW_RUN_KEY)))
    parent_token = _PARENT.set(extract({k: v for k, v in carrier.items() if not k.startswith("dspex-")}))
    try:
        yield rows
    finally:
        _PARENT.reset(parent_token)
        _RUN.reset(run_token)


def current_batch() -> BatchTrace | None:
    """The traced batch this code runs in, if any."""
    return _BATCH.get()


class _UsageCapture:
    """Stands in for DSPy's usage tracker during one LM call: records what the call reports and
    passes it on to the tracker that was active (a run's token accounting keeps working)."""

    def __init__(self, parent: Any) -> None:
        self.parent = parent
        self.called = False
        self.usage: dict[str, Any] = {}

    def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
        self.called = True
        for key, value in (usage_entry or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.usage[key] = self.usage.get(key, 0) + value
        if self.parent is not None:
            self.parent.add_usage(lm, usage_entry)

    def __getattr__(self, name: str) -> Any:  # anything else a tracker offers goes to the real one
        if self.parent is None:
            raise AttributeError(name)
        return getattr(self.parent, name)


class SpanCallback(BaseCallback):
    """A DSPy callback that turns module and LM calls into OpenTelemetry spans.

    Each start handler opens a span as a child of the current one and makes it current (DSPy calls
    the start and end handlers of one call in the same context); the end handler records the
    outcome and closes it. Only metadata is recorded, never inputs or outputs.

    Args:
        tracer: The OpenTelemetry tracer.
        flow_run_id: The Prefect flow run the spans belong to (an attribute on each span).
    """

    def __init__(self, tracer: Any, *, flow_run_id: str | None = None) -> None:
        self.tracer = tracer
        self.flow_run_id = flow_run_id
        self._open: dict[str, tuple[Any, Any, float, _UsageCapture | None, Any]] = {}
        self._lock = threading.Lock()

    def _start(
        self, call_id: str, name: str, attributes: dict[str, Any], capture: _UsageCapture | None
    ) -> None:
        if self.flow_run_id:
            attributes["prefect.flow_run.id"] = self.flow_run_id
        span, otel_token, parent_token = _open_span(self.tracer, name, attributes)
        dspy_token = None
        if capture is not None:
            from dspy.dsp.utils.settings import thread_local_overrides

            current = thread_local_overrides.get()
            dspy_token = thread_local_overrides.set(type(current)({**current, "usage_tracker": capture}))
        with self._lock:
            self._open[call_id] = (span, (otel_token, parent_token), time.perf_counter(), capture, dspy_token)

    def _end(self, call_id: str, exception: BaseException | None) -> tuple[Any, _UsageCapture | None]:
        with self._lock:
            entry = self._open.pop(call_id, None)
        if entry is None:
            return None, None
        span, (otel_token, parent_token), started, capture, dspy_token = entry
        if dspy_token is not None:
            from dspy.dsp.utils.settings import thread_local_overrides

            thread_local_overrides.reset(dspy_token)
        span.set_attribute("dspex.latency_ms", round((time.perf_counter() - started) * 1000, 3))
        if exception is not None:
            _record_error(span, exception)
        _close_span(otel_token, parent_token)
        return span, capture

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Open a ``dspy.module <Class>`` span."""
        cls = type(instance).__name__
        self._start(call_id, f"dspy.module {cls}", {"dspy.module": cls}, None)

    def on_module_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        """Close the module's span."""
        span, _ = self._end(call_id, exception)
        if span is not None:
            span.end()

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Open a ``dspy.lm <model>`` span and start capturing the call's token usage."""
        import dspy

        model = str(getattr(instance, "model", type(instance).__name__))
        attributes = {
            "gen_ai.request.model": model,
            "gen_ai.system": model.split("/", 1)[0] if "/" in model else type(instance).__name__,
            "dspy.lm.class": type(instance).__name__,
        }
        capture = _UsageCapture(dspy.settings.get("usage_tracker"))
        self._start(call_id, f"dspy.lm {model}", attributes, capture)

    def on_lm_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        """Record tokens and whether the answer came from DSPy's cache, then close the span.

        DSPy reports usage to the tracker only for calls that were not served from its cache, so a
        successful call that reported nothing was a cache hit.
        """
        span, capture = self._end(call_id, exception)
        if span is None:
            return
        if capture is not None and exception is None:
            span.set_attribute("dspex.cache_hit", not capture.called)
            usage = capture.usage
            for source, target in (
                ("prompt_tokens", "gen_ai.usage.input_tokens"),
                ("completion_tokens", "gen_ai.usage.output_tokens"),
                ("total_tokens", "gen_ai.usage.total_tokens"),
            ):
                if source in usage:
                    span.set_attribute(target, int(usage[source]))
        span.end()
