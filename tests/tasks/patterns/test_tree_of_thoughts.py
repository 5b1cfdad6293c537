"""Tree of thoughts explores exactly breadth x depth nodes and answers with the best final node."""

import dspy
import pytest
from dspy.utils.dummies import DummyLM

from tasks.callables import register_callable, unregister_callable
from tasks.patterns import TreeOfThoughts


@pytest.fixture
def scored():
    seen: list[str] = []

    def score(inputs, prediction):
        seen.append(prediction.thought)
        return float(prediction.thought.count("+"))  # longer derivations score higher

    register_callable("tot_scorer", score)
    yield seen
    unregister_callable("tot_scorer")


@pytest.mark.parametrize(("breadth", "depth"), [(1, 1), (3, 2), (2, 4)])
def test_explores_exactly_breadth_times_depth_nodes(scored, breadth, depth):
    n = breadth * depth
    answers = [{"thought": "t" + "+" * ((i * 7) % 5), "answer": f"a{i}"} for i in range(n)]
    lm = DummyLM(answers)
    tot = TreeOfThoughts("question -> answer", breadth=breadth, depth=depth, scorer="tot_scorer")
    with dspy.context(lm=lm):
        prediction = tot(question="q?")
    assert prediction.nodes_explored == n == len(scored)
    with pytest.raises(StopIteration):  # one LM call per node, no more
        next(lm.answers)
    last_level = answers[-breadth:]
    best = max(range(breadth), key=lambda i: (last_level[i]["thought"].count("+"), -i))
    assert prediction.answer == last_level[best]["answer"]
    assert len(prediction.thoughts) == depth


def test_each_level_grows_from_the_best_thought(scored):
    answers = [
        {"thought": "weak", "answer": "x"},
        {"thought": "strong +", "answer": "y"},
        {"thought": "next ++", "answer": "z"},
        {"thought": "next", "answer": "w"},
    ]
    lm = DummyLM(answers)
    tot = TreeOfThoughts("question -> answer", breadth=2, depth=2, scorer="tot_scorer")
    with dspy.context(lm=lm):
        prediction = tot(question="q?")
    assert prediction.thoughts == ["strong +", "next ++"] and prediction.answer == "z"
    assert prediction.score == 2.0


def test_the_judge_scores_nodes_with_the_lm():
    # breadth 2 x depth 1: node, judge, node, judge
    lm = DummyLM(
        [
            {"thought": "a", "answer": "1"},
            {"score": "0.2"},
            {"thought": "b", "answer": "2"},
            {"score": "0.9"},
        ]
    )
    tot = TreeOfThoughts("question -> answer", breadth=2, depth=1, scorer="judge")
    with dspy.context(lm=lm):
        prediction = tot(question="q?")
    assert prediction.answer == "2" and prediction.score == pytest.approx(0.9)


def test_bad_shape_is_rejected():
    with pytest.raises(TypeError, match="breadth"):
        TreeOfThoughts("question -> answer", breadth=0, scorer="judge")
