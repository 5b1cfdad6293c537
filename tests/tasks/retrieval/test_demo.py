import re

import pytest

from tasks.retrieval import load_demo_corpus, load_demo_questions


def test_corpus_and_questions_have_the_documented_shape():
    corpus = load_demo_corpus()
    questions = load_demo_questions()
    assert 60 <= len(corpus) <= 120
    assert 30 <= len(questions) <= 40
    assert all(set(p) == {"id", "title", "text"} for p in corpus)
    assert all(set(q) == {"id", "question", "answer", "aliases", "passage_id"} for q in questions)
    assert len({p["id"] for p in corpus}) == len(corpus)
    assert len({q["id"] for q in questions}) == len(questions)


def test_each_gold_answer_appears_verbatim_in_exactly_its_passage():
    corpus = load_demo_corpus()
    for question in load_demo_questions():
        holders = [p["id"] for p in corpus if question["answer"] in p["text"]]
        assert holders == [question["passage_id"]], question
        # As a whole phrase too, not only inside a longer word.
        pattern = re.compile(rf"(?<!\w){re.escape(question['answer'])}(?!\w)")
        assert [p["id"] for p in corpus if pattern.search(p["text"])] == [question["passage_id"]]


def test_some_answers_are_phrases_inside_longer_sentences():
    long_answers = [q for q in load_demo_questions() if len(q["answer"].split()) >= 3]
    assert len(long_answers) >= 5


def test_splits_are_fixed_disjoint_and_cover_everything():
    train = load_demo_questions("train")
    dev = load_demo_questions("dev")
    every = load_demo_questions("all")
    assert {q["id"] for q in train} | {q["id"] for q in dev} == {q["id"] for q in every}
    assert not {q["id"] for q in train} & {q["id"] for q in dev}
    assert abs(len(train) - len(dev)) <= 1
    assert load_demo_questions("train") == train


def test_each_call_returns_fresh_rows():
    load_demo_corpus()[0]["text"] = "changed"
    load_demo_questions()[0]["aliases"].append("changed")
    assert load_demo_corpus()[0]["text"] != "changed"
    assert "changed" not in load_demo_questions()[0]["aliases"]


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="unknown demo split 'test'"):
        load_demo_questions("test")  # type: ignore[arg-type]
