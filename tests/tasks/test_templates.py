"""Sandboxed templates: rendering, strict variables, caching, and injection attempts."""

from __future__ import annotations

import dspy
import pytest

from dspex.exceptions import TemplateError, TemplateSecurityError
from tasks.templates import (
    CompiledTemplate,
    clear_template_cache,
    compile_template,
    render_example,
    render_template,
    signature_template,
)


def test_render_and_trailing_newline() -> None:
    assert render_template("Q: {{ question }}\n", {"question": "Why?"}) == "Q: Why?\n"
    assert render_template("{{ a }}-{{ b }}", {"a": 1}, b=2) == "1-2"
    assert render_template(
        "{% for p in ps %}[{{ loop.index }}] {{ p }} {% endfor %}", {"ps": ["x", "y"]}
    ) == ("[1] x [2] y ")
    assert render_template("<b>{{ x }}</b>", {"x": "<i>"}) == "<b><i></b>"  # prompts are not HTML


def test_compile_cache_and_variables() -> None:
    clear_template_cache()
    template = compile_template(
        "{{ question }} {{ context | join(', ') }} {% set n = 1 %}{{ n }} {{ range(2)|list }}"
    )
    assert (
        compile_template(
            "{{ question }} {{ context | join(', ') }} {% set n = 1 %}{{ n }} {{ range(2)|list }}"
        )
        is template
    )
    assert isinstance(template, CompiledTemplate)
    assert template.variables == {"question", "context"}
    assert "CompiledTemplate(" in repr(template)


def test_every_missing_variable_is_named() -> None:
    with pytest.raises(
        TemplateError, match=r"template variable\(s\) 'answer', 'question' undefined; given: context"
    ):
        render_template("{{ question }} {{ answer }} {{ context }}", {"context": "c"})
    with pytest.raises(TemplateError, match="undefined; given: nothing"):
        render_template("{{ x }}")
    assert render_template("{% if x is defined %}{{ x }}{% else %}none{% endif %}", {}) == "none"


def test_undefined_attribute_of_a_given_variable() -> None:
    with pytest.raises(TemplateError, match="template used an undefined value"):
        render_template("{{ row.missing }}", {"row": {}})


def test_syntax_and_render_errors() -> None:
    with pytest.raises(TemplateError, match="template syntax error at line 2: "):
        compile_template("ok\n{% for %}")
    with pytest.raises(TemplateError, match="template failed to render: ZeroDivisionError"):
        render_template("{{ 1 / 0 }}")
    with pytest.raises(TemplateError, match="a template must be a string, got int"):
        compile_template(3)  # type: ignore[arg-type]
    with pytest.raises(TemplateError, match="template variables must be a mapping, got list"):
        render_template("x", [1])  # type: ignore[arg-type]


INJECTIONS = [
    ("{{ ''.__class__.__mro__ }}", "'__mro__'"),
    ("{{ ''.__class__ }}", "'__class__'"),
    ("{{ cycler.__init__.__globals__ }}", "'__globals__'"),
    ("{{ joiner.__init__.__globals__.os }}", "'__globals__'"),
    ("{{ lipsum.__globals__['os'] }}", "'__globals__'"),
    ("{{ ().__class__.__base__.__subclasses__() }}", "'__subclasses__'"),
    ("{{ self.__init__.__globals__ }}", "'__globals__'"),
    ("{{ namespace.__init__.__globals__ }}", "'__globals__'"),
    ("{{ ''|attr('__class__') }}", "'__class__'"),
    ("{{ x['__class__'] }}", "'__class__'"),
    ("{% if false %}{{ x._secret }}{% endif %}", "'_secret'"),  # caught even in a dead branch
]


@pytest.mark.parametrize(("source", "name"), INJECTIONS)
def test_injection_is_rejected_at_compile_time(source: str, name: str) -> None:
    with pytest.raises(TemplateSecurityError, match=f"accesses {name}.*forbidden in the sandbox") as info:
        render_template(source, {"x": "s"})
    assert "template injection" in str(info.value)


DYNAMIC = [
    ("{{ x[k] }}", {"x": "s", "k": "__class__"}, "attribute '__class__' of a 'str' object"),
    ("{{ lipsum|attr(k) }}", {"k": "__globals__"}, "attribute '__globals__' of a 'function' object"),
    ("{{ '{0.__class__}'.format(x) }}", {"x": [1]}, "attribute '__class__' of a 'list' object"),
    ("{{ x.append(1) }}", {"x": [1]}, "may not modify their variables"),
    ("{{ 'x' * 10000000 }}", {}, "repetition would build 10000000 items"),
    ("{{ 2 ** 100000 }}", {}, "exponent 100000 is above the limit"),
    ("{{ range(10 ** 7) | list }}", {}, "Range too big"),
]


@pytest.mark.parametrize(("source", "variables", "message"), DYNAMIC)
def test_dynamic_escapes_are_rejected_at_render_time(source: str, variables: dict, message: str) -> None:
    with pytest.raises(TemplateSecurityError, match="sandbox|limit|repetition") as info:
        render_template(source, variables)
    assert message in str(info.value)


def test_render_example_from_dspy_example_and_mapping() -> None:
    example = dspy.Example(question="Who?", answer="Me").with_inputs("question")
    assert render_example("{{ question }} -> {{ answer }}", example) == "Who? -> Me"
    assert render_example("{{ question }}", {"question": "Q"}, question="override") == "override"
    with pytest.raises(TemplateError, match="expected a dspy.Example or a mapping, got int"):
        render_example("{{ x }}", 3)


def test_signature_template_renders_dspy_style() -> None:
    source = signature_template("question, context: list[str] -> answer")
    text = render_template(source, question="Capital of France?", context=["Paris is...", "France is..."])
    assert text == (
        "Given the fields `question`, `context`, produce the fields `answer`.\n\n"
        "Question: Capital of France?\n"
        "Context:\n[1] «Paris is...»\n[2] «France is...»\n\n"
        "Answer:"
    )
