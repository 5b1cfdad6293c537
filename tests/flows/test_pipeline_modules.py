"""Each DSPy module kind through a real run-pipeline flow, against running it directly (DummyLM),
and the real HTTP path to a loopback OpenAI-compatible server with faults."""

import dspy
import pytest
from dspy.utils.dummies import DummyLM
from support.fixtures import openai_server  # noqa: F401
from support.openai_server import Fault

from dspex.exceptions import SandboxUnavailableError
from flows import PipelineSpec, run_pipeline
from flows.engine.pools import shutdown_local_pools
from tasks.callables import register_callable, unregister_callable

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _clean():
    yield
    shutdown_local_pools()


def one_step(step):
    return PipelineSpec.model_validate({"name": "m", "steps": [step], "continue_on_error": True})


def rows(n):
    return [{"question": f"<<q{i}>>"} for i in range(n)]


def test_chain_of_thought_matches_direct_use():
    answers = {f"<<q{i}>>": {"reasoning": f"because {i}", "answer": f"a{i}"} for i in range(4)}
    lm = DummyLM(answers)
    out = run_pipeline(
        one_step({"module": "dspy.ChainOfThought", "signature": "question -> answer"}), data=rows(4), lm=lm
    ).rows()
    cot = dspy.ChainOfThought("question -> answer")
    with dspy.context(lm=lm):
        direct = [cot(question=r["question"]) for r in rows(4)]
    assert [(r["reasoning"], r["answer"]) for r in out] == [(p.reasoning, p.answer) for p in direct]


def lookup(query: str) -> str:
    """Look a fact up."""
    return f"fact about {query}"


def test_react_uses_registered_tools():
    register_callable("lookup", lookup)
    try:
        lm = DummyLM(
            [
                {"next_thought": "look it up", "next_tool_name": "lookup", "next_tool_args": {"query": "x"}},
                {"next_thought": "done", "next_tool_name": "finish", "next_tool_args": {}},
                {"reasoning": "found it", "answer": "fact"},
            ]
        )
        result = run_pipeline(
            one_step(
                {
                    "module": "dspy.ReAct",
                    "signature": "question -> answer",
                    "tools": ["lookup"],
                    "options": {"max_iters": 3},
                }
            ),
            data=rows(1),
            lm=lm,
        )
        (row,) = result.rows()
        assert row["answer"] == "fact"
        assert "fact about x" in str(row["trajectory"])
    finally:
        unregister_callable("lookup")


def test_react_with_an_unknown_tool_is_a_clear_row_error():
    result = run_pipeline(
        one_step({"module": "dspy.ReAct", "signature": "question -> answer", "tools": ["nope"]}),
        data=rows(1),
        lm=DummyLM([]),
    )
    assert result.summary.failed == 1
    assert "unknown callable 'nope'" in result.summary.failures[0].message


def reward(args, prediction):
    return 1.0 if prediction.answer == "good" else 0.0


def test_best_of_n_picks_the_rewarded_attempt():
    register_callable("reward", reward)
    try:
        lm = DummyLM([{"answer": "bad"}, {"answer": "good"}, {"answer": "bad"}])
        result = run_pipeline(
            one_step(
                {
                    "module": "dspy.BestOfN",
                    "signature": "question -> answer",
                    "reward": "reward",
                    "options": {"N": 3, "threshold": 1.0},
                }
            ),
            data=rows(1),
            lm=lm,
        )
        assert result.rows()[0]["answer"] == "good"
    finally:
        unregister_callable("reward")


def test_refine_runs_with_a_registered_reward():
    register_callable("reward", reward)
    try:
        lm = DummyLM([{"answer": "good"}])
        result = run_pipeline(
            one_step(
                {
                    "module": "dspy.Refine",
                    "signature": "question -> answer",
                    "reward": "reward",
                    "options": {"N": 2, "threshold": 1.0},
                }
            ),
            data=rows(1),
            lm=lm,
        )
        assert result.rows()[0]["answer"] == "good"
    finally:
        unregister_callable("reward")


def test_wrappers_without_a_reward_are_rejected_per_row():
    result = run_pipeline(
        one_step({"module": "dspy.BestOfN", "signature": "question -> answer"}), data=rows(1), lm=DummyLM([])
    )
    assert "needs a 'reward'" in result.summary.failures[0].message


def test_multi_chain_comparison_compares_attempts():
    attempts = [{"reasoning": f"r{i}", "answer": f"a{i}"} for i in range(3)]
    lm = DummyLM([*attempts, {"rationale": "a1 is best", "answer": "a1"}])
    result = run_pipeline(
        one_step(
            {"module": "dspy.MultiChainComparison", "signature": "question -> answer", "options": {"M": 3}}
        ),
        data=rows(1),
        lm=lm,
    )
    assert result.summary.failed == 0
    assert result.rows()[0]["answer"] == "a1"


def test_user_program_registered_by_import_path(monkeypatch):
    import registry

    monkeypatch.setenv("DSPEX_TRUSTED_IMPORT_ROOTS", '["fixtures_pkg"]')
    registry.register_user_module("fixtures_pkg.programs:Shout", category="custom")
    lm = DummyLM({f"<<q{i}>>": {"answer": f"a{i}"} for i in range(3)})
    spec = one_step({"module": "fixtures_pkg.programs:Shout", "inputs": {"question": "question"}})
    out = run_pipeline(spec, data=rows(3), lm=lm).rows()
    assert [r["loud"] for r in out] == ["A0!", "A1!", "A2!"]


def test_program_of_thought_without_a_sandbox_fails_clearly(monkeypatch):
    monkeypatch.setattr("tasks.modules.sandbox_available", lambda: False)
    result = run_pipeline(
        one_step({"module": "dspy.ProgramOfThought", "signature": "question -> answer"}),
        data=rows(1),
        lm=DummyLM([]),
    )
    (failure,) = result.summary.failures
    assert failure.type == SandboxUnavailableError.__name__
    assert "pip install deno" in failure.message


def test_real_http_lm_with_429_500_and_timeout_loses_nothing(openai_server, monkeypatch):  # noqa: F811
    monkeypatch.setenv("DSPEX_TASK_RETRY_DELAY_SECONDS", "0")
    openai_server.enqueue(Fault.rate_limit(retry_after=0), Fault.server_error(), Fault.slow(5.0))
    lm = dspy.LM(
        "openai/test-model",
        api_base=openai_server.base_url,
        api_key="sk-loopback-secret",
        cache=False,
        num_retries=0,
        timeout=1.0,
    )
    data = [{"question": f"What is item {i}?", "context": [f"Item {i} is a red box."]} for i in range(6)]
    spec = one_step({"module": "dspy.Predict", "signature": "context: list[str], question -> answer"})
    result = run_pipeline(spec, data=data, lm=lm)
    out = result.rows()
    assert result.summary.failed == 0
    assert sorted(r["_row"] for r in out) == list(range(6))
    assert all(r["answer"] for r in out)
    # three faulted requests were answered again: 6 rows + 3 retried requests reached the server
    assert len(openai_server.chat_requests) >= 9
    assert "sk-loopback-secret" not in result.model_dump_json()
