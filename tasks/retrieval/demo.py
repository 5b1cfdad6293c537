"""The bundled demo data: a small corpus of factual passages and questions answerable from it.

The files live in ``tasks/data/`` and ship with the package. Each question's gold ``answer`` appears
verbatim in exactly one passage (``passage_id``), so an extractive reader can get it right, and
``aliases`` lists other acceptable forms.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any, Literal

__all__ = ["DemoSplit", "load_demo_corpus", "load_demo_questions"]

DemoSplit = Literal["train", "dev", "all"]


@cache
def _read_jsonl(name: str) -> tuple[str, ...]:
    text = files("tasks").joinpath("data", name).read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line.strip())


def load_demo_corpus() -> list[dict[str, str]]:
    """The demo corpus: one ``{"id", "title", "text"}`` mapping per passage (a fresh list each call)."""
    return [json.loads(line) for line in _read_jsonl("corpus.jsonl")]


def load_demo_questions(split: DemoSplit = "all") -> list[dict[str, Any]]:
    """The demo questions: ``{"id", "question", "answer", "aliases", "passage_id"}`` mappings.

    Args:
        split: ``all``; or ``train`` (the 1st, 3rd, 5th... question) and ``dev`` (the 2nd, 4th...),
            a fixed split that gives both halves every topic, for optimization demos.

    Raises:
        ValueError: An unknown split.
    """
    if split not in ("train", "dev", "all"):
        raise ValueError(f"unknown demo split {split!r}; expected 'train', 'dev' or 'all'")
    questions = [json.loads(line) for line in _read_jsonl("questions.jsonl")]
    if split == "all":
        return questions
    parity = 0 if split == "train" else 1
    return [question for i, question in enumerate(questions) if i % 2 == parity]
