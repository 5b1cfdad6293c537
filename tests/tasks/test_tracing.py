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
from flows.engine.pools import shutdown_local_pools
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

    # Under a module step: Prefect's span of each batch (a task run) and ours, with the batch's
    # figures; under ours, a span per module call.
    answer_children = _children(spans, by_step["answer"])
    tasks = [s for s in answer_children if s.attributes.get("prefect.run.type") == "task"]
    assert tasks and all(s.name.startswith("answer-batch-") for s in tasks)
    batches = [s for s in answer_children if s not in tasks]
    assert {s.name for s in batches} == {"dspex.batch answer"} and len(batches) == len(tasks)
    assert sum(b.attributes["dspex.rows"] for b in batches) == 3
    assert sum(b.attributes["dspex.rows.traced"] for b in batches) == 3  # under the head: all rows
    assert all(b.attributes["dspex.rows.failed"] == 0 for b in batches)
    assert sum(b.attributes["gen_ai.usage.input_tokens"] for b in batches) > 0
    answer_modules = [m for b in batches for m in _children(spans, b)]
    assert Counter(s.name for s in answer_modules) == {"dspy.module Predict": 3}
    for module in answer_modules:
        (lm_span,) = _children(spans, module)
        assert lm_span.name == "dspy.lm openai/test-model"
        attrs = lm_span.attributes
        assert attrs["gen_ai.request.model"] == "openai/test-model" and attrs["gen_ai.system"] == "openai"
        assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] > 0
        assert attrs["dspex.cache_hit"] is False and attrs["dspex.latency_ms"] > 0
        assert attrs["prefect.flow_run.id"] == flow_run_id

    reason_batches = [s for s in _children(spans, by_step["reason"]) if s.name == "dspex.batch reason"]
    reason_modules = [m for b in reason_batches for m in _children(spans, b)]
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


def test_sampler_takes_each_steps_head_then_a_fraction(monkeypatch):
    monkeypatch.setenv("DSPEX_TRACING_HEAD_ROWS", "5")
    monkeypatch.setenv("DSPEX_TRACING_SAMPLE_RATE", "0.25")
    monkeypatch.setenv("DSPEX_TRACING_MAX_ROWS_PER_SECOND", "0")  # no rate limit
    run = tracing._RunTrace(object(), get_settings(), None)
    assert run.choose("a", 3) == {0, 1, 2}
    second = run.choose("a", 4000)
    assert {0, 1} <= second  # rows 4 and 5 of the step finish the head
    assert 800 < len(second) < 1200  # then about a quarter
    assert run.choose("b", 2) == {0, 1}  # each step has its own head
    monkeypatch.setenv("DSPEX_TRACING_SAMPLE_RATE", "1")
    assert tracing._RunTrace(object(), get_settings(), None).choose("a", 500) == set(range(500))


def test_sampler_traces_at_most_its_rows_per_second(monkeypatch):
    """Past the head, a token bucket bounds the traced rows per second per step, so tracing's cost
    does not grow with throughput."""
    import time

    monkeypatch.setenv("DSPEX_TRACING_HEAD_ROWS", "3")
    monkeypatch.setenv("DSPEX_TRACING_MAX_ROWS_PER_SECOND", "20")
    run = tracing._RunTrace(object(), get_settings(), None)
    first = run.choose("a", 1000)
    assert first == set(range(23))  # the head, then one second's worth of tokens
    assert len(run.choose("a", 1000)) <= 1  # the bucket is empty
    time.sleep(0.25)
    assert 3 <= len(run.choose("a", 1000)) <= 7  # refilled at 20 a second
    assert len(run.choose("b", 1000)) == 23  # another step has its own bucket


