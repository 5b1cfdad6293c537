"""Differential tests: our parser against ``dspy.Signature(text)`` itself.

The corpus comes from DSPy's documentation (the Signatures, Modules, Cheatsheet and tutorial pages)
and its test suite (tests/signatures/test_signature.py, tests/predict/*); hypothesis adds generated
signatures over the whole vocabulary. For every string both accept, field names, order, annotations
(equal *and* of the same kind: ``List[int]`` is not ``list[int]``), the untyped-field marks and the
instructions must agree, and our ``to_dspy()`` must ``equals()`` DSPy's own class.
"""

from __future__ import annotations

import keyword
import typing
import warnings

import dspy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.signatures import RESERVED_FIELD_NAMES, SignatureError, clear_signature_cache, parse_signature

CORPUS = [
    # DSPy docs: learn/programming/signatures, modules, cheatsheet, tutorials
    "question -> answer",
    "question -> answer: float",
    "sentence -> sentiment: bool",
    "document -> summary",
    "context: list[str], question: str -> answer: str",
    "question, choices: list[str] -> reasoning: str, selection: int",
    "context, question -> answer",
    "question -> answer: int",
    "text -> entities: list[str]",
    "text -> label",
    "text -> summary",
    "q -> a",
    "q->a",
    "question->answer",
    "question->answer, reasoning",
    "input -> output",
    "a -> b",
    "a, b -> c, d",
    "input_text -> output_text",
    "inputs -> outputs",
    "invoice -> qty: int, unit_price: float",
    "invoice -> shipping_dollars: float",
    "invoice: str -> qty: int, unit_price_cents: int",
    "claim, evidence -> verdict: bool",
    "claims: list[str] -> verdicts: list[bool]",
    "text -> tokens: list[str], entities: list[dict[str, str]]",
    "context: list[str], question: str -> response: str",
    "question: str -> answer: str, confidence: float",
    "question: str, context: list[str] -> answer: str, confidence: float",
    "passage -> title: str, keywords: list[str]",
    "sql_query: str, db_schema: dict[str, list[str]] -> is_valid: bool, explanation: str",
    "code: str -> language: Literal['python', 'javascript', 'rust']",
    "text -> sentiment: Literal['positive', 'negative', 'neutral']",
    "question -> answer: Optional[str]",
    "image: dspy.Image -> description: str",
    "image_1: dspy.Image, image_2: dspy.Image -> answer: str",
    "question: str, history: dspy.History -> answer: str",
    "question: str, tools: list[dspy.Tool] -> answer: str",
    # DSPy's test suite
    "input1, input2 -> output",
    "input1 -> output1",
    "input1, input2 -> output1, output2",
    "input1: int, input2: str -> output: float",
    "input_list: list[int], input_dict: dict[str, float] -> output_tuple: tuple[str, int]",
    "input_opt: Optional[str], input_union: Union[int, None] -> output_union: Union[int, str]",
    "input_any: Any -> output_any: Any",
    "input_nested: list[Union[str, int]] -> output_nested: Tuple[int, Optional[float], list[str]]",
    "input_complex: dict[str, list[Optional[Tuple[int, str]]]] -> output_complex: Union[list[str], dict[str, Any]]",
    "input1: int, input2: dict[str, int] -> output1: list[str], output2: Union[int, str]",
    "input1: str | None, input2: None | int -> output_union: int | str",
    "input: str | None -> output: int | str",
    "input: Optional[str] -> output: Union[int, str]",
    "input: str | (int | float) | None -> output: str",
    # the rest of the vocabulary
    "a: tuple[int, ...] -> b: tuple[()]",
    "a: set[int], b: frozenset[str] -> c: Set[int], d: FrozenSet[str]",
    "a: List[int], b: Dict[str, List[int]] -> c: typing.List[str]",
    "a: bytes, c: complex -> d: NoneType | int",
    "a: Literal['x', 1, True, None] -> b: Literal[0, False]",
    "a: Literal['it\\'s', \"q\"] -> b",
    "a: Any | None -> b: Literal['x'] | None",
    "   spaced   :   list [ str ] ,other->  out  :  dict [ str , int ]  ",
    "a, b, -> c,",
    "-> answer",
    "frage, kontext -> antwort",
    "名前 -> 答え",
    "match, case, type -> result",
]


def _dspy_fields(sig: type[dspy.Signature]) -> list[tuple[str, str, typing.Any, bool]]:
    return [
        (
            name,
            "input" if name in sig.input_fields else "output",
            field.annotation,
            bool((field.json_schema_extra or {}).get("IS_TYPE_UNDEFINED", False)),
        )
        for name, field in sig.fields.items()
    ]


def _ours(text: str, instructions: str | None = None) -> list[tuple[str, str, typing.Any, bool]]:
    spec = parse_signature(text, instructions)
    return [(f.name, "input", f.annotation, not f.typed) for f in spec.inputs] + [
        (f.name, "output", f.annotation, False) for f in spec.outputs
    ]


def _assert_same(text: str) -> None:
    theirs = dspy.Signature(text)
    ours = parse_signature(text)
    expected = _dspy_fields(theirs)
    got = _ours(text)
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    for (name, _, ann, untyped), (_, _, dspy_ann, dspy_untyped) in zip(got, expected, strict=True):
        assert ann == dspy_ann, name
        assert type(ann) is type(dspy_ann), name  # same kind: typing.List[int] is not list[int]
        assert repr(ann) == repr(dspy_ann), name
        assert untyped == dspy_untyped, name
    assert ours.instructions == theirs.instructions
    assert ours.to_dspy().equals(theirs)


def test_corpus_is_big_enough() -> None:
    assert len(set(CORPUS)) >= 40


