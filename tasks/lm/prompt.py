"""Read a DSPy adapter's prompt back into fields, and write an answer in the format it asked for.

DSPy's adapters (``ChatAdapter``, ``JSONAdapter``, ``XMLAdapter``) all render the same system
preamble: ``Your input fields are:`` / ``Your output fields are:`` with one numbered line per field,
``N. `name` (type): description``, then a structure section whose typed fields carry a
``# note: the value you produce must ...`` line (a JSON schema for complex types). The last user
message holds the current inputs (earlier user/assistant pairs are few-shot demos). This module parses
that text, and only that text: it never sees the Python signature, which is the point, because the
offline LM and the loopback test server only get what a real provider would get.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "FieldSpec",
    "ParsedPrompt",
    "PromptFormat",
    "ToolSpec",
    "parse_prompt",
    "render_outputs",
]

PromptFormat = Literal["chat", "json", "xml", "plain"]

_INPUTS_HEADER = "Your input fields are:"
_OUTPUTS_HEADER = "Your output fields are:"
_STRUCTURE_HEADER = "All interactions will be structured in the following way"
_OBJECTIVE_HEADER = "In adhering to this structure, your objective is:"
_JSON_OUTPUTS_HEADER = "Outputs will be a JSON object with the following fields."
_FIELD_LINE = re.compile(r"^\d+\.\s+`(?P<name>[^`]+)`\s+\(")
_NOTE_LINE = re.compile(r"^\{(?P<name>\w+)\}\s+# note: (?P<note>.*)$", re.MULTILINE)
_SCHEMA_NOTE = "must adhere to the JSON schema: "
_TOOL_LINE = re.compile(
    r"\((?P<index>\d+)\) (?P<name>[^\s,]+), whose description is <desc>(?P<desc>.*?)</desc>\.", re.S
)
_TOOL_ARGS = "It takes arguments "
# The trailer every adapter appends to the current user message; inputs end where it starts.
_TRAILERS = (
    "Respond with the corresponding output fields",
    "Respond with a JSON object",
)


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One input or output field as the prompt describes it.

    Attributes:
        name: The field name.
        type_name: The type as the adapter printed it (``str``, ``list[str]``, ``Literal['a', 'b']``).
        description: The field's description, possibly empty.
        note: The adapter's value constraint (``must be True or False``, a JSON schema...), if any.
    """

    name: str
    type_name: str
    description: str = ""
    note: str = ""

    @property
    def schema(self) -> dict[str, Any] | None:
        """The JSON schema the adapter gave for this field, when it gave one."""
        at = self.note.find(_SCHEMA_NOTE)
        if at < 0:
            return None
        try:
            value = json.loads(self.note[at + len(_SCHEMA_NOTE) :])
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, dict) else None

    @property
    def literal_options(self) -> tuple[Any, ...] | None:
        """The allowed values of a ``Literal[...]`` field, or None for any other type."""
        if not self.type_name.startswith("Literal["):
            return None
        try:
            node = ast.parse(self.type_name, mode="eval").body
        except SyntaxError:
            return None
        if not isinstance(node, ast.Subscript):
            return None
        elements = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        options: list[Any] = []
        for element in elements:
            try:
                options.append(ast.literal_eval(element))
            except ValueError:
                return None
        return tuple(options)


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool that a ReAct prompt offers.

    Attributes:
        name: The tool name the LM must pick.
        description: The tool's description.
        args: The tool's argument schemas by name (JSON-schema-like, as ReAct prints them).
    """

    name: str
    description: str = ""
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ParsedPrompt:
    """What an adapter's prompt asks for.

    Attributes:
        format: ``chat`` (``[[ ## field ## ]]`` markers), ``json``, ``xml``, or ``plain`` (not a DSPy
            adapter prompt).
        inputs: The input fields, in prompt order.
        outputs: The output fields to produce, in the order the adapter expects them.
        values: The current input values, as text, by field name.
        instructions: The signature's instructions (the objective paragraph).
        tools: The tools a ReAct prompt offers, in prompt order.
        text: The last user message, verbatim (for plain prompts).
    """

    format: PromptFormat
    inputs: tuple[FieldSpec, ...]
    outputs: tuple[FieldSpec, ...]
    values: Mapping[str, str]
    instructions: str = ""
    tools: tuple[ToolSpec, ...] = ()
    text: str = ""


def parse_prompt(system: str | None, messages: Sequence[tuple[str, str]]) -> ParsedPrompt:
    """Parse an adapter-rendered prompt.

    Args:
        system: The system message text (None when there is none).
        messages: ``(role, text)`` pairs in conversation order; the last user message holds the inputs.

    Returns:
        The parsed prompt; ``format == "plain"`` when the text is not a DSPy adapter prompt.
    """
    system = system or ""
    user = next((text for role, text in reversed(messages) if role == "user"), "")
    if not system and _OUTPUTS_HEADER in user:
        # Some callers fold the system prompt into the first user message.
        system = user
    if _OUTPUTS_HEADER not in system:
        return ParsedPrompt(format="plain", inputs=(), outputs=(), values={}, text=user)

    inputs = _field_list(system, _INPUTS_HEADER, _OUTPUTS_HEADER)
    outputs = _field_list(system, _OUTPUTS_HEADER, _STRUCTURE_HEADER)
    fmt = _detect_format(system, user, outputs)
    notes = _notes(system, fmt)
    outputs = tuple(FieldSpec(f.name, f.type_name, f.description, notes.get(f.name, "")) for f in outputs)
    values = _input_values(user, inputs, fmt)
    objective = system.split(_OBJECTIVE_HEADER, 1)
    instructions = objective[1].strip() if len(objective) == 2 else ""
    return ParsedPrompt(
        format=fmt,
        inputs=inputs,
        outputs=outputs,
        values=values,
        instructions=instructions,
        tools=_tools(instructions),
        text=user,
    )


def render_outputs(fmt: PromptFormat, outputs: Sequence[FieldSpec], values: Mapping[str, Any]) -> str:
    """Write output values the way the adapter that asked for them parses them.

    Args:
        fmt: The prompt's format.
        outputs: The output fields, in the order the adapter expects.
        values: A JSON-able value per output field name.
    """
    if fmt == "json":
        return json.dumps({f.name: values[f.name] for f in outputs}, ensure_ascii=False)
    if fmt == "plain":
        return "\n".join(_as_text(values[f.name]) for f in outputs)
    if fmt == "xml":
        return "\n".join(f"<{f.name}>\n{_as_text(values[f.name])}\n</{f.name}>" for f in outputs)
    blocks = [f"[[ ## {f.name} ## ]]\n{_as_text(values[f.name])}" for f in outputs]
    return "\n\n".join([*blocks, "[[ ## completed ## ]]"])


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


def _field_list(system: str, start: str, end: str) -> tuple[FieldSpec, ...]:
    """The numbered field lines between two headers; descriptions may span several lines."""
    begin = system.find(start)
    if begin < 0:
        return ()
    begin += len(start)
    stop = system.find(end, begin)
    block = system[begin : stop if stop >= 0 else len(system)]
    specs: list[list[str]] = []
    for line in block.splitlines():
        match = _FIELD_LINE.match(line)
        if match:
            type_name, rest = _balanced_type(line[match.end() :])
            description = rest[1:].strip() if rest.startswith(":") else rest.strip()
            specs.append([match["name"], type_name, description])
        elif specs and line.strip():
            specs[-1][2] = f"{specs[-1][2]}\n{line.strip()}".strip()
    return tuple(FieldSpec(name, type_name, description) for name, type_name, description in specs)


def _balanced_type(text: str) -> tuple[str, str]:
    """Split ``list[str]): desc`` at the parenthesis that closes the type (types nest brackets)."""
    depth = 0
    quote = ""
    for index, char in enumerate(text):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in "]}" or (char == ")" and depth > 0):
            depth -= 1
        elif char == ")":
            return text[:index].strip(), text[index + 1 :]
    return text.strip(), ""


def _detect_format(system: str, user: str, outputs: Sequence[FieldSpec]) -> PromptFormat:
    if _JSON_OUTPUTS_HEADER in system or "Respond with a JSON object" in user:
        return "json"
    if "wrapped in XML tags" in user or (outputs and f"<{outputs[0].name}>\n{{{outputs[0].name}}}" in system):
        return "xml"
    return "chat"


def _notes(system: str, fmt: PromptFormat) -> dict[str, str]:
    """The ``# note:`` constraint of each typed output field, by field name."""
    if fmt != "json":
        return {m["name"]: m["note"].strip() for m in _NOTE_LINE.finditer(system)}
    at = system.find(_JSON_OUTPUTS_HEADER)
    start = system.find("{", at)
    try:
        structure, _ = json.JSONDecoder().raw_decode(system, start)
    except (json.JSONDecodeError, ValueError):
        return {}
    notes: dict[str, str] = {}
    if isinstance(structure, dict):
        for value in structure.values():
            match = _NOTE_LINE.match(value) if isinstance(value, str) else None
            if match:
                notes[match["name"]] = match["note"].strip()
    return notes


def _input_values(user: str, inputs: Sequence[FieldSpec], fmt: PromptFormat) -> dict[str, str]:
    """The current input values; only headers of *known* input names split the text.

    Values can themselves contain markers (ReAct's trajectory holds ``[[ ## observation_0 ## ]]``), so
    the headers are looked up in prompt order, each after the previous one.
    """
    limit = len(user)
    for trailer in _TRAILERS:
        at = user.rfind(trailer)
        if at >= 0:
            limit = min(limit, at)
    xml = fmt == "xml"
    opens = [f"<{f.name}>" if xml else f"[[ ## {f.name} ## ]]" for f in inputs]
    positions: list[tuple[str, int, int]] = []
    cursor = 0
    for spec, marker in zip(inputs, opens, strict=True):
        at = _find_header(user, marker, cursor, limit)
        if at < 0:
            continue
        positions.append((spec.name, at, at + len(marker)))
        cursor = at + len(marker)
    values: dict[str, str] = {}
    for index, (name, _, body_start) in enumerate(positions):
        body_end = positions[index + 1][1] if index + 1 < len(positions) else limit
        body = user[body_start:body_end]
        if xml:
            close = body.rfind(f"</{name}>")
            body = body[:close] if close >= 0 else body
        values[name] = body.strip()
    return values


def _find_header(text: str, marker: str, start: int, limit: int) -> int:
    """The next ``marker`` on a line of its own (adapters put headers there), or -1."""
    at = text.find(marker, start, limit)
    while at >= 0:
        line_start = at == 0 or text[at - 1] == "\n"
        end = at + len(marker)
        if line_start and (end >= len(text) or text[end] in "\r\n"):
            return at
        at = text.find(marker, end, limit)
    return -1


def _tools(instructions: str) -> tuple[ToolSpec, ...]:
    """ReAct's tool list: ``(N) name, whose description is <desc>...</desc>. It takes arguments {...}.``"""
    tools: list[ToolSpec] = []
    for match in _TOOL_LINE.finditer(instructions):
        args: dict[str, Any] = {}
        rest = instructions[match.end() :].lstrip()
        if rest.startswith(_TOOL_ARGS):
            literal = _balanced_literal(rest[len(_TOOL_ARGS) :])
            try:
                parsed = ast.literal_eval(literal) if literal else {}
            except (ValueError, SyntaxError):
                parsed = {}
            args = parsed if isinstance(parsed, dict) else {}
        tools.append(ToolSpec(name=match["name"], description=match["desc"].strip(), args=args))
    return tuple(tools)


def _balanced_literal(text: str) -> str:
    """The leading ``{...}`` of ``text`` (a Python dict literal), or "" when there is none."""
    if not text.startswith("{"):
        return ""
    depth = 0
    quote = ""
    escaped = False
    for index, char in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
            if depth == 0:
                return text[: index + 1]
    return ""
