"""Prompt and instruction templates rendered in Jinja2's sandbox.

Templates are compiled once (`compile_template` is cached by source) in an
`ImmutableSandboxedEnvironment` with `StrictUndefined`: a missing variable is an error naming every
missing variable, never an empty string. Attribute walks that leave the sandbox (``__class__``,
``__globals__``, ``__subclasses__``, ``cycler.__init__.__globals__``, ...) raise
`TemplateSecurityError` — at compile time when the name is written in the template, at render time when
it is reached dynamically. Repetition (``'x' * n``, ``**``) and ``range`` are bounded, so a template
cannot exhaust memory. Autoescaping is off: prompts are text, not HTML.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from dspex.exceptions import TemplateError, TemplateSecurityError

__all__ = [
    "MAX_REPEAT_LENGTH",
    "CompiledTemplate",
    "clear_template_cache",
    "compile_template",
    "render_example",
    "render_template",
    "signature_template",
]

#: Longest string or list that ``*`` may build inside a template.
MAX_REPEAT_LENGTH = 1_000_000
_MAX_EXPONENT = 1_000


def _forbidden(name: str) -> bool:
    # Every sandbox escape walks through a private or dunder attribute; public names are checked again
    # at render time by the sandbox itself (unsafe callables, mutating methods).
    return name.startswith("_")


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox, turned from "return an undefined" into "raise a clear error"."""

    intercepted_binops = frozenset({"*", "**"})

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        why = (
            "possible template injection"
            if _forbidden(attribute)
            else "templates may not modify their variables"
        )
        raise TemplateSecurityError(
            f"template tried to access attribute {attribute!r} of a {type(obj).__name__!r} object; "
            f"the sandbox forbids it ({why})"
        )

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(times, int)
                    and len(seq) * times > MAX_REPEAT_LENGTH
                ):
                    raise TemplateSecurityError(
                        f"template repetition would build {len(seq) * times} items; the limit is {MAX_REPEAT_LENGTH}"
                    )
        elif operator == "**" and isinstance(right, int | float) and abs(right) > _MAX_EXPONENT:
            raise TemplateSecurityError(f"template exponent {right!r} is above the limit {_MAX_EXPONENT}")
        return super().call_binop(context, operator, left, right)


@functools.cache
def _environment() -> _Environment:
    return _Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


class CompiledTemplate:
    """A compiled, sandboxed template.

    Attributes:
        source: The template text.
        variables: Names the template reads from its variables (excluding Jinja's own globals).
    """

    __slots__ = ("_template", "source", "variables")

    def __init__(self, source: str) -> None:
        env = _environment()
        try:
            tree = env.parse(source)
        except TemplateSyntaxError as exc:
            raise TemplateError(f"template syntax error at line {exc.lineno}: {exc.message}") from None
        _check_tree(tree)
        self.source = source
        self.variables = frozenset(meta.find_undeclared_variables(tree) - set(env.globals))
        self._template = env.from_string(tree)

    def render(self, variables: Mapping[str, Any] | None = None, /, **extra: Any) -> str:
        """Render with the given variables.

        Args:
            variables: Values for the template's variables.
            **extra: More values (win over ``variables``).

        Raises:
            TemplateError: Naming every missing variable, or the error raised while rendering.
            TemplateSecurityError: On an attempt to leave the sandbox.
        """
        if variables is not None and not isinstance(variables, Mapping):
            raise TemplateError(f"template variables must be a mapping, got {type(variables).__name__}")
        values = {**(variables or {}), **extra}
        try:
            return self._template.render(values)
        except TemplateSecurityError:
            raise
        except SecurityError as exc:
            raise TemplateSecurityError(f"template blocked by the sandbox: {exc}") from None
        except UndefinedError as exc:
            missing = sorted(self.variables - values.keys())
            if missing:
                raise TemplateError(
                    f"template variable(s) {', '.join(repr(m) for m in missing)} undefined; "
                    f"given: {', '.join(sorted(values)) or 'nothing'}"
                ) from None
            raise TemplateError(f"template used an undefined value: {exc.message}") from None
        except OverflowError as exc:  # the sandbox's range() limit
            raise TemplateSecurityError(f"template blocked by the sandbox: {exc}") from None
        except Exception as exc:  # anything else the template's own expressions raised
            raise TemplateError(f"template failed to render: {type(exc).__name__}: {exc}") from exc

    def __repr__(self) -> str:
        preview = self.source if len(self.source) <= 40 else self.source[:37] + "..."
        return f"CompiledTemplate({preview!r})"


