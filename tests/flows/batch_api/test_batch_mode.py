"""Batch mode (issue 21) through `run_pipeline`, against the loopback server's /v1/files + /v1/batches.

Every test compares with what users would otherwise get: the rows of the online run on the same
server answers, the typed error an online call raises, the online cost. The model is named
``openai/gpt-4o-mini`` (served by the loopback server) so the cost map prices it online and in batch.
"""

import json

import dspy
import pytest
from support.openai_server import Fault, openai_server

from dspex.exceptions import LMBatchPendingError, LMBatchUnsupportedError
from flows import PipelineSpec, run_pipeline
from flows.batch_api.jobs import BATCH_PREFIX

pytestmark = pytest.mark.integration

MODEL = "openai/gpt-4o-mini"


@pytest.fixture
def server():
    with openai_server() as s:
        yield s


def lm_for(server):
    return dspy.LM(MODEL, api_base=server.base_url, api_key="sk-batch-secret", cache=False, num_retries=0)


def spec_of(step, **extra):
    return PipelineSpec.model_validate(
        {"name": "batchy", "steps": [step], "continue_on_error": True, **extra}
    )


def data(n):
    return [
        {"question": f"What is item {i}?", "context": f"Item {i} is a red box number {i}."} for i in range(n)
    ]


PROGRAMS = {
    "predict": ({"module": "dspy.Predict", "signature": "question, context -> answer"}, 1),
    "chain_of_thought": ({"module": "dspy.ChainOfThought", "signature": "question, context -> answer"}, 1),
    "two_predictors": ({"module": "fixtures_pkg.batch_programs:DraftThenAnswer"}, 2),
}


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_batch_rows_equal_the_online_rows_at_half_the_cost(server, program):
    import registry

    registry.register_user_module("fixtures_pkg.batch_programs:DraftThenAnswer", category="custom")
    step, rounds = PROGRAMS[program]
    spec, lm, rows = spec_of(step), lm_for(server), data(6)
    batch = run_pipeline(spec, data=rows, lm=lm, lm_batch=True, resume=False)
    assert server.chat_requests == []  # nothing went online
    online = run_pipeline(spec, data=rows, lm=lm, resume=False)
    assert batch.rows() == online.rows()
    assert batch.summary.failed == 0
    (record,) = batch.summary.steps
    assert record.lm_batch.rounds == rounds
    assert record.lm_batch.requests == 6 * rounds
    assert all(record.lm_batch.submitted_at) and all(record.lm_batch.completed_at)
    assert record.lm_batch.price == "cost map batch price"
    assert batch.summary.usage.requests == online.summary.usage.requests == 6 * rounds
    assert batch.summary.usage.prompt_tokens == online.summary.usage.prompt_tokens
    ratio = batch.summary.usage.cost_usd / online.summary.usage.cost_usd
    assert ratio == pytest.approx(0.5)
    assert server.batch.duplicates == []
    assert "sk-batch-secret" not in batch.model_dump_json()


def test_failed_requests_are_sent_again_in_the_next_round(server):
    server.batch.fail_next = 2
    result = run_pipeline(spec_of(PROGRAMS["predict"][0]), data=data(5), lm=lm_for(server), lm_batch=True)
    (record,) = result.summary.steps
    assert result.summary.failed == 0
    assert record.lm_batch.rounds == 2 and record.lm_batch.requests == 5 + 2
    assert server.chat_requests == []


def test_a_request_that_fails_its_last_attempt_fails_its_row_as_online(server, monkeypatch):
    monkeypatch.setenv("DSPEX_LM_NUM_RETRIES", "0")  # one attempt: the batch's 500 is final
    spec, lm = spec_of(PROGRAMS["predict"][0]), lm_for(server)
    server.batch.fail_next = 1
    batch = run_pipeline(spec, data=data(3), lm=lm, lm_batch=True, resume=False)
    server.enqueue(Fault.server_error())
    online = run_pipeline(spec, data=data(3), lm=lm, resume=False)
    (failed_batch,) = [r["_error"] for r in batch.rows() if "_error" in r]
    (failed_online,) = [r["_error"] for r in online.rows() if "_error" in r]
    assert failed_batch["type"] == failed_online["type"] == "LMServerError"
    assert failed_batch["retryable"] is failed_online["retryable"] is True
    assert batch.summary.steps[0].lm_batch.rounds == 1


