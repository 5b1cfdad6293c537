"""Every bad signature string gets a SignatureError with the column and a one-line hint."""

from __future__ import annotations

import pytest

from tasks.signatures import SignatureError, parse_signature

# (text, message fragment, column, hint fragment)
BAD = [
    ("", "empty signature", 1, "write inputs -> outputs"),
    ("   ", "empty signature", 1, "write inputs -> outputs"),
    ("question answer", "missing ',' before 'answer'", 10, "separate fields with commas"),
    ("question", "missing '->'", 9, "separate inputs from outputs with '->'"),
    ("a -> b -> c", "more than one '->'", 8, "the first is at column 3"),
    ("a ->", "no output fields", 3, "name at least one output"),
    ("a, a -> b", "duplicate field name 'a'", 4, "already defined at column 1"),
    ("value -> value", "duplicate field name 'value'", 10, "both an input (column 1) and an output"),
    ("a -> b, b", "duplicate field name 'b'", 9, "already defined at column 6"),
    ("1abc -> b", "expected a field name, got '1'", 1, "a field is a name"),
    ("a-b -> c", "unexpected character '-'", 2, "'->' separates inputs from outputs"),
    ("class -> b", "'class' is a Python keyword", 1, "rename it, e.g. 'class_'"),
    ("None -> b", "'None' is a Python keyword", 1, "rename it"),
    ("_x -> y", "field name '_x' starts with '_'", 1, "rename it, e.g. 'x'"),
    ("instructions -> y", "field name 'instructions' is reserved", 1, "shadow dspy.Signature"),
    ("a -> model_dump", "field name 'model_dump' is reserved", 6, "rename it"),
    ("a, , b -> c", "empty field", 4, "remove the extra ','"),
    (", a -> c", "empty field", 1, "remove the extra ','"),
    ("a: list[str -> b", "unclosed '['", 8, "close it with ']' before '->'"),
    ("a: list[str", "unclosed '['", 8, "close it with ']' before the end"),
    ("a: (int -> b", "unclosed '('", 4, "close it with ')' before '->'"),
    ("a: str] -> b", "unmatched ']'", 7, "add the matching '['"),
    ("a: list[str) -> b", "mismatched ')'", 12, "the '[' at column 8 is closed with ']'"),
    ("a: list[] -> b", "empty brackets after 'list'", 9, "e.g. 'list[str]'"),
    ("a: -> b", "missing type after ':' of field 'a'", 2, "write a type such as 'str'"),
    ("a: int | -> b", "missing type after '|'", 8, "'int | None'"),
    ("a: str: int -> b", "a second ':' after field 'a'", 7, "a field has one type"),
    ("a: Foo -> b", "unknown type 'Foo'", 4, "custom_types={'Foo': Foo}"),
    ("a: Str -> b", "unknown type 'Str'", 4, "did you mean 'str'"),
    ("a: os.path -> b", "unknown type 'os.path'", 4, "custom_types="),
    ("a: typing.Foo -> b", "unknown type 'typing.Foo'", 4, "typing name"),
    ("a: dspy.Predict -> b", "unknown type 'dspy.Predict'", 4, "custom_types="),
    ("a: pathlib.Path -> b", "unknown type 'pathlib.Path'", 4, "custom_types="),
    ("a: list[int, str] -> b", "'list' takes 1 type argument, got 2", 8, "'list[str]'"),
    ("a: dict[str] -> b", "'dict' takes 2 type arguments, got 1", 8, "'dict[str, int]'"),
    ("a: Optional[int, str] -> b", "'Optional' takes 1 type argument, got 2", 12, "'Optional[str]'"),
    ("a: int[str] -> b", "'int' takes no type arguments", 7, "write plain 'int'"),
    ("a: Optional -> b", "'Optional' needs type arguments", 4, "'Optional[str]'"),
    ("a: Literal -> b", "'Literal' needs type arguments", 4, "'Literal[str]'"),
    ("a: List -> b", "bare 'List' is not a field type", 4, "or plain 'list'"),
    (
        "a: Literal[x] -> b",
        "Literal values must be strings, integers, True, False or None, got 'x'",
        12,
        "quote",
    ),
    ("a: Literal[1.5] -> b", "Literal values must be strings", 12, "quote text values"),
    ("a: Literal[-1] -> b", "unexpected character '-'", 12, "negative numbers"),
    ("a: None -> b", "'None' alone is not a field type", 4, "'Optional[X]'"),
    ("a: 'x' -> b", "the value 'x' is not a type", 4, "only allowed inside Literal"),
    ("a: list[3] -> b", "the value 3 is not a type", 9, "only allowed inside Literal"),
    (
        "a: tuple[..., int] -> b",
        "'...' is only allowed as the second of two tuple arguments",
        10,
        "'tuple[int, ...]'",
    ),
    ("a: list[...] -> b", "'...' is not a type here", 9, "tuple[X, ...]"),
    ("a: list[()] -> b", "'()' is not a type here", 9, "tuple[()]"),
    ("a = 1 -> b", "unexpected character '='", 3, "field defaults are not part of a signature"),
    ("*args -> b", "unexpected character '*'", 1, "star-arguments are not fields"),
    ("a, /, b -> c", "unexpected character '/'", 4, "positional-only markers"),
    ("a; b -> c", "unexpected character ';'", 2, "separate fields with ','"),
    ("a: Literal['x] -> b", 'unexpected character "\'"', 12, "this string is not closed"),
    ("a: Literal['\\d'] -> b", "unsupported escape '\\d'", 12, "only"),
    ("a: {str: int} -> b", "unexpected character '{'", 4, "use dict[K, V]"),
    ("a # note -> b", "unexpected character '#'", 3, "comments are not allowed"),
    ("a: typing. -> b", "expected a name after '.'", 10, "dotted name"),
    ("a: list[str]] -> b", "unmatched ']'", 13, "add the matching '['"),
    ("a: list[str int] -> b", "unexpected 'int' inside brackets", 13, "separate type arguments with ','"),
    ("-> : int", "expected a field name, got ':'", 4, "a field is a name"),
]


