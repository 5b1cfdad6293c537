"""The patterns run as pipeline steps like any module: named by the registry, routed by its records."""

import pytest
from dspy.utils.dummies import DummyLM

import registry
from flows import PipelineSpec, run_pipeline
from flows.engine.pools import shutdown_local_pools
from registry.catalogue import PATTERN_MODULE_NAMES
from tasks.callables import register_callable, unregister_callable


@pytest.fixture(autouse=True)
def _clean():
    register_callable("longer_is_better", lambda inputs, prediction: len(prediction.thought) / 100)
    yield
    unregister_callable("longer_is_better")
    shutdown_local_pools()


def test_patterns_are_registry_modules_on_the_general_pool():
    for name in PATTERN_MODULE_NAMES:
        info = registry.get_module(name)
        assert info.pool_type == "general" and info.metadata.source == "dspex"
        assert registry.estimate(name).ms > registry.estimate("dspy.Predict").ms  # several LM calls


@pytest.mark.integration
def test_each_pattern_runs_as_a_pipeline_step():
    questions = [f"<<q{i}>>" for i in range(3)]
    lm = DummyLM(
        {q: {"reasoning": "r", "thought": f"thinking about {q}", "answer": f"a-{q}"} for q in questions}
    )
    spec = PipelineSpec.model_validate(
        {
            "name": "patterns",
            "steps": [
                {"name": "vote", "module": "dspex.Ensemble", "signature": "question -> answer",
                 "options": {"n": 3}, "outputs": {"answer": "voted"}},
                {"name": "fix", "module": "dspex.SelfCorrectingChainOfThought",
                 "signature": "question -> answer", "options": {"max_retries": 1}, "outputs": {"answer": "fixed"}},
                {"name": "tot", "module": "dspex.TreeOfThoughts", "signature": "question -> answer",
                 "options": {"breadth": 2, "depth": 2, "scorer": "longer_is_better"}},
            ],
        }
    )  # fmt: skip
    result = run_pipeline(spec, data=[{"question": q} for q in questions], lm=lm)
    rows = result.rows()
    for q, row in zip(questions, rows, strict=True):
        assert row["voted"] == row["fixed"] == row["answer"] == f"a-{q}"
        assert row["votes"] == 3 and row["attempts"] == 1 and row["nodes_explored"] == 4
    routed = {r.step: r for r in result.summary.steps}
    assert routed["tot"].module == "dspex.TreeOfThoughts" and routed["tot"].pool == "general"
    assert routed["vote"].estimated_ms is not None