@pytest.mark.integration
def test_unsampled_rows_leave_a_span_only_when_they_fail(exporter, monkeypatch):
    """Past the head, rows are sampled; a failed attempt is traced anyway, and the batch's span
    counts every row and token whatever the sample."""
    from tests.support.openai_server import Fault

    monkeypatch.setenv("DSPEX_TRACING", "on")
    monkeypatch.setenv("DSPEX_TRACING_HEAD_ROWS", "1")
    monkeypatch.setenv("DSPEX_TRACING_SAMPLE_RATE", "0")
    monkeypatch.setenv("DSPEX_RESUME", "false")
    exporter.clear()
    spec = {"name": "sampled", "steps": [SPEC["steps"][0]], "continue_on_error": True}
    with openai_server() as server:
        server.enqueue(Fault.error(400, "bad request"))  # whichever row asks first fails
        lm = dspy.LM(
            "openai/test-model", api_base=server.base_url, api_key="sk-x", cache=False, num_retries=0
        )
        result = run_pipeline(
            PipelineSpec.model_validate(spec), data=[{"question": f"Question {i}?"} for i in range(8)], lm=lm
        )
    shutdown_local_pools()
    assert result.summary.rows_out == 7, result.summary.failed  # one row's only attempt got a 400
    spans = exporter.get_finished_spans()
    batches = [s for s in spans if s.name == "dspex.batch answer"]
    assert sum(b.attributes["dspex.rows"] for b in batches) == 8
    assert sum(b.attributes["dspex.rows.failed"] for b in batches) == 1
    assert sum(b.attributes["dspex.rows.traced"] for b in batches) == 1  # the head, and no sample
    assert sum(b.attributes["dspex.lm.requests"] for b in batches) == 7  # totals cover every row
    modules = [s for s in spans if s.name == "dspy.module Predict"]
    failed = [s for s in modules if s.status.status_code.name == "ERROR"]
    assert len(failed) == 1 and failed[0].attributes.get("error.type")
    # The head row's calls, plus the failure: no other row left a span.
    assert len(modules) in (1, 2)
    lm_spans = [s for s in spans if s.name.startswith("dspy.lm")]
    assert len(lm_spans) == len(modules) - (1 if failed[0].attributes.get("dspex.sampled") is False else 0)


def test_a_worker_continues_the_orchestrators_trace(exporter, monkeypatch):
    """Distributed mode: the orchestrator's dispatch span travels as W3C trace context in the
    run-step parameters (JSON), and the worker's batch span joins the run's trace under it."""
    import json

    from dspy.utils import DummyLM

    from flows.engine.executors.run import run_batch
    from flows.engine.spec import ModuleStep

    monkeypatch.setenv("DSPEX_TRACING", "on")
    monkeypatch.setenv("DSPEX_TRACING_HEAD_ROWS", "2")
    monkeypatch.setenv("DSPEX_TRACING_SAMPLE_RATE", "0")
    exporter.clear()
    settings = get_settings()
    with (
        tracing.trace_run("remote", settings=settings, rows=4),
        tracing.step_span("answer", "module", 4),
        tracing.dispatch_span("answer", "general", 4, "k-1") as carrier,
    ):
        parameters = json.loads(json.dumps({"trace_context": carrier}))
    assert carrier is not None and "traceparent" in carrier

    step = ModuleStep.model_validate(SPEC["steps"][0])
    rows = [{"question": q} for q in [*QUESTIONS, "Why?"]]
    with tracing.continue_trace(parameters["trace_context"], settings) as chosen:
        assert chosen == {0, 1}
        result = run_batch(
            step,
            rows,
            pool="general",
            settings=settings,
            lm=DummyLM([{"answer": "a"}] * 4),
            trace_rows=chosen,
        )
    assert result.failed == 0
    spans = exporter.get_finished_spans()
    (dispatch,) = [s for s in spans if s.name == "dspex.dispatch answer"]
    (batch,) = [s for s in spans if s.name == "dspex.batch answer"]
    assert batch.context.trace_id == dispatch.context.trace_id
    assert batch.parent.span_id == dispatch.context.span_id
    assert batch.attributes["dspex.rows.traced"] == 2
    assert [s.name for s in _children(spans, batch)] == ["dspy.module Predict"] * 2
    with tracing.continue_trace(None, settings) as chosen:  # an untraced run: nothing at all
        assert chosen is None
