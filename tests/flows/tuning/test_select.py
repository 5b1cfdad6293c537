"""The select step: a Thompson-sampling bandit converges to the better-per-cost candidate, records its
decisions, and starts the next run from what it learned."""

import asyncio
import json
import random
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort
from support.scripted_lm import scripted_lm

from flows import PipelineSpec, run_pipeline
from flows.engine.pools import shutdown_local_pools
from flows.tuning.select import BanditState, CandidateStats, ThompsonBandit, load_state, save_state


@pytest.fixture(autouse=True)
def _clean():
    yield
    shutdown_local_pools()


def select_spec(**options):
    step = {"instructions": "Use k=7 hints.", "signature": "question -> answer"}
    return PipelineSpec.model_validate(
        {
            "name": "sel",
            "steps": [
                {
                    "select": {
                        "candidates": [
                            {"name": "slow", "module": "dspy.ChainOfThought", **step},
                            {"name": "fast", "module": "dspy.Predict", **step},
                        ],
                        "metric": "exact_match",
                        "gold": "gold",
                        "batch_rows": 10,
                        "sample": 0.5,
                        "seed": 3,
                        **options,
                    }
                }
            ],
            "continue_on_error": True,
        }
    )


def rows(n):
    return [{"question": f"q{i}", "gold": f"a{i}"} for i in range(n)]


def batch_choices(out, batch_rows=10):
    return [out[i]["select_choice"] for i in range(0, len(out), batch_rows)]


# --- the policy alone ---------------------------------------------------------------------------


def test_bandit_prefers_quality_per_cost_not_quality():
    state = BanditState(memory="m", candidates={n: CandidateStats(config=n) for n in ("good", "cheap")})
    bandit = ThompsonBandit(state, ["good", "cheap"], "tokens", {}, random.Random(0))
    for _ in range(20):
        bandit.update("good", [1.0] * 5, 10, usd=None, tokens=6000, ms_per_row=1)
        bandit.update("cheap", [1.0, 1.0, 1.0, 0.0, 0.0], 10, usd=None, tokens=1000, ms_per_row=1)
    assert state.candidates["good"].quality > state.candidates["cheap"].quality
    assert bandit.best() == "cheap"
    assert [bandit.choose()[0] for _ in range(20)].count("cheap") == 20


def test_untried_candidates_go_first_and_auto_unit_falls_back_to_latency():
    state = BanditState(memory="m", candidates={n: CandidateStats(config=n) for n in ("a", "b")})
    bandit = ThompsonBandit(state, ["a", "b"], "auto", {"a": 1000.0, "b": 10.0}, random.Random(0))
    assert bandit.choose()[0] == "a" and bandit.choose()[2] == "not tried yet"
    bandit.update("a", [1.0], 1, usd=None, tokens=0, ms_per_row=5.0)
    assert bandit.choose()[0] == "b" and bandit.cost_unit() == "latency"


def test_state_round_trips_as_json_and_a_corrupt_file_is_kept_aside(tmp_path: Path):
    path = tmp_path / "select" / "s.json"
    state = BanditState(memory="s", runs=2, candidates={"a": CandidateStats(config="x", alpha=3.5)})
    save_state(path, state)
    assert json.loads(path.read_text())["candidates"]["a"]["alpha"] == 3.5
    assert load_state(path, "s") == state
    path.write_text("{not json")
    assert load_state(path, "s").candidates == {}
    assert path.with_suffix(".corrupt").exists()


def test_candidates_must_produce_the_same_fields():
    with pytest.raises(ValueError, match="select candidates must produce the same fields"):
        PipelineSpec.model_validate(
            {
                "name": "s",
                "steps": [
                    {
                        "select": {
                            "candidates": [
                                {"module": "dspy.Predict", "signature": "question -> answer"},
                                {"module": "dspy.Predict", "signature": "question -> reply"},
                            ]
                        }
                    }
                ],
            }
        )


# --- through real pipeline runs -----------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    ("predict_top", "better"),
    [(0.6, "fast"), (0.1, "slow")],  # per token: 0.6/100 > 1.0/600; 0.1/100 < 1.0/600
)
def test_converges_to_the_better_per_cost_candidate_within_10_batches(predict_top, better):
    spec = select_spec(persist=False)
    result = run_pipeline(spec, data=rows(120), lm=scripted_lm(predict_top=predict_top))
    choices = batch_choices(result.rows())
    assert len(choices) == 12
    assert choices[7:10] == [better] * 3, choices  # settled within the first 10 batches
    assert choices[10:] == [better] * 2
    record = next(r for r in result.summary.steps if r.kind == "select")
    assert f"best per tokens now: {better}" in record.reason


@pytest.mark.integration
def test_decisions_are_recorded_and_the_next_run_starts_from_what_was_learned():
    spec = select_spec()
    first = batch_choices(run_pipeline(spec, data=rows(40), lm=scripted_lm()).rows())
    assert first[:2] == ["slow", "fast"]  # each candidate is tried once, in spec order
    second = batch_choices(run_pipeline(spec, data=rows(40), lm=scripted_lm()).rows())
    assert second[0] == "fast"  # learned: no fresh exploration of "slow"
    (path,) = tuple((_home() / "select").glob("*.json"))
    saved = json.loads(path.read_text())
    assert saved["runs"] == 2
    assert saved["candidates"]["fast"]["batches"] + saved["candidates"]["slow"]["batches"] == 8

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["select-select"])),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )

    (artifact,) = asyncio.run(read())
    table = artifact.data if isinstance(artifact.data, list) else json.loads(artifact.data)
    assert [row["candidate"] for row in table] == second
    assert {"draws", "quality", "cost_per_row", "unit"} <= set(table[0])


def _home() -> Path:
    from dspex.settings import get_settings

    return Path(get_settings().home)


def test_without_a_metric_an_lm_judge_scores_the_sampled_rows():
    from dspy.utils.dummies import DummyLM

    from flows.tuning.select import _row_scorer

    spec = PipelineSpec.model_validate(
        {
            "name": "j",
            "steps": [
                {
                    "select": {
                        "candidates": [
                            {"name": "a", "module": "dspy.Predict", "signature": "question -> answer"},
                            {"name": "b", "module": "dspy.ChainOfThought", "signature": "question -> answer"},
                        ]
                    }
                }
            ],
        }
    )
    step = spec.steps[0]
    lm = DummyLM([{"score": "0.75"}])
    score = _row_scorer(step, lm)({"question": "q1", "answer": "a1"}, step.select.candidates[0])
    assert score == 0.75
    prompt = lm.history[0]["messages"][-1]["content"]
    assert "question: q1" in prompt and "answer: a1" in prompt