def _check_tree(tree: nodes.Template) -> None:
    """Reject private/dunder attribute names written in the template, wherever they are."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        name: Any = None
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value
        elif (
            isinstance(node, nodes.Filter)
            and node.name == "attr"
            and node.args
            and isinstance(node.args[0], nodes.Const)
        ):
            name = node.args[0].value
        if isinstance(name, str) and _forbidden(name):
            raise TemplateSecurityError(
                f"template line {node.lineno} accesses {name!r}; private and dunder attributes are forbidden "
                "in the sandbox (possible template injection)"
            )


@functools.lru_cache(maxsize=512)
def _compile_cached(source: str) -> CompiledTemplate:
    return CompiledTemplate(source)


def compile_template(source: str) -> CompiledTemplate:
    """Compile a template (cached by source).

    Args:
        source: Jinja2 template text, e.g. ``"Question: {{ question }}"``.

    Raises:
        TemplateError: On a syntax error (with the line).
        TemplateSecurityError: If the template names a private or dunder attribute.
    """
    if not isinstance(source, str):
        raise TemplateError(f"a template must be a string, got {type(source).__name__}")
    return _compile_cached(source)


def clear_template_cache() -> None:
    """Empty the compiled-template cache."""
    _compile_cached.cache_clear()


def render_template(source: str, variables: Mapping[str, Any] | None = None, /, **extra: Any) -> str:
    """Compile (cached) and render a template.

    Args:
        source: The template text.
        variables: Values for its variables.
        **extra: More values (win over ``variables``).

    Raises:
        TemplateError: On a syntax error, a missing variable or a render failure.
        TemplateSecurityError: On an attempt to leave the sandbox.
    """
    return compile_template(source).render(variables, **extra)


def render_example(source: str, example: Any, /, **extra: Any) -> str:
    """Render a template over the fields of a ``dspy.Example`` (or ``Prediction``, or a mapping).

    Args:
        source: The template text; it reads the example's fields by name (``{{ question }}``).
        example: A ``dspy.Example``/``dspy.Prediction`` or a mapping.
        **extra: More values (win over the example's fields).

    Raises:
        TemplateError: If ``example`` is neither, or as `render_template`.
    """
    if isinstance(example, Mapping):
        fields = example
    else:
        to_dict = getattr(example, "toDict", None)
        if not callable(to_dict):
            raise TemplateError(f"expected a dspy.Example or a mapping, got {type(example).__name__}")
        fields = to_dict()
    return render_template(source, fields, **extra)


def signature_template(signature: Any) -> str:
    """A DSPy-style prompt template for a signature's inputs: its instructions, then one
    ``Prefix: {{ field }}`` line per input (list fields as numbered ``[i] «item»`` lines, as DSPy formats
    them), ending with the first output's prefix.

    Args:
        signature: A signature string or a `tasks.signatures.SignatureSpec`.
    """
    from tasks.signatures import SignatureSpec, parse_signature

    spec = signature if isinstance(signature, SignatureSpec) else parse_signature(signature)
    lines = [spec.instructions.replace("{", "{{ '{' }}"), ""]
    for field in spec.inputs:
        prefix = _prefix(field.name)
        origin = getattr(field.annotation, "__origin__", None)
        if field.annotation is list or origin is list:
            lines.append(f"{prefix}:")
            lines.append(
                f"{{% for item in {field.name} %}}[{{{{ loop.index }}}}] «{{{{ item }}}}»\n{{% endfor %}}"
            )
        else:
            lines.append(f"{prefix}: {{{{ {field.name} }}}}")
    lines.append(f"{_prefix(spec.outputs[0].name)}:")
    return "\n".join(lines)


def _prefix(name: str) -> str:
    from dspy.signatures.signature import infer_prefix

    return str(infer_prefix(name))
