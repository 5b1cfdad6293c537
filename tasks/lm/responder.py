"""Decide the value of every output field a parsed prompt asks for, extractively.

Answer-like text fields get a short span of the context; long-form ones (``summary``, ``evidence``...)
the best sentence; ``reasoning`` an honest trace of what was picked and why; typed fields a valid value
(bool: whether the context supports the question; numbers: the first number of the chosen sentence;
``Literal``: the option that best overlaps it; JSON-schema types: a minimal valid instance). A ReAct
step calls the first offered tool once with the question, then ``finish``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dspex.settings import OFFLINE_LM_MODEL
from tasks.lm.extractive import Extraction, extract_answer, split_sentences, terms
from tasks.lm.prompt import FieldSpec, ParsedPrompt, ToolSpec

__all__ = ["QUESTION_FIELD_NAMES", "fill_outputs", "plain_reply"]

#: Input field names taken as "the question", best first; other inputs are the context.
QUESTION_FIELD_NAMES = (
    "question",
    "query",
    "claim",
    "problem",
    "task",
    "prompt",
    "request",
    "instruction",
    "topic",
    "input",
)
_REASONING = frozenset({"reasoning", "rationale", "thought", "thoughts", "chain_of_thought"})
_LONG_FORM = frozenset(
    {"summary", "explanation", "justification", "evidence", "passage", "sentence", "quote", "support"}
)
_REACT_OUTPUTS = frozenset({"next_thought", "next_tool_name", "next_tool_args"})
_FINISH = "finish"
_TRACE_PREFIX = f"Extractive offline LM ({OFFLINE_LM_MODEL}); no language model was called"
_CALLED_TOOL = re.compile(r"tool_name_\d+(?: ## \]\]|>)\s*(\S+)")
_OBSERVATION = re.compile(
    r"(?:\[\[ ## observation_\d+ ## \]\]|<observation_\d+>)[ \t]*\n(.*?)"
    r"(?=\n\s*\n\[\[ ## |\n</observation_\d+>|\Z)",
    re.S,
)
_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*")


@dataclass(frozen=True, slots=True)
class _Facts:
    """What every field's value is derived from, computed once per prompt."""

    question: str | None
    short: Extraction
    long: Extraction
    supported: bool


def fill_outputs(parsed: ParsedPrompt) -> dict[str, Any]:
    """A JSON-able value for every output field of ``parsed``.

    Args:
        parsed: The parsed adapter prompt (``parsed.format != "plain"``).
    """
    if {f.name for f in parsed.outputs} >= _REACT_OUTPUTS:
        return _react_step(parsed)
    facts = _facts(parsed)
    return {spec.name: _value(spec, facts) for spec in parsed.outputs}


def plain_reply(text: str) -> str:
    """The reply to a prompt that is not a DSPy adapter prompt (a direct ``lm("...")`` call)."""
    first = next(iter(split_sentences(text)), "")
    return (
        f"{_TRACE_PREFIX}. It answers DSPy adapter prompts from their own context; this prompt names no "
        f"output fields. Its first sentence is: {first}"
    )


def _question_field(parsed: ParsedPrompt) -> str | None:
    names = [f.name for f in parsed.inputs if f.name in parsed.values]
    for preferred in QUESTION_FIELD_NAMES:
        if preferred in names:
            return preferred
    return None


def _context_text(value: str) -> str:
    """A ReAct trajectory contributes its tool observations only (not the thoughts or tool calls)."""
    observations = [o.strip() for o in _OBSERVATION.findall(value)]
    observations = [o for o in observations if o and o != "Completed."]
    if observations:
        return "\n\n".join(observations)
    if _CALLED_TOOL.search(value):
        return ""  # a trajectory with no useful observation holds no context
    return value


def _facts(parsed: ParsedPrompt) -> _Facts:
    question_name = _question_field(parsed)
    question = parsed.values.get(question_name) if question_name else None
    sources = {
        name: _context_text(value)
        for name, value in parsed.values.items()
        if name != question_name and name in {f.name for f in parsed.inputs}
    }
    sources = {name: text for name, text in sources.items() if text.strip()}
    short = extract_answer(question, sources, short=True)
    long = extract_answer(question, sources, short=False)
    wanted = set(terms(question or ""))
    supported = (
        short.sentence is not None and bool(wanted) and len(short.matched) >= math.ceil(len(wanted) / 2)
    )
    return _Facts(question, short, long, supported)


