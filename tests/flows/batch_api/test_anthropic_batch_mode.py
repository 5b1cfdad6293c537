"""Batch mode (issue 21) with an ``anthropic/...`` LM: `run_pipeline` against the loopback server's
Message Batches routes.

As for OpenAI (test_batch_mode.py), every test compares with what the online run gives on the same
server answers: its rows, its typed errors, its cost. ``claude-haiku-4-5`` is priced in the cost map
online and in batch, so the batch cost is checked at its batch price.
"""

import dspy
import pytest
from support.anthropic_server import anthropic_server

from dspex.exceptions import LMBatchPendingError, LMBatchUnsupportedError
from flows import PipelineSpec, run_pipeline

pytestmark = pytest.mark.integration

MODEL = "anthropic/claude-haiku-4-5"
KEY = "sk-ant-batch-secret"
PREDICT = {"module": "dspy.Predict", "signature": "question, context -> answer"}
TWO_PREDICTORS = {"module": "fixtures_pkg.batch_programs:DraftThenAnswer"}


@pytest.fixture
def server():
    with anthropic_server(required_key=KEY) as s:
        yield s


def lm_for(server):
    return dspy.LM(MODEL, api_base=server.base_url, api_key=KEY, cache=False, num_retries=0)


def spec_of(step, **extra):
    return PipelineSpec.model_validate(
        {"name": "batchy", "steps": [step], "continue_on_error": True, **extra}
    )


def data(n):
    return [
        {"question": f"What is item {i}?", "context": f"Item {i} is a red box number {i}."} for i in range(n)
    ]


@pytest.mark.parametrize(("step", "rounds"), [(PREDICT, 1), (TWO_PREDICTORS, 2)], ids=["predict", "two"])
def test_batch_rows_equal_the_online_rows_at_the_batch_price(server, step, rounds):
    import registry

    registry.register_user_module("fixtures_pkg.batch_programs:DraftThenAnswer", category="custom")
    spec, lm, rows = spec_of(step), lm_for(server), data(5)
    batch = run_pipeline(spec, data=rows, lm=lm, lm_batch=True, resume=False)
    assert server.messages_requests == []  # nothing went online
    online = run_pipeline(spec, data=rows, lm=lm, resume=False)
    assert batch.rows() == online.rows() and batch.summary.failed == 0
    (record,) = batch.summary.steps
    assert record.lm_batch.rounds == rounds and record.lm_batch.requests == 5 * rounds
    assert all(b.startswith("msgbatch_") for b in record.lm_batch.batch_ids)
    assert record.lm_batch.price == "cost map batch price"
    assert batch.summary.usage.requests == online.summary.usage.requests == 5 * rounds
    assert batch.summary.usage.prompt_tokens == online.summary.usage.prompt_tokens
    assert batch.summary.usage.completion_tokens == online.summary.usage.completion_tokens
    assert batch.summary.usage.cost_usd / online.summary.usage.cost_usd == pytest.approx(0.5)
    assert server.message_batches.duplicates == []
    assert KEY not in batch.model_dump_json()


def test_a_failed_request_is_sent_again_in_the_next_round(server):
    server.message_batches.fail_next, server.message_batches.fail_type = 2, "overloaded_error"
    result = run_pipeline(spec_of(PREDICT), data=data(4), lm=lm_for(server), lm_batch=True, resume=False)
    (record,) = result.summary.steps
    assert result.summary.failed == 0
    assert record.lm_batch.rounds == 2 and record.lm_batch.requests == 4 + 2
    assert server.messages_requests == []
    assert len(server.message_batches.duplicates) == 2  # the two failed requests, sent again once


def test_a_permanent_error_fails_its_row_as_online(server):
    spec, lm = spec_of(PREDICT), lm_for(server)
    server.message_batches.fail_next, server.message_batches.fail_type = 1, "invalid_request_error"
    batch = run_pipeline(spec, data=data(2), lm=lm, lm_batch=True, resume=False)
    from support.openai_server import Fault

    server.enqueue(Fault.error(400, "invalid_request_error (injected)"))
    online = run_pipeline(spec, data=data(2), lm=lm, resume=False)
    (failed_batch,) = [r["_error"] for r in batch.rows() if "_error" in r]
    (failed_online,) = [r["_error"] for r in online.rows() if "_error" in r]
    assert failed_batch["type"] == failed_online["type"] == "LMInvalidRequestError"
    assert failed_batch["retryable"] is failed_online["retryable"] is False
    assert batch.summary.steps[0].lm_batch.rounds == 1  # not sent again


def test_exit_mode_waits_then_resumes_without_submitting_twice(server):
    server.message_batches.delay_s = 3600
    spec, lm, rows = spec_of(PREDICT), lm_for(server), data(3)
    pending = run_pipeline(spec, data=rows, lm=lm, lm_batch=True, lm_batch_wait="exit")
    assert isinstance(pending, LMBatchPendingError)
    again = run_pipeline(spec, data=rows, lm=lm, lm_batch=True, lm_batch_wait="exit")
    assert isinstance(again, LMBatchPendingError) and again.batch_id == pending.batch_id
    server.message_batches.delay_s = 0
    done = run_pipeline(spec, data=rows, lm=lm, lm_batch=True, lm_batch_wait="exit")
    assert done.summary.failed == 0 and done.summary.steps[0].lm_batch.batch_ids == [pending.batch_id]
    assert len(server.message_batches.batches) == 1 and server.message_batches.duplicates == []
    assert done.rows() == run_pipeline(spec, data=rows, lm=lm, resume=False).rows()


def test_a_crash_between_submitting_and_recording_adopts_the_submitted_batch(server, monkeypatch):
    from tasks.lm.anthropic_batch import AnthropicBatchClient

    real_submit = AnthropicBatchClient.submit

    def submit_then_crash(self, *args, **kwargs):
        real_submit(self, *args, **kwargs)
        raise KeyboardInterrupt  # the provider took the batch; the process died before saving its id

    monkeypatch.setattr(AnthropicBatchClient, "submit", submit_then_crash)
    spec, lm, rows = spec_of(PREDICT), lm_for(server), data(3)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(spec, data=rows, lm=lm, lm_batch=True)
    monkeypatch.setattr(AnthropicBatchClient, "submit", real_submit)
    result = run_pipeline(spec, data=rows, lm=lm, lm_batch=True)
    assert result.summary.failed == 0
    assert len(server.message_batches.batches) == 1 and server.message_batches.duplicates == []


def test_a_server_without_message_batches_is_a_typed_error_before_anything_is_sent(server):
    server.message_batches.supported = False
    with pytest.raises(LMBatchUnsupportedError, match="no batch API"):
        run_pipeline(spec_of(PREDICT), data=data(2), lm=lm_for(server), lm_batch=True)
    assert [r for r in server.requests if r.method == "POST"] == []
