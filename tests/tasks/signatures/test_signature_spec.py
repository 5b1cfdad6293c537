"""SignatureSpec: immutability, caching, to_dspy(), and the guarantee that nothing is imported."""

from __future__ import annotations

import builtins
import importlib
import sys
import typing

import dspy
import pydantic
import pytest
from dspy.utils.dummies import DummyLM

from tasks.signatures import (
    FieldSpec,
    SignatureError,
    SignatureSpec,
    clear_signature_cache,
    parse_signature,
)

SEED = "question: str, context: list[str] -> answer: str, confidence: float"


def test_seed_example_fields() -> None:
    spec = parse_signature(SEED)
    assert spec.input_names == ("question", "context")
    assert spec.output_names == ("answer", "confidence")
    assert [f.annotation for f in spec.fields] == [str, list[str], str, float]
    assert spec.text == SEED
    assert (
        spec.instructions
        == "Given the fields `question`, `context`, produce the fields `answer`, `confidence`."
    )
    assert spec.inputs[0] == FieldSpec("question", str)
    assert spec.inputs[0].desc is None


def test_untyped_fields_are_str_and_marked() -> None:
    spec = parse_signature("context, question: str -> answer")
    assert [(f.name, f.annotation, f.typed) for f in spec.fields] == [
        ("context", str, False),
        ("question", str, True),
        ("answer", str, False),
    ]


def test_spec_is_immutable() -> None:
    spec = parse_signature(SEED)
    with pytest.raises(AttributeError, match="immutable"):
        spec.text = "x -> y"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        spec.inputs[0].name = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError, match="immutable"):
        del spec.instructions
    assert isinstance(spec.inputs, tuple) and isinstance(spec.outputs, tuple)


def test_cache_returns_same_object_per_arguments() -> None:
    clear_signature_cache()
    first = parse_signature(SEED)
    assert parse_signature(SEED) is first
    assert parse_signature(SEED, "Answer.") is not first
    assert parse_signature(SEED, "Answer.") is parse_signature(SEED, "Answer.")
    clear_signature_cache()
    again = parse_signature(SEED)
    assert again is not first and again == first and hash(again) == hash(first)


def test_custom_types_key_the_cache() -> None:
    class A(pydantic.BaseModel):
        x: int

    class B(pydantic.BaseModel):
        y: int

    a = parse_signature("doc: Doc -> out", custom_types={"Doc": A})
    b = parse_signature("doc: Doc -> out", custom_types={"Doc": B})
    assert a.inputs[0].annotation is A and b.inputs[0].annotation is B
    assert parse_signature("doc: Doc -> out", custom_types={"Doc": A}) is a


def test_custom_types_dotted_and_overriding() -> None:
    class Outer:
        class Inner(pydantic.BaseModel):
            v: int

    spec = parse_signature(
        "a: Outer.Inner, b: models.Doc -> c", custom_types={"Outer": Outer, "models.Doc": int}
    )
    assert [f.annotation for f in spec.inputs] == [Outer.Inner, int]
    with pytest.raises(SignatureError, match="unknown type 'Outer._private'"):
        parse_signature("a: Outer._private -> c", custom_types={"Outer": Outer})


def test_dspy_types_resolve_without_custom_types() -> None:
    spec = parse_signature("image: dspy.Image, history: dspy.History -> answer")
    assert [f.annotation for f in spec.inputs] == [dspy.Image, dspy.History]


def test_to_dspy_is_cached_and_usable_by_modules() -> None:
    spec = parse_signature("question: str, k: int -> answer: str", "Answer briefly.")
    sig = spec.to_dspy()
    assert spec.to_dspy() is sig
    assert issubclass(sig, dspy.Signature)
    assert sig.instructions == "Answer briefly."
    assert list(sig.input_fields) == ["question", "k"]
    with dspy.context(lm=DummyLM([{"answer": "Paris"}])):
        assert dspy.Predict(sig)(question="Capital of France?", k=1).answer == "Paris"
        assert dspy.ChainOfThought(parse_signature("question -> answer").to_dspy()) is not None


def test_never_imports_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    imported: list[str] = []
    real_import = builtins.__import__
    real_import_module = importlib.import_module

    def spy_import(name: str, *args: typing.Any, **kwargs: typing.Any) -> typing.Any:
        if name not in sys.modules:
            imported.append(name)
        return real_import(name, *args, **kwargs)

    def spy_import_module(name: str, package: str | None = None) -> typing.Any:
        imported.append(name)
        return real_import_module(name, package)

    monkeypatch.setattr(builtins, "__import__", spy_import)
    monkeypatch.setattr(importlib, "import_module", spy_import_module)
    clear_signature_cache()
    for text in ["a: antigravity -> b", "a: this -> b", "a: os.system -> b", "a: subprocess.Popen -> b"]:
        with pytest.raises(SignatureError, match="unknown type"):
            parse_signature(text)
    parse_signature("a: list[int] | None, b: Dict[str, Any] -> c: Literal['x']")
    assert imported == []
    assert "antigravity" not in sys.modules


def test_spec_equality_and_repr() -> None:
    spec = parse_signature("a -> b")
    assert spec == SignatureSpec(
        "a -> b", (FieldSpec("a", str, typed=False),), (FieldSpec("b", str, typed=False),)
    )
    assert spec != "a -> b"
    assert repr(spec) == "SignatureSpec('a -> b')"
    assert "name='a'" in repr(spec.inputs[0])


def test_unhashable_custom_type_still_parses() -> None:
    class Meta(type):
        __hash__ = None  # type: ignore[assignment]

    class Weird(metaclass=Meta):
        pass

    spec = parse_signature("a: Weird -> b", custom_types={"Weird": Weird})
    assert spec.inputs[0].annotation is Weird
