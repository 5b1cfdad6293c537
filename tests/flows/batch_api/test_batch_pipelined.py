"""Batch mode in a pipelined or streamed run (issue 21): the batch step is a barrier, one batch a round.

The chunks of a pipelined run meet before a step in batch mode, so each round is one batch holding
every waiting row (not one batch per chunk), and the steps around it stay pipelined. The rows equal
the barrier run's rows on the same server answers.
"""

import dspy
import pytest
from support.openai_server import openai_server

from flows import PipelineSpec, run_pipeline, stream_pipeline
from flows.batch_api.mode import BatchMode
from flows.engine.spec import ModuleStep, NativeStep
from flows.engine.streaming import _segments, is_barrier

pytestmark = pytest.mark.integration

SPEC = {
    "name": "batch-pipelined",
    "continue_on_error": True,
    "steps": [
        {"native": "template", "template": "Where is box {{ n }}?", "output": "question"},
        {"module": "dspy.Predict", "signature": "question, context -> answer", "name": "answer"},
        {"native": "template", "template": "[{{ answer }}]", "output": "shown"},
    ],
}


@pytest.fixture
def server():
    with openai_server() as s:
        yield s


def _lm(server):
    return dspy.LM("openai/gpt-4o-mini", api_base=server.base_url, api_key="sk-x", cache=False, num_retries=0)


def _rows(n):
    return [{"n": i, "context": f"Box {i} is in room {i % 7}."} for i in range(n)]


def test_a_batch_step_is_a_barrier_of_a_pipelined_run():
    predict = ModuleStep(module="dspy.Predict", signature="question -> answer", name="answer")
    other = ModuleStep(module="dspy.Predict", signature="answer -> better", name="better")
    native = NativeStep(native="template", template="{{ answer }}", output="x")
    mode = BatchMode(steps=frozenset({"answer"}))
    assert is_barrier(predict, mode) and not is_barrier(other, mode) and not is_barrier(native, mode)
    assert not is_barrier(predict)  # online, it streams
    assert _segments([native, predict, other, native], mode) == [
        (False, [native]),
        (True, [predict]),
        (False, [other, native]),
    ]


def test_a_pipelined_batch_run_sends_one_batch_and_equals_the_barrier_run(server):
    spec, lm = PipelineSpec.model_validate(SPEC), _lm(server)
    pipelined = run_pipeline(
        spec, data=_rows(40), lm=lm, lm_batch=True, pipelined=True, chunk_rows=8, resume=False
    )
    assert len(server.batch.batches) == 1 and server.chat_requests == []  # one batch, not one per chunk
    assert pipelined.summary.failed == 0
    record = next(r for r in pipelined.summary.steps if r.step == "answer")
    assert record.lm_batch.rounds == 1 and record.lm_batch.requests == 40
    barrier = run_pipeline(spec, data=_rows(40), lm=lm, lm_batch=True, resume=False)
    assert pipelined.rows() == barrier.rows()
    assert all(r["shown"] == f"[{r['answer']}]" for r in pipelined.rows())


def test_a_streamed_batch_run_yields_every_row_once_the_provider_answered(server):
    stream = stream_pipeline(PipelineSpec.model_validate(SPEC), data=_rows(24), lm=_lm(server), lm_batch=True)
    rows = sorted(stream, key=lambda r: r["_row"])
    assert [r["_row"] for r in rows] == list(range(24))
    assert all(r["answer"] and "_error" not in r for r in rows)
    assert len(server.batch.batches) == 1 and server.chat_requests == []
    assert stream.result.summary.failed == 0
