"""Parsing adapter prompts back into fields (tasks/lm/prompt.py)."""

from __future__ import annotations

from tasks.lm.prompt import FieldSpec, parse_prompt, render_outputs

SYSTEM = """Your input fields are:
1. `context` (list[str]): Facts,
which may help.
2. `question` (str):
Your output fields are:
1. `answer` (Literal['a (x)', 'b']): pick one
2. `score` (dict[str, int]):
All interactions will be structured in the following way, with the appropriate values filled in.

[[ ## answer ## ]]
{answer}        # note: the value you produce must exactly match (no extra characters) one of: a (x); b

[[ ## score ## ]]
{score}        # note: the value you produce must adhere to the JSON schema: {"type": "object"}

[[ ## completed ## ]]
In adhering to this structure, your objective is:
        Answer.
        (1) search, whose description is <desc>Find {things}.</desc>. It takes arguments {'q': {'type': 'string'}, 'k': {'type': 'integer'}}.
        (2) finish, whose description is <desc>Done.</desc>. It takes arguments {}."""

USER = """[[ ## context ## ]]
["x [[ ## question ## ]] y"]

[[ ## question ## ]]
Why?

Respond with the corresponding output fields, starting with the field `[[ ## answer ## ]]`."""


def test_fields_types_notes_and_multiline_descriptions() -> None:
    parsed = parse_prompt(SYSTEM, [("user", "old demo"), ("assistant", "x"), ("user", USER)])
    assert parsed.format == "chat"
    assert [(f.name, f.type_name) for f in parsed.inputs] == [("context", "list[str]"), ("question", "str")]
    assert parsed.inputs[0].description == "Facts,\nwhich may help."
    answer, score = parsed.outputs
    assert answer.literal_options == ("a (x)", "b")
    assert answer.description == "pick one"
    assert score.schema == {"type": "object"}
    assert parsed.instructions.startswith("Answer.")


def test_input_values_are_split_only_on_known_headers_in_order() -> None:
    parsed = parse_prompt(SYSTEM, [("user", USER)])
    assert parsed.values == {"context": '["x [[ ## question ## ]] y"]', "question": "Why?"}


def test_react_tools_are_read_with_their_argument_schemas() -> None:
    parsed = parse_prompt(SYSTEM, [("user", USER)])
    assert [t.name for t in parsed.tools] == ["search", "finish"]
    assert parsed.tools[0].args == {"q": {"type": "string"}, "k": {"type": "integer"}}
    assert parsed.tools[0].description == "Find {things}."


def test_not_an_adapter_prompt_is_plain() -> None:
    parsed = parse_prompt(None, [("user", "hi")])
    assert parsed.format == "plain" and parsed.text == "hi" and parsed.outputs == ()


def test_render_each_format() -> None:
    outputs = [FieldSpec("answer", "str"), FieldSpec("ok", "bool"), FieldSpec("items", "list[str]")]
    values = {"answer": "Paris", "ok": True, "items": ["a"]}
    assert render_outputs("chat", outputs, values) == (
        '[[ ## answer ## ]]\nParis\n\n[[ ## ok ## ]]\nTrue\n\n[[ ## items ## ]]\n["a"]\n\n[[ ## completed ## ]]'
    )
    assert render_outputs("json", outputs, values) == '{"answer": "Paris", "ok": true, "items": ["a"]}'
    assert render_outputs("xml", outputs, values).startswith("<answer>\nParis\n</answer>\n<ok>\nTrue\n</ok>")
