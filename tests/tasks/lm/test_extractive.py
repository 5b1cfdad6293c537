"""The extractive answering rules (tasks/lm/extractive.py)."""

from __future__ import annotations

import pytest

from tasks.lm.extractive import extract_answer, split_passages, split_sentences, terms


def test_passages_from_json_lists_numbered_lines_and_paragraphs() -> None:
    assert split_passages('["a.", {"title": "T", "text": "b."}]') == ["a.", "T b."]
    assert split_passages("[1] «first»\n[2] «second»") == ["first", "second"]
    assert split_passages("one\n\ntwo") == ["one", "two"]


def test_sentences_and_terms() -> None:
    assert split_sentences("Dr. Who is here. It costs 3.5 dollars! Then 2 more.") == [
        "Dr. Who is here.",
        "It costs 3.5 dollars!",
        "Then 2 more.",
    ]
    assert terms("How many residents does Paris have?") == ["resident", "paris"]


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("What is the capital of France?", "Paris"),
        ("Who founded the Bank of England?", "Charles Montagu"),
        ("In what year was the Bank of England founded?", "1694"),
        ("How tall is the Eiffel Tower?", "330 metres"),
    ],
)
def test_short_answer_spans(question: str, answer: str) -> None:
    context = {
        "context": "Paris is the capital of France. The Eiffel Tower is 330 metres tall. "
        "The Bank of England was founded in 1694 by Charles Montagu."
    }
    assert extract_answer(question, context).answer == answer


def test_explanations_are_honest() -> None:
    found = extract_answer("capital of France?", {"context": "Paris is the capital of France."})
    assert found.matched == ("capital", "france")
    assert "sentence 1 of 1" in found.explanation and "capital, france" in found.explanation
    nothing = extract_answer("Zebras?", {"context": "First one. Second one."})
    assert nothing.sentence is not None and nothing.sentence.number == 1
    assert "no sentence shares a term" in nothing.explanation
    empty = extract_answer("Why?", {})
    assert empty.answer == "unknown" and "no context" in empty.explanation


def test_long_form_keeps_the_sentence_and_no_question_gives_the_lead() -> None:
    context = {"doc": "Alpha is first. Beta is second."}
    assert extract_answer("What is second?", context, short=False).answer == "Beta is second"
    assert extract_answer(None, context).answer == "Alpha is first"