@pytest.mark.parametrize("text", CORPUS)
def test_same_fields_as_dspy(text: str) -> None:
    _assert_same(text)


@pytest.mark.parametrize(
    "instructions", ["Answer the question.", "  First line\n      Second line\n          Third", ""]
)
def test_same_instructions_as_dspy(instructions: str) -> None:
    text = "context: list[str], question -> answer"
    theirs = dspy.Signature(text, instructions)
    ours = parse_signature(text, instructions)
    assert ours.instructions == theirs.instructions
    assert ours.to_dspy().equals(theirs)


def test_same_custom_types_as_dspy() -> None:
    import pydantic

    class Doc(pydantic.BaseModel):
        title: str

    for text in [
        "doc: Doc -> summary",
        "docs: list[Doc] | None -> best: Doc",
        "d: Optional[Doc] -> x: Dict[str, Doc]",
    ]:
        theirs = dspy.Signature(text, custom_types={"Doc": Doc})
        ours = parse_signature(text, custom_types={"Doc": Doc})
        assert [(f.name, f.annotation) for f in ours.fields] == [
            (n, f.annotation) for n, f in theirs.fields.items()
        ]


# DSPy accepts these but silently does something surprising; we reject them with a message.
DELIBERATE_DIFFERENCES = [
    ("a, a -> b", "duplicate field name 'a'"),  # DSPy merges the two
    ("a, b=3 -> c", "unexpected character '='"),  # DSPy ignores the default
    ("a, /, b -> c", "unexpected character '/'"),  # DSPy drops 'a'
    ("a: None -> b", "'None' alone is not a field type"),  # DSPy turns it into str
    ("a: list[int, str] -> b", "'list' takes 1 type argument, got 2"),
    ('a: list["int"] -> b', "the value 'int' is not a type"),  # DSPy resolves a forward reference
    ("a ->", "no output fields"),
    ("json -> y", "field name 'json' is reserved"),  # DSPy warns that it shadows BaseModel.json
]


@pytest.mark.parametrize(("text", "message"), DELIBERATE_DIFFERENCES)
def test_deliberate_differences(text: str, message: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dspy.Signature(text)  # DSPy accepts it...
    with pytest.raises(SignatureError, match="column") as info:  # ...we explain what is wrong
        parse_signature(text)
    assert message in str(info.value)


def test_reserved_names_cover_dspy_signature_attributes() -> None:
    public = {n for n in dir(dspy.Signature) if not n.startswith("_")}
    assert public <= RESERVED_FIELD_NAMES


# --- hypothesis: generated signatures over the whole vocabulary ------------------------------------
_NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(
    lambda n: not keyword.iskeyword(n) and n not in RESERVED_FIELD_NAMES
)
_SCALARS = st.sampled_from(["str", "int", "float", "bool", "bytes", "Any", "NoneType"])
_LITERALS = st.lists(
    st.one_of(st.integers(0, 5).map(str), st.sampled_from(["'a'", '"b"', "'c d'", "True", "None"])),
    min_size=1,
    max_size=3,
).map(lambda vals: f"Literal[{', '.join(vals)}]")


def _compound(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["list", "List", "set", "Set", "frozenset", "FrozenSet", "Optional"]).flatmap(
            lambda g: inner.map(lambda t: f"{g}[{t}]")
        ),
        st.tuples(st.sampled_from(["dict", "Dict"]), st.sampled_from(["str", "int"]), inner).map(
            lambda p: f"{p[0]}[{p[1]}, {p[2]}]"
        ),
        st.tuples(st.sampled_from(["tuple", "Tuple"]), st.lists(inner, min_size=1, max_size=3)).map(
            lambda p: f"{p[0]}[{', '.join(p[1])}]"
        ),
        inner.map(lambda t: f"tuple[{t}, ...]"),
        st.lists(inner, min_size=2, max_size=3).map(lambda ts: f"Union[{', '.join(ts)}]"),
        st.tuples(inner, inner).map(lambda p: f"{p[0]} | {p[1]}"),
        inner.map(lambda t: f"{t} | None"),
        inner.map(lambda t: f"({t})"),
    )


_TYPES = st.recursive(st.one_of(_SCALARS, _LITERALS), _compound, max_leaves=6)
_FIELD = st.tuples(_NAMES, st.one_of(st.none(), _TYPES))
_SPACE = st.sampled_from(["", " ", "  "])


@st.composite
def _signatures(draw: st.DrawFn) -> str:
    fields = draw(st.lists(_FIELD, min_size=1, max_size=5, unique_by=lambda f: f[0]))
    n_inputs = draw(st.integers(0, len(fields) - 1))

    def render(items: list[tuple[str, str | None]]) -> str:
        sep = f"{draw(_SPACE)},{draw(_SPACE)}"
        return sep.join(
            name if ann is None else f"{name}{draw(_SPACE)}:{draw(_SPACE)}{ann}" for name, ann in items
        )

    return f"{render(fields[:n_inputs])}{draw(_SPACE)}->{draw(_SPACE)}{render(fields[n_inputs:])}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_signatures())
def test_generated_signatures_match_dspy(text: str) -> None:
    clear_signature_cache()
    try:
        theirs = dspy.Signature(text)
    except (ValueError, TypeError, SyntaxError):
        # DSPy rejects it (e.g. a bare NoneType field with Optional[NoneType]); so must we.
        with pytest.raises(SignatureError):
            parse_signature(text)
        return
    ours = parse_signature(text)
    assert [(f.name, f.annotation) for f in ours.fields] == [
        (n, f.annotation) for n, f in theirs.fields.items()
    ]
    assert [repr(f.annotation) for f in ours.fields] == [repr(f.annotation) for f in theirs.fields.values()]
