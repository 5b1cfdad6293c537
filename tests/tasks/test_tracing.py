"""OpenTelemetry spans of a run: an in-memory exporter sees the pipeline -> step -> module -> LM tree."""

from collections import Counter

import dspy
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dspex.exceptions import ConfigurationError
from dspex.settings import get_settings
from flows import PipelineSpec, run_pipeline
from flows.pools import shutdown_local_pools
from tasks import tracing
from tests.support.openai_server import openai_server

SPEC = {
    "name": "traced",
    "steps": [
        {"name": "answer", "module": "dspy.Predict", "signature": "question -> answer"},
        {"name": "shout", "native": "template", "template": "{{ answer }}!", "output": "loud"},
        {"name": "reason", "module": "dspy.ChainOfThought", "signature": "question, loud -> verdict"},
    ],
}
QUESTIONS = ["What is the capital of France?", "Who wrote Hamlet?", "What is water made of?"]


@pytest.fixture(scope="module")
def exporter():
    """The process's SDK tracer provider (installed once; OpenTelemetry allows one) with an
    in-memory exporter; Prefect's own flow- and task-run spans go there too."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield memory
    memory.shutdown()


def _children(spans, parent):
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


@pytest.mark.integration
def test_three_step_pipeline_yields_the_expected_span_tree(exporter):
    exporter.clear()
    with openai_server() as server:
        lm = dspy.LM(
            "openai/test-model", api_base=server.base_url, api_key="sk-secret-key", cache=False, num_retries=0
        )
        state = run_pipeline(
            PipelineSpec.model_validate(SPEC),
            data=[{"question": q} for q in QUESTIONS],
            lm=lm,
            return_state=True,
        )
    shutdown_local_pools()
    assert state.is_completed()
    flow_run_id = str(state.state_details.flow_run_id)
    spans = [s for s in exporter.get_finished_spans() if s.context.trace_id]

    (root,) = [s for s in spans if s.name == "dspex.pipeline traced"]
    assert root.attributes["prefect.flow_run.id"] == flow_run_id
    assert root.attributes["dspex.rows"] == 3
    # Prefect traces the flow run itself: the pipeline span hangs under it, same trace.
    flow_spans = [s for s in spans if s.attributes.get("prefect.run.id") == flow_run_id]
    assert flow_spans and root.parent is not None and root.parent.span_id == flow_spans[0].context.span_id

    steps = _children(spans, root)
    assert [s.name for s in sorted(steps, key=lambda s: s.start_time)] == [
        "dspex.step answer",
        "dspex.step shout",
        "dspex.step reason",
    ]
    by_step = {s.attributes["dspex.step"]: s for s in steps}
    assert _children(spans, by_step["shout"]) == []  # a native step calls no module

    # Under a module step: Prefect's span of each batch (a task run) and our span of each module call.
    answer_children = _children(spans, by_step["answer"])
    batches = [s for s in answer_children if s.attributes.get("prefect.run.type") == "task"]
    assert batches and all(s.name.startswith("answer-batch-") for s in batches)
    answer_modules = [s for s in answer_children if s not in batches]
    assert Counter(s.name for s in answer_modules) == {"dspy.module Predict": 3}
    for module in answer_modules:
        (lm_span,) = _children(spans, module)
        assert lm_span.name == "dspy.lm openai/test-model"
        attrs = lm_span.attributes
        assert attrs["gen_ai.request.model"] == "openai/test-model" and attrs["gen_ai.system"] == "openai"
        assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] > 0
        assert attrs["dspex.cache_hit"] is False and attrs["dspex.latency_ms"] > 0
        assert attrs["prefect.flow_run.id"] == flow_run_id

    reason_modules = [
        s for s in _children(spans, by_step["reason"]) if s.attributes.get("prefect.run.type") != "task"
    ]
    assert Counter(s.name for s in reason_modules) == {"dspy.module ChainOfThought": 3}
    for module in reason_modules:
        (inner,) = _children(spans, module)
        assert inner.name == "dspy.module Predict"
        assert [s.name for s in _children(spans, inner)] == ["dspy.lm openai/test-model"]

    # Every DSPex span shares the run's trace; none carries a secret, a prompt or an answer.
    ours = [s for s in spans if s.name.startswith(("dspex.", "dspy."))]
    assert {s.context.trace_id for s in ours} == {root.context.trace_id}
    dumped = repr([dict(s.attributes) for s in ours])
    assert "sk-secret-key" not in dumped and "France" not in dumped and "Paris" not in dumped


def test_callback_records_cache_hits_and_errors(exporter, tmp_path, monkeypatch):
    exporter.clear()
    tracer = trace.get_tracer_provider().get_tracer("test")
    callback = tracing.SpanCallback(tracer)
    question = f"What is the capital of France? ({tmp_path.name})"  # unseen by DSPy's cache
    with openai_server() as server:
        lm = dspy.LM(
            "openai/test-model", api_base=server.base_url, api_key="sk-test", cache=True, num_retries=0
        )
        with dspy.context(lm=lm, callbacks=[callback]):
            dspy.Predict("question -> answer")(question=question)
            dspy.Predict("question -> answer")(question=question)  # served from DSPy's cache
            server.outage_status = 500
            with pytest.raises(Exception):  # noqa: B017 - whatever DSPy raises for a 500
                dspy.Predict("question -> answer")(question=question + " again")
    lm_spans = sorted(
        (s for s in exporter.get_finished_spans() if s.name.startswith("dspy.lm")), key=lambda s: s.start_time
    )
    assert [s.attributes.get("dspex.cache_hit") for s in lm_spans] == [False, True, None]
    assert lm_spans[0].attributes["gen_ai.usage.input_tokens"] > 0
    assert "gen_ai.usage.input_tokens" not in lm_spans[1].attributes
    assert lm_spans[2].status.status_code.name == "ERROR" and lm_spans[2].attributes["error.type"]
    modules = [s for s in exporter.get_finished_spans() if s.name == "dspy.module Predict"]
    assert [m.status.status_code.name for m in sorted(modules, key=lambda s: s.start_time)] == [
        "UNSET",
        "UNSET",
        "ERROR",
    ]


def test_tracing_off_or_unconfigured_costs_nothing(monkeypatch):
    monkeypatch.setenv("DSPEX_TRACING", "off")
    assert tracing.get_tracer(get_settings()) is None
    with tracing.trace_run("p", settings=get_settings(), rows=1) as span:
        assert span is None
        assert isinstance(tracing.step_span("s", "module", 1), type(tracing.step_span("t", "native", 0)))


def test_tracing_on_without_the_extra_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("DSPEX_TRACING", "on")
    monkeypatch.setattr(tracing, "_sdk_available", lambda: False)
    with pytest.raises(ConfigurationError, match=r"\[tracing\] extra"):
        tracing.get_tracer(get_settings())