def test_expired_requests_go_online_with_the_online_fallback(server):
    server.batch.expire_next, server.batch.expire_after = 1, 2
    spec = spec_of(PROGRAMS["predict"][0], lm_batch=True, lm_batch_fallback="online")
    result = run_pipeline(spec, data=data(5), lm=lm_for(server), resume=False)
    (record,) = result.summary.steps
    assert result.summary.failed == 0, result.summary.failures
    assert record.lm_batch.rounds == 1 and record.lm_batch.online_fallbacks == 3
    assert len(server.chat_requests) == 3  # the three expired requests, answered online
    assert result.summary.usage.requests == 5


def test_a_provider_without_a_batch_api_is_a_typed_error_before_anything_is_sent(server):
    server.batch.supported = False
    first = {"name": "first", **PROGRAMS["predict"][0]}  # online, and before the batch step
    second = {"name": "second", "module": "dspy.Predict", "signature": "answer -> verdict"}
    spec = PipelineSpec.model_validate({"name": "two", "steps": [first, second], "lm_batch": ["second"]})
    with pytest.raises(LMBatchUnsupportedError, match="no batch API"):
        run_pipeline(spec, data=data(2), lm=lm_for(server))
    assert [r.path for r in server.requests if r.method == "POST"] == []  # not even the online step ran


def test_the_offline_lm_has_no_batch_api():
    with pytest.raises(LMBatchUnsupportedError, match="OpenAI-compatible"):
        run_pipeline(spec_of(PROGRAMS["predict"][0]), data=data(1), lm_batch=True)


def test_a_run_that_exits_while_the_batch_is_pending_resumes_without_submitting_twice(server, tmp_path):
    server.batch.delay_s = 3600
    spec, lm, rows = spec_of(PROGRAMS["chain_of_thought"][0]), lm_for(server), data(4)
    pending = run_pipeline(spec, data=rows, lm=lm, lm_batch=True, lm_batch_wait="exit")
    assert isinstance(pending, LMBatchPendingError)
    again = run_pipeline(
        spec, data=rows, lm=lm, lm_batch=True, lm_batch_wait="exit"
    )  # a re-check: still pending
    assert isinstance(again, LMBatchPendingError) and again.batch_id == pending.batch_id
    server.batch.delay_s = 0
    done = run_pipeline(spec, data=rows, lm=lm, lm_batch=True, lm_batch_wait="exit")
    assert done.summary.failed == 0 and done.summary.steps[0].lm_batch.batch_ids == [pending.batch_id]
    assert len(server.batch.batches) == 1 and server.batch.duplicates == []
    assert done.rows() == run_pipeline(spec, data=rows, lm=lm, resume=False).rows()


def test_each_check_replays_only_new_calls_and_a_done_round_is_collected_first(server, monkeypatch):
    """Exit mode, a two-predictor program: every check is a new run (as a deployment's re-check is),
    so the replay memo comes from the round files. A check that finds its round done collects it
    before replaying (no replay just to find the round's requests again): three replays in all (two
    rounds and the last), each call formatted once, and the rows are the online rows."""
    import registry
    from flows.batch_api import mode as batch_mode
    from tasks.lm.replay_memo import ReplayMemo

    registry.register_user_module("fixtures_pkg.batch_programs:DraftThenAnswer", category="custom")
    replays, memos = [], []
    real_execute, real_init = batch_mode.execute_module_batch, ReplayMemo.__init__

    def counted_execute(*args, **kwargs):
        replays.append(len(args[1]))
        return real_execute(*args, **kwargs)

    def kept_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        memos.append(self)

    monkeypatch.setattr(batch_mode, "execute_module_batch", counted_execute)
    monkeypatch.setattr(ReplayMemo, "__init__", kept_init)
    server.batch.delay_s = 0.3
    spec, lm, rows = spec_of(PROGRAMS["two_predictors"][0]), lm_for(server), data(3)
    for _ in range(100):
        result = run_pipeline(spec, data=rows, lm=lm, lm_batch=True, lm_batch_wait="exit", resume=False)
        if not isinstance(result, LMBatchPendingError):
            break
    assert replays == [3, 3, 3]
    stats = [sum(getattr(m.stats, name) for m in memos) for name in ("formatted", "unformatted", "replayed")]
    assert stats == [6, 6, 3]  # 6 requests formatted once; 6 answers parsed without it; 3 given back
    assert result.summary.failed == 0 and server.batch.duplicates == []
    assert result.rows() == run_pipeline(spec, data=rows, lm=lm, resume=False).rows()