@pytest.mark.parametrize(("text", "message", "column", "hint"), BAD)
def test_bad_signature_message(text: str, message: str, column: int, hint: str) -> None:
    with pytest.raises(SignatureError) as info:
        parse_signature(text)
    err = info.value
    assert message in str(err)
    assert err.column == column, str(err)
    assert hint in err.hint, err.hint
    assert f"at column {column}" in str(err)
    assert "\n" not in err.hint
    assert err.text == text
    assert isinstance(err, ValueError)


def test_never_a_bare_syntax_error() -> None:
    for text in [
        "def f(): pass",
        "a: lambda: 1 -> b",
        "a: (yield) -> b",
        "a: __import__('os') -> b",
        "a -> b; import os",
    ]:
        with pytest.raises(SignatureError):
            parse_signature(text)


def test_wrong_argument_types() -> None:
    with pytest.raises(SignatureError, match="must be a string, got int"):
        parse_signature(3)  # type: ignore[arg-type]
    with pytest.raises(SignatureError, match="instructions must be a string or None, got list"):
        parse_signature("a -> b", ["x"])  # type: ignore[arg-type]
    with pytest.raises(SignatureError, match="custom_types must be a mapping"):
        parse_signature("a -> b", custom_types=[int])  # type: ignore[arg-type]
    with pytest.raises(SignatureError, match="custom type 'Fn' is .* not a type"):
        parse_signature("a: Fn -> b", custom_types={"Fn": len})
    with pytest.raises(SignatureError, match="custom type name 'not valid' is not a"):
        parse_signature("a -> b", custom_types={"not valid": int})


def test_custom_generic_misuse() -> None:
    class Plain:
        pass

    with pytest.raises(SignatureError, match="cannot apply type arguments") as info:
        parse_signature("a: Plain[int] -> b", custom_types={"Plain": Plain})
    assert info.value.column == 9
