"""The tune flow: Optuna over a spec's variables, trials as real pipeline runs on a scripted LM whose
right setting is known (k=7 with ChainOfThought), pruning in rungs, artifacts, Pareto front, and a
chained DSPy optimizer."""

import asyncio

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort
from support.scripted_lm import quality, scripted_lm

from dspex.exceptions import VariableError
from flows.engine.pools import shutdown_local_pools
from flows.engine.spec import PipelineSpec
from flows.tune import default_tune_spec, tune_pipeline
from tasks.payloads import read_payload

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _clean():
    yield
    shutdown_local_pools()


def knob_spec(k=(1, 10)):
    return PipelineSpec.model_validate(
        {
            "name": "knobs",
            "variables": {
                "k": {"int": list(k), "default": k[0]},
                "reasoner": {"choice": ["dspy.Predict", "dspy.ChainOfThought"], "default": "dspy.Predict"},
            },
            "steps": [
                {
                    "name": "answer",
                    "module": "${reasoner}",
                    "signature": "question -> answer",
                    "instructions": "Use k=${k} hints.",
                }
            ],
            "continue_on_error": True,
        }
    )


DEV = [{"question": f"q{i}", "gold": f"a{i}"} for i in range(20)]


def read_artifact(key):
    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )

    (artifact,) = asyncio.run(read())
    return artifact


@pytest.mark.slow
def test_finds_the_right_k_and_reasoner_within_30_trials_and_prunes_hopeless_ones():
    result = tune_pipeline(knob_spec(), devset=DEV, n_trials=30, rungs=[5, 10], lm=scripted_lm(), seed=1)
    assert result.best_values == {"k": 7, "reasoner": "dspy.ChainOfThought"}
    assert result.best_score == 1.0 == quality(7, True)
    assert len(result.trials) <= 30
    assert result.pruned > 0 and all(t.rows < 20 for t in result.trials if t.state == "pruned")
    first = result.trials[0]  # the defaults go first: the spec is runnable as is
    assert first.values == {"k": 1, "reasoner": "dspy.Predict"} and first.score == 0.0
    assert first.tokens == 20 * 100 and first.rows == 20  # Predict: 50 tokens in + 50 out per row
    assert sum(t.tokens for t in result.trials) > first.tokens
    # the best spec is concrete, saved as a payload, and runs as any spec
    best = result.best_spec
    assert best.variables == {} and best.steps[0].module == "dspy.ChainOfThought"
    assert best.steps[0].instructions == "Use k=7 hints."
    assert PipelineSpec.model_validate(read_payload(result.best_spec_ref)) == best
    table = read_artifact("tune-trials-knobs").data
    assert "k" in str(table) and "tokens" in str(table) and "pruned" in str(table)


@pytest.mark.slow
def test_score_and_cost_marks_the_pareto_front():
    result = tune_pipeline(
        knob_spec(k=(6, 8)), devset=DEV, n_trials=16, objective="score_and_cost", lm=scripted_lm(), seed=0
    )
    front = {(t.values["k"], t.values["reasoner"]) for t in result.trials if t.pareto}
    # per row: Predict costs 100 tokens, ChainOfThought 600; k=7 is the most accurate for both
    assert front == {(7, "dspy.Predict"), (7, "dspy.ChainOfThought")}
    assert result.pruned == 0


def test_chained_optimizer_compiles_the_best_spec():
    result = tune_pipeline(
        knob_spec(k=(7, 7)),
        devset=DEV,
        n_trials=3,
        lm=scripted_lm(),
        optimize={"step": "answer", "optimizer": "LabeledFewShot", "options": {"k": 4}},
    )
    assert result.optimized is not None and result.optimized["optimizer"] == "LabeledFewShot"
    state = result.best_spec.step("answer").state
    assert state == result.optimized["state_uri"] and result.optimized["trainset_size"] == 20


def test_bad_input_fails_before_any_trial():
    plain = PipelineSpec.model_validate(
        {"name": "p", "steps": [{"module": "dspy.Predict", "signature": "question -> answer"}]}
    )
    lm = scripted_lm()
    with pytest.raises(VariableError, match="no variables"):
        tune_pipeline(plain, devset=DEV, lm=lm)
    with pytest.raises(ValueError, match="gold"):
        tune_pipeline(knob_spec(), devset=[{"question": "q1"}], lm=lm)
    with pytest.raises(ValueError, match="step 'nope'"):
        tune_pipeline(knob_spec(), devset=DEV, lm=lm, optimize={"step": "nope"})
    assert lm.history == []


def test_the_default_spec_resolves_over_its_whole_space():
    spec = default_tune_spec()
    assert spec.steps[0].k == 3 and spec.steps[1].module == "dspy.ChainOfThought"
    from flows.engine.spec import resolve_spec

    assert resolve_spec(spec, {"k": 5, "reasoner": "dspy.Predict"}).steps[0].k == 5