def test_a_crash_between_submitting_and_recording_adopts_the_submitted_batch(server, monkeypatch):
    from tasks.lm.batch_api import BatchClient

    real_create = BatchClient.create

    def create_then_crash(self, *args, **kwargs):
        real_create(self, *args, **kwargs)
        raise KeyboardInterrupt  # the process dies after the provider took the batch, before we saved it

    monkeypatch.setattr(BatchClient, "create", create_then_crash)
    spec, lm, rows = spec_of(PROGRAMS["predict"][0]), lm_for(server), data(3)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(spec, data=rows, lm=lm, lm_batch=True)
    monkeypatch.setattr(BatchClient, "create", real_create)
    result = run_pipeline(spec, data=rows, lm=lm, lm_batch=True)
    assert result.summary.failed == 0
    assert len(server.batch.batches) == 1 and server.batch.duplicates == []


def test_the_job_state_is_json_under_the_payload_folder(server, tmp_path, monkeypatch):
    monkeypatch.setenv("DSPEX_PAYLOAD_URL", str(tmp_path / "payloads"))
    run_pipeline(spec_of(PROGRAMS["predict"][0]), data=data(2), lm=lm_for(server), lm_batch=True)
    (job,) = (tmp_path / "payloads" / BATCH_PREFIX).iterdir()
    assert sorted(p.name for p in job.iterdir()) == ["answers-1.json", "round-1.json", "state.json"]
    for name in ("state.json", "answers-1.json", "round-1.json"):
        assert "sk-batch-secret" not in (job / name).read_text()
    saved = json.loads((job / "round-1.json").read_text())
    assert len(saved["requests"]) == 2 and len(saved["memo"]["known"]) == 2  # each row's first call


def lookup(query: str) -> str:
    """Look a fact up."""
    return f"fact about {query}"


def react_reply(messages):
    """A model that looks the question up once, then finishes, then extracts the answer."""
    system, last = messages[0][1], messages[-1][1]
    if "next_tool_name" in system:
        tool, args = ("finish", "{}") if "observation_0" in last else ("lookup", '{"query": "boxes"}')
        return (
            f"[[ ## next_thought ## ]]\nstep\n\n[[ ## next_tool_name ## ]]\n{tool}\n\n"
            f"[[ ## next_tool_args ## ]]\n{args}\n\n[[ ## completed ## ]]"
        )
    return "[[ ## reasoning ## ]]\nlooked up\n\n[[ ## answer ## ]]\nred\n\n[[ ## completed ## ]]"


def test_react_takes_a_round_per_call_and_equals_online():
    from tasks.callables import register_callable, unregister_callable

    register_callable("lookup", lookup)
    try:
        with openai_server(responder=react_reply) as server:
            spec = spec_of({"module": "dspy.ReAct", "signature": "question -> answer", "tools": ["lookup"]})
            lm, rows = lm_for(server), [{"question": f"What colour is box {i}?"} for i in range(4)]
            batch = run_pipeline(spec, data=rows, lm=lm, lm_batch=True, resume=False)
            online = run_pipeline(spec, data=rows, lm=lm, resume=False)
    finally:
        unregister_callable("lookup")
    assert batch.summary.failed == 0 and batch.rows() == online.rows()
    assert batch.summary.steps[0].lm_batch.rounds == 3  # lookup, finish, extract
    assert "fact about boxes" in str(batch.rows()[0]["trajectory"])
