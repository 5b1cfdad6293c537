"""Ensemble / vote: the vote equals dspy.majority on identical completions (differential), and the
Ensemble module votes over real sampled completions."""

import random

import dspy
import pytest
from dspy.utils.dummies import DummyLM

from tasks.patterns import Ensemble, vote

# "" normalizes to None: a vote that is not counted unless every vote is one.
WORDS = ["Paris", "paris.", "London", "the Paris", "Rome", "", "  ROME ", "Berlin", ""]


def random_completions(rng: random.Random) -> list[dspy.Prediction]:
    n = rng.randint(1, 9)
    return [
        dspy.Prediction(reasoning=f"r{i}", answer=rng.choice(WORDS[:-1] if rng.random() < 0.8 else WORDS))
        for i in range(n)
    ]


@pytest.mark.parametrize("seed", range(300))
def test_vote_equals_dspy_majority_on_the_same_completions(seed):
    rng = random.Random(seed)
    completions = random_completions(rng)
    field = rng.choice([None, "answer", "reasoning"])
    expected = dspy.majority(completions, field=field)
    tally = vote(completions, field)
    assert dict(tally.winner.items()) == dict(expected.items())


def test_vote_with_raw_values_and_the_tally():
    completions = [{"answer": a} for a in ["b", "a", "a", "b", "c"]]
    tally = vote(completions, "answer", normalize=None)
    assert dspy.majority(completions, normalize=None, field="answer").answer == tally.winner["answer"] == "b"
    assert tally.counts == {"b": 2, "a": 2, "c": 1} and tally.index == 0
    assert tally.agreement == pytest.approx(0.4)


def test_vote_needs_completions():
    with pytest.raises(ValueError, match="at least one"):
        vote([])


def test_ensemble_votes_over_n_sampled_completions():
    lm = DummyLM([{"answer": a} for a in ["Paris", "London", "paris", "Rome", "Paris"]])
    ensemble = Ensemble("question -> answer", n=5)
    with dspy.context(lm=lm):
        prediction = ensemble(question="Capital of France?")
    assert prediction.answer == "Paris" and prediction.votes == 3
    assert prediction.agreement == pytest.approx(0.6)
    with pytest.raises(StopIteration):  # exactly five LM calls consumed the five scripted answers
        next(lm.answers)


def test_ensemble_judge_merges_the_candidates():
    answers = [{"answer": a} for a in ["4", "5", "4"]] + [{"answer": "4"}]
    lm = DummyLM(answers)
    ensemble = Ensemble("question -> answer", n=3, merge="judge")
    with dspy.context(lm=lm):
        prediction = ensemble(question="2+2?")
    assert prediction.answer == "4" and prediction.agreement == pytest.approx(2 / 3)


def test_ensemble_rejects_bad_options():
    with pytest.raises(TypeError, match="merge"):
        Ensemble("question -> answer", merge="average")
    with pytest.raises(TypeError, match="field"):
        Ensemble("question -> answer", field="nope")
