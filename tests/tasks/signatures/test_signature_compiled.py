"""CompiledSignature: input/output validation, coercion rules, all errors at once, caching."""

from __future__ import annotations

import dspy
import pytest

from dspex.exceptions import InputValidationError
from tasks.signatures import CompiledSignature, SignatureError, compile_signature, parse_signature

TEXT = "question: str, k: int, tags: list[str], mode: Literal['a', 'b'], note: Optional[str], ctx -> answer, score: float"


def test_coercion_rules() -> None:
    compiled = compile_signature(TEXT)
    row = {
        "question": 42,
        "k": "3",
        "tags": ("x", 7),
        "mode": "a",
        "ctx": [1, {"p": 2}],
        "answer": "kept out",
    }
    assert compiled.validate_inputs(row) == {
        "question": "42",
        "k": 3,
        "tags": ["x", "7"],
        "mode": "a",
        "note": None,
        "ctx": [1, {"p": 2}],
    }
    assert list(compiled.validate_inputs(row)) == ["question", "k", "tags", "mode", "note", "ctx"]


def test_every_bad_field_is_reported_at_once() -> None:
    compiled = compile_signature(TEXT)
    with pytest.raises(InputValidationError) as info:
        compiled.validate_inputs({"k": "three", "tags": ["ok", []], "mode": "c", "ctx": None})
    err = info.value
    assert [e["field"] for e in err.errors] == ["question", "k", "tags", "mode"]
    assert err.errors[0]["message"] == "Field required"
    assert err.errors[1]["input"] == "three"
    assert "[1]: Input should be a valid string" in err.errors[2]["message"]
    assert "Input should be 'a' or 'b'" in err.errors[3]["message"]
    message = str(err)
    assert message.startswith(f"4 input fields of signature {TEXT!r} do not validate")
    assert "'k': Input should be a valid integer" in message and "(got 'three')" in message


def test_outputs_and_predictions() -> None:
    compiled = compile_signature(TEXT)
    assert compiled.validate_outputs(dspy.Prediction(answer="x", score="0.5")) == {
        "answer": "x",
        "score": 0.5,
    }
    with pytest.raises(
        InputValidationError, match="1 output field of signature .* does not validate: 'score'"
    ):
        compiled.validate_outputs({"answer": "x", "score": "high"})


def test_examples_and_non_mappings() -> None:
    compiled = compile_signature("question -> answer")
    assert compiled.validate_inputs(dspy.Example(question="q", answer="a")) == {"question": "q"}
    with pytest.raises(InputValidationError, match="must be a mapping .* got list"):
        compiled.validate_inputs(["q"])


def test_validate_rows_reports_rows() -> None:
    compiled = compile_signature("question: str, k: int -> answer")
    assert compiled.validate_rows([{"question": "a", "k": 1}, {"question": "b", "k": "2"}]) == [
        {"question": "a", "k": 1},
        {"question": "b", "k": 2},
    ]
    with pytest.raises(InputValidationError, match=r"2 row\(s\) do not fit .* \(rows 1, 2\)") as info:
        compiled.validate_rows([{"question": "a", "k": 1}, {"k": 1}, {"question": "c", "k": "x"}])
    assert [(e["row"], e["field"]) for e in info.value.errors] == [(1, "question"), (2, "k")]


def test_compiled_is_cached_and_accepts_specs() -> None:
    compiled = compile_signature(TEXT)
    assert compile_signature(TEXT) is compiled
    assert isinstance(compiled, CompiledSignature)
    assert compiled.spec is parse_signature(TEXT)
    assert compile_signature(parse_signature(TEXT)) is compiled
    with pytest.raises(SignatureError, match="pass instructions and custom_types to parse_signature"):
        compile_signature(parse_signature(TEXT), instructions="x")
    with pytest.raises(SignatureError, match="unknown type 'Nope'"):
        compile_signature("a: Nope -> b")


def test_custom_pydantic_and_arbitrary_types() -> None:
    import pydantic

    class Doc(pydantic.BaseModel):
        title: str

    class Plain:
        pass

    compiled = compile_signature("doc: Doc, obj: Plain -> out", custom_types={"Doc": Doc, "Plain": Plain})
    obj = Plain()
    assert compiled.validate_inputs({"doc": {"title": "t"}, "obj": obj}) == {
        "doc": Doc(title="t"),
        "obj": obj,
    }
    with pytest.raises(InputValidationError) as info:
        compiled.validate_inputs({"doc": {"title": 1.5j}, "obj": 3})
    assert [e["field"] for e in info.value.errors] == ["doc", "obj"]