def _trace(facts: _Facts) -> str:
    extraction = facts.short
    if extraction.sentence is None:
        return f"{_TRACE_PREFIX}: {extraction.explanation}."
    return (
        f"{_TRACE_PREFIX}: {extraction.explanation}; the answer is the part of that sentence the "
        "question does not already say."
    )


def _value(spec: FieldSpec, facts: _Facts) -> Any:
    options = spec.literal_options
    if options is not None:
        return _choose_option(options, facts)
    kind = spec.type_name.strip()
    if kind == "str":
        if spec.name in _REASONING:
            return _trace(facts)
        return facts.long.answer if spec.name in _LONG_FORM else facts.short.answer
    if kind == "bool":
        return facts.supported
    if kind in ("int", "float"):
        return _number(facts, as_int=kind == "int")
    schema = spec.schema
    if schema is not None:
        return _from_schema(schema, facts, schema.get("$defs", {}), depth=0)
    if kind.startswith(("list[", "tuple[", "set[")):
        return [facts.short.answer]
    return facts.short.answer


def _number(facts: _Facts, *, as_int: bool) -> int | float:
    for text in (facts.short.answer, facts.long.answer):
        match = _NUMBER.search(text)
        if match:
            raw = match.group().replace(",", "")
            try:
                number = float(raw)
            except ValueError:
                continue
            return int(number) if as_int else number
    return 0 if as_int else 0.0


def _choose_option(options: tuple[Any, ...], facts: _Facts) -> Any:
    if not options:
        return facts.short.answer
    evidence = set(terms(facts.long.answer))
    return max(options, key=lambda option: (len(set(terms(str(option))) & evidence), -options.index(option)))


def _from_schema(schema: Mapping[str, Any], facts: _Facts, defs: Mapping[str, Any], depth: int) -> Any:
    """A minimal instance of a JSON schema, filled from the extraction where text or numbers go."""
    if depth > 8:
        return None
    if "$ref" in schema:
        target = defs.get(str(schema["$ref"]).rsplit("/", 1)[-1], {})
        return _from_schema(target, facts, defs, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        choices = [s for s in schema.get(key, ()) if isinstance(s, Mapping)]
        if choices:
            non_null = [s for s in choices if s.get("type") != "null"] or choices
            return _from_schema(non_null[0], facts, defs, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "string":
        return facts.short.answer
    if kind == "integer":
        return _number(facts, as_int=True)
    if kind == "number":
        return _number(facts, as_int=False)
    if kind == "boolean":
        return facts.supported
    if kind == "null":
        return None
    if kind == "array":
        items = schema.get("items")
        return [
            _from_schema(items, facts, defs, depth + 1) if isinstance(items, Mapping) else facts.short.answer
        ]
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        return {name: _from_schema(sub, facts, defs, depth + 1) for name, sub in properties.items()}
    return facts.short.answer


def _react_step(parsed: ParsedPrompt) -> dict[str, Any]:
    """One ReAct turn: call the first offered tool once with the question, then finish."""
    by_name = {f.name: f for f in parsed.outputs}
    options = by_name["next_tool_name"].literal_options or (*(t.name for t in parsed.tools), _FINISH)
    names = [str(o) for o in options]
    finish = _FINISH if _FINISH in names else names[-1]
    tools = [n for n in names if n != finish]
    trajectory = parsed.values.get("trajectory", "")
    called = _CALLED_TOOL.findall(trajectory)
    question_name = _question_field(parsed)
    question = parsed.values.get(question_name) if question_name else None
    if question is None:
        question = next((v for k, v in parsed.values.items() if k != "trajectory"), "")
    if tools and not called:
        tool = tools[0]
        spec = next((t for t in parsed.tools if t.name == tool), ToolSpec(tool))
        facts = _Facts(question, Extraction(question, None, (), 0), Extraction(question, None, (), 0), False)
        args = {
            name: _from_schema(sub if isinstance(sub, Mapping) else {}, facts, {}, 0)
            for name, sub in spec.args.items()
        }
        thought = f"{_TRACE_PREFIX}: calling `{tool}` once with the question, then finishing."
        return {"next_thought": thought, "next_tool_name": tool, "next_tool_args": args}
    why = "the trajectory holds the tool's observation" if called else "no tool is offered"
    thought = f"{_TRACE_PREFIX}: {why}, so finishing."
    return {"next_thought": thought, "next_tool_name": finish, "next_tool_args": {}}
