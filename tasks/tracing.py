"""OpenTelemetry traces of a pipeline run: one span per run, per step, per DSPy module call and per
LM call, tied to the Prefect flow run.

The span tree of a run::

    dspex.pipeline <name>            (child of Prefect's own flow-run span when Prefect traces too)
      dspex.step <step>              (one per executed step)
        dspy.module <Class>          (one per module call on a row; nested modules nest)
          dspy.lm <model>            (one per LM call: model, provider, tokens, cache hit, error)

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
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from dspy.utils.callback import BaseCallback

from dspex.exceptions import ConfigurationError

__all__ = [
    "TRACER_NAME",
    "SpanCallback",
    "get_tracer",
    "install_otlp_provider",
    "step_span",
    "trace_run",
]

logger = logging.getLogger(__name__)

#: The instrumentation scope name of every DSPex span.
TRACER_NAME = "dspex"

_TRACER: ContextVar[Any] = ContextVar("dspex_tracer", default=None)
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


@contextlib.contextmanager
def trace_run(pipeline: str, *, settings: Any, rows: int, lm_model: str | None = None) -> Iterator[Any]:
    """Trace a pipeline run: open its root span and install `SpanCallback` for the DSPy calls inside.

    Args:
        pipeline: The pipeline's name.
        settings: The effective settings (``tracing``).
        rows: Input rows.
        lm_model: The LM's model name.

    Yields:
        The run's span, or None when the run is not traced.
    """
    tracer = get_tracer(settings)
    if tracer is None:
        yield None
        return
    import dspy

    attributes: dict[str, Any] = {"dspex.pipeline": pipeline, "dspex.rows": rows}
    flow_run = _flow_run_id()
    if flow_run:
        attributes["prefect.flow_run.id"] = flow_run
    if lm_model:
        attributes["gen_ai.request.model"] = lm_model
    token = _TRACER.set(tracer)
    callbacks = [*(dspy.settings.get("callbacks") or []), SpanCallback(tracer, flow_run_id=flow_run)]
    try:
        with (
            _span(tracer, f"dspex.pipeline {pipeline}", attributes) as span,
            dspy.context(callbacks=callbacks),
        ):
            yield span
    finally:
        _TRACER.reset(token)


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
    tracer = _TRACER.get()
    if tracer is None:
        return contextlib.nullcontext()
    return _step(tracer, str(name), kind, rows)


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
