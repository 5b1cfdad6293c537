"""Extractive answering: pick the sentence of the prompt's own context that best matches the question.

This is the whole "model" behind the offline LM. It is deterministic (no randomness, no clock, ties
broken by position), works on text alone, and says what it did: every choice is explained in the
``reasoning`` it writes. It is a baseline that makes offline pipelines and metrics meaningful, not a
language model: it can only copy spans of its inputs.

Scoring: question terms (lower-cased, stop words removed, a plural ``s`` folded) are weighted by their
inverse sentence frequency over the candidate sentences; the best sentence has the highest weighted
overlap, then the fewest words, then comes first. The short answer is the run of that sentence's
words that are neither question words nor stop words, preferring numeric runs for when/how-many
questions and capitalised runs (names) otherwise, then the run nearest to the matched words.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "Extraction",
    "Sentence",
    "extract_answer",
    "split_passages",
    "split_sentences",
    "terms",
]

_TOKEN = re.compile(r"\d+(?:[.,:]\d+)*%?|[^\W\d_]+(?:['\u2019-][^\W\d_]+)*", re.UNICODE)
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
# A period after these (or after a single capital, an initial) does not end a sentence.
_ABBREVIATIONS = frozenset(
    {"dr", "mr", "mrs", "ms", "st", "prof", "jr", "sr", "vs", "etc", "no", "mt", "ft", "inc", "ltd", "co"}
)
_NUMBERED = re.compile(r"^\s*\[\d+\]\s*«(.*)»\s*$", re.S)
_STOP_WORDS = """a an the and or but if then else of at by for with about against between into through during
    before after above below to from up down in out on off over under again further once here there
    when where why how all any both each few more most other some such no nor not only own same so
    than too very can will just should now is are was were be been being have has had having do does
    did doing i me my we our you your he him his she her it its they them their what which who whom
    whose this that these those am would could may might must shall as also there's it's around
    approximately nearly almost roughly since until ago per via among within without across along
    toward towards upon onto while although though because whether yet still even ever many much"""
_STOP = frozenset(_STOP_WORDS.split())
_NUMERIC = frozenset({"when", "year", "date", "many", "much", "long", "old", "often", "number", "percent"})
_JOINERS = frozenset({"of", "the", "de", "and", "&", "von", "van", "da", "la", "du"})


@dataclass(frozen=True, slots=True)
class Sentence:
    """A candidate sentence.

    Attributes:
        text: The sentence, verbatim.
        source: The input field it came from.
        number: Its 1-based position among all candidate sentences.
    """

    text: str
    source: str
    number: int


@dataclass(frozen=True, slots=True)
class Extraction:
    """The result of extracting an answer.

    Attributes:
        answer: The short answer span (a sentence when no shorter span stands out).
        sentence: The chosen sentence, or None when there was nothing to choose from.
        matched: The question terms the sentence shares, in question order.
        candidates: How many sentences were considered.
    """

    answer: str
    sentence: Sentence | None
    matched: tuple[str, ...]
    candidates: int

    @property
    def explanation(self) -> str:
        """Why this answer: a one-sentence, honest trace."""
        if self.sentence is None:
            return "there was no context to extract from, so the answer is 'unknown'"
        where = f"sentence {self.sentence.number} of {self.candidates} (from `{self.sentence.source}`)"
        if self.matched:
            terms_text = ", ".join(self.matched)
            return f"picked {where} because it shares the most question terms ({terms_text})"
        return f"no sentence shares a term with the question, so picked {where}, the first one"


def terms(text: str) -> list[str]:
    """The normalised content terms of ``text``, in order (stop words removed)."""
    words = (m.group() for m in _TOKEN.finditer(text))
    return [_normalise(w) for w in words if not _is_stop(w)]


def split_passages(value: str) -> list[str]:
    """Split an input value into passages.

    A JSON list (how adapters render ``list[str]`` inputs) gives one passage per item (dict items give
    their text values); DSPy's numbered ``[1] «...»`` lines give one per line; otherwise blank-line
    separated paragraphs.

    Args:
        value: The input value as the prompt shows it.
    """
    text = value.strip()
    if text.startswith(("[", "{")):
        try:
            decoded = json.loads(text)
        except json.JSONDecodeError:
            decoded = None
        if decoded is not None:
            return [p for p in _flatten_text(decoded) if p.strip()]
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and all(_NUMBERED.match(line) for line in lines):
        return [_NUMBERED.match(line).group(1) for line in lines]  # type: ignore[union-attr]
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def split_sentences(passage: str) -> list[str]:
    """Split a passage into sentences (on ., ! or ? followed by a capital or digit, and on lines)."""
    sentences: list[str] = []
    for line in passage.splitlines():
        start = 0
        for match in _SENTENCE_END.finditer(line):
            before = line[start : match.start()].rsplit(None, 1)
            word = before[-1] if before else ""
            if line[match.start()] == "." and (
                word.lower() in _ABBREVIATIONS or (len(word) == 1 and word.isupper())
            ):
                continue
            sentences.append(line[start : match.end()].strip())
            start = match.end()
        sentences.append(line[start:].strip())
    return [s for s in sentences if s]


def extract_answer(question: str | None, sources: Mapping[str, str], *, short: bool = True) -> Extraction:
    """Extract the answer to ``question`` from the ``sources`` texts.

    Args:
        question: The question text; None picks the first sentence (a lead summary).
        sources: Context texts by input field name, in prompt order.
        short: Whether to cut the best sentence down to a short answer span.
    """
    sentences = [
        Sentence(text, name, 0)
        for name, value in sources.items()
        for passage in split_passages(value)
        for text in split_sentences(passage)
    ]
    sentences = [Sentence(s.text, s.source, number) for number, s in enumerate(sentences, start=1)]
    if not sentences:
        return Extraction("unknown", None, (), 0)
    question_terms = list(dict.fromkeys(terms(question or "")))
    sentence_terms = [set(terms(s.text)) for s in sentences]
    weight = _idf(question_terms, sentence_terms)
    scored = [
        (sum(weight[t] for t in question_terms if t in words), len(words), index)
        for index, words in enumerate(sentence_terms)
    ]
    best_score, _, best_index = max(scored, key=lambda item: (item[0], -item[1], -item[2]))
    if best_score <= 0:
        best_index = 0  # nothing matches: the first sentence (a lead summary), not the shortest one
    best = sentences[best_index]
    matched = tuple(t for t in question_terms if t in sentence_terms[best_index]) if best_score > 0 else ()
    answer = _short_span(best.text, question or "") if short and question else _trim(best.text)
    return Extraction(answer or _trim(best.text), best, matched, len(sentences))


def _flatten_text(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [" ".join(t for v in value.values() for t in _flatten_text(v))]
    if isinstance(value, Sequence):
        return [t for v in value for t in _flatten_text(v)]
    return [] if value is None else [str(value)]


def _is_stop(token: str) -> bool:
    # Checked on the raw word too: folding "does" to "doe" must not turn a stop word into a term.
    lowered = token.lower().replace("\u2019", "'")
    return lowered in _STOP or _normalise(token) in _STOP


def _normalise(token: str) -> str:
    word = token.lower().replace("\u2019", "'")
    if word.endswith("'s"):
        word = word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    return word


def _idf(question_terms: Sequence[str], sentence_terms: Sequence[set[str]]) -> dict[str, float]:
    count = len(sentence_terms)
    return {
        t: math.log((count + 1) / (sum(t in words for words in sentence_terms) + 0.5)) for t in question_terms
    }


def _trim(text: str) -> str:
    return text.strip().rstrip(".;:,").strip()


def _short_span(sentence: str, question: str) -> str:
    """The run of ``sentence``'s words that answers ``question`` (see the module docstring)."""
    asked = {_normalise(m.group()) for m in _TOKEN.finditer(question)}
    kinds: list[tuple[int, int, str, str]] = []  # (start, end, raw, kind) with kind q/stop/content
    for match in _TOKEN.finditer(sentence):
        word = _normalise(match.group())
        kind = "q" if word in asked else "stop" if _is_stop(match.group()) or word in _JOINERS else "content"
        kinds.append((match.start(), match.end(), match.group(), kind))
    runs: list[list[int]] = []
    for index, (_, _, raw, kind) in enumerate(kinds):
        joiner = (
            kind == "stop"
            and raw.lower() in _JOINERS
            and runs
            and runs[-1][-1] == index - 1
            and kinds[index - 1][2][:1].isupper()
            and index + 1 < len(kinds)
            and kinds[index + 1][3] == "content"
            and kinds[index + 1][2][:1].isupper()
        )
        if kind == "content" or joiner:
            if runs and runs[-1][-1] == index - 1:
                runs[-1].append(index)
            else:
                runs.append([index])
    if not runs:
        return ""
    asked_kind = _question_kind(question)
    anchors = [i for i, item in enumerate(kinds) if item[3] == "q"]

    def rank(run: list[int]) -> tuple[int, int, int, int]:
        # Runs hold content words only, so a capital (even sentence-initial) suggests a name.
        capitalised = any(kinds[i][2][:1].isupper() for i in run)
        numeric = any(kinds[i][2][:1].isdigit() for i in run)
        fits = numeric if asked_kind == "number" else capitalised
        distance = min((min(abs(i - a) for i in run) for a in anchors), default=0)
        return (-int(fits), distance, -len(run), run[0])

    chosen = min(runs, key=rank)
    return sentence[kinds[chosen[0]][0] : kinds[chosen[-1]][1]]


def _question_kind(question: str) -> str:
    words = {m.group().lower() for m in _TOKEN.finditer(question)}
    return "number" if words & _NUMERIC else "name"
