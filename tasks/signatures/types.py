"""The type vocabulary of signature strings, and the resolver from syntax nodes to Python types.

Only these names resolve: the builtins DSPy accepts, a fixed set of ``typing`` names (also as
``typing.X``), DSPy's own field types as ``dspy.X``, and the caller's ``custom_types``. Unlike DSPy,
which falls back to ``importlib.import_module`` for any unknown name, nothing is ever imported because
of a signature string: an unknown name is a `SignatureError`.

Types are built with the same operations DSPy applies (``base[args]``, ``typing.Union[...]``,
``typing.Optional[...]``), so the annotations are the very objects ``dspy.Signature(text)`` produces.
"""

from __future__ import annotations

import difflib
import types as _pytypes
import typing
from collections.abc import Mapping
from typing import Any

from dspex.exceptions import SignatureError
from tasks.signatures.syntax import ConstNode, NameNode, SubscriptNode, TypeNode, UnionNode

__all__ = ["BUILTIN_TYPES", "DSPY_TYPE_NAMES", "TYPING_NAMES", "is_type_like", "known_type_names", "resolve"]

NoneType = type(None)

#: Builtin names a signature may use: those DSPy resolves without an import, less ``bytearray`` (which
#: pydantic, hence DSPy, cannot build a field for).
BUILTIN_TYPES: dict[str, Any] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "list": list,
    "dict": dict,
    "tuple": tuple,
    "set": set,
    "frozenset": frozenset,
    "bytes": bytes,
    "complex": complex,
    "NoneType": NoneType,
}

#: ``typing`` names a signature may use, bare or as ``typing.<name>``.
TYPING_NAMES: dict[str, Any] = {
    "Any": typing.Any,
    "Optional": typing.Optional,
    "Union": typing.Union,
    "Literal": typing.Literal,
    "List": typing.List,  # noqa: UP006 - DSPy builds typing.List[...] for this name
    "Dict": typing.Dict,  # noqa: UP006
    "Tuple": typing.Tuple,  # noqa: UP006
    "Set": typing.Set,  # noqa: UP006
    "FrozenSet": typing.FrozenSet,  # noqa: UP006
}

#: DSPy's own field types, usable as ``dspy.<name>``; looked up on the already-installed dspy package.
DSPY_TYPE_NAMES: frozenset[str] = frozenset(
    {"Audio", "Code", "File", "History", "Image", "Reasoning", "Tool", "ToolCalls"}
)

# Generic -> (min args, max args); None means unbounded.
_ARITY: dict[Any, tuple[int, int | None]] = {
    list: (1, 1),
    set: (1, 1),
    frozenset: (1, 1),
    dict: (2, 2),
    tuple: (1, None),
    typing.List: (1, 1),  # noqa: UP006
    typing.Set: (1, 1),  # noqa: UP006
    typing.FrozenSet: (1, 1),  # noqa: UP006
    typing.Dict: (2, 2),  # noqa: UP006
    typing.Tuple: (1, None),  # noqa: UP006
    typing.Optional: (1, 1),
    typing.Union: (1, None),
    typing.Literal: (1, None),
}
_NEEDS_ARGS = {typing.Optional, typing.Union, typing.Literal}
_TYPING_GENERICS = {
    typing.List: "list",  # noqa: UP006
    typing.Dict: "dict",  # noqa: UP006
    typing.Tuple: "tuple",  # noqa: UP006
    typing.Set: "set",  # noqa: UP006
    typing.FrozenSet: "frozenset",  # noqa: UP006
}
_NOT_GENERIC = {str, int, float, bool, bytes, complex, NoneType, typing.Any}
_LITERAL_VALUE_TYPES = (str, int, bool, NoneType)
_TYPE_LIKE = (type, typing._GenericAlias, _pytypes.GenericAlias, typing._SpecialForm, _pytypes.UnionType)  # type: ignore[attr-defined]


def is_type_like(obj: Any) -> bool:
    """Whether ``obj`` is something DSPy accepts as a field annotation.

    Args:
        obj: A candidate annotation.
    """
    return isinstance(obj, _TYPE_LIKE)


def known_type_names(custom_types: Mapping[str, Any] | None = None) -> list[str]:
    """Every type name a signature may use, for error hints.

    Args:
        custom_types: The caller's extra names, if any.
    """
    names = [*BUILTIN_TYPES, *TYPING_NAMES, *(f"dspy.{n}" for n in sorted(DSPY_TYPE_NAMES))]
    return names + sorted(custom_types or ())


def resolve(node: TypeNode, custom_types: Mapping[str, Any] | None, text: str) -> Any:
    """Resolve a field's type expression to the Python annotation DSPy would build.

    Args:
        node: The field's type expression.
        custom_types: The caller's extra names (they win over the builtin vocabulary, as in DSPy).
        text: The signature text, for error messages.

    Returns:
        The annotation.

    Raises:
        SignatureError: For an unknown name, a wrong number of type arguments, a value where a type is
            expected, or any other annotation DSPy could not use.
    """
    if isinstance(node, ConstNode):
        if node.value is None:
            raise _error(
                "'None' alone is not a field type",
                node,
                text,
                "write 'Optional[X]' or 'X | None' for an optional field",
            )
        raise _const_error(node, text)
    result = _resolve(node, custom_types, text)
    if not is_type_like(result):
        raise _error(
            f"{_describe(node)} is not a type",
            node,
            text,
            "custom_types values must be classes or typing constructs",
        )
    return result


def _resolve(node: TypeNode, custom_types: Mapping[str, Any] | None, text: str) -> Any:
    if isinstance(node, NameNode):
        value = _lookup(node, custom_types, text)
        if _member(value, _NEEDS_ARGS):
            raise _error(f"{node.name!r} needs type arguments", node, text, f"write e.g. '{node.name}[str]'")
        if _member(value, _TYPING_GENERICS):
            plain = _TYPING_GENERICS[value]
            raise _error(
                f"bare {node.name!r} is not a field type",
                node,
                text,
                f"write '{node.name}[X]', or plain '{plain}'",
            )
        return value
    if isinstance(node, SubscriptNode):
        return _subscript(node, custom_types, text)
    if isinstance(node, UnionNode):
        # The same steps as DSPy's PEP 604 handling, so results are identical objects.
        left = _type_arg(node.left, custom_types, text)
        right = _type_arg(node.right, custom_types, text)
        if right is NoneType:
            return typing.Optional[left]  # noqa: UP045
        if left is NoneType:
            return typing.Optional[right]  # noqa: UP045
        return _apply(typing.Union, (left, right), node, text)
    raise _const_error(node, text)


def _member(value: Any, container: Any) -> bool:
    try:
        return value in container
    except TypeError:  # an unhashable custom type is in none of our tables
        return False


def _type_arg(node: TypeNode, custom_types: Mapping[str, Any] | None, text: str) -> Any:
    """A type in argument position: ``None`` is allowed here (``Union[int, None]``, ``list[None]``)."""
    if isinstance(node, ConstNode):
        if node.value is None:
            return None
        raise _const_error(node, text)
    return _resolve(node, custom_types, text)


def _subscript(node: SubscriptNode, custom_types: Mapping[str, Any] | None, text: str) -> Any:
    base_node = node.base
    base = _lookup(base_node, custom_types, text)
    args = node.args
    name = base_node.name
    if _member(base, _NOT_GENERIC):
        raise _error(f"{name!r} takes no type arguments", node, text, f"write plain '{name}'")
    arity = _ARITY.get(base) if _member(base, _ARITY) else None
    if arity is not None:
        low, high = arity
        if len(args) < low or (high is not None and len(args) > high):
            expected = str(low) if low == high else f"at least {low}"
            example = {1: f"{name}[str]", 2: f"{name}[str, int]"}.get(low, f"{name}[str, int]")
            raise _error(
                f"{name!r} takes {expected} type argument{'s' if low != 1 or high != 1 else ''}, got {len(args)}",
                node,
                text,
                f"write e.g. '{example}'",
            )
    if base is typing.Literal:
        values = []
        for arg in args:
            if not isinstance(arg, ConstNode) or not isinstance(arg.value, _LITERAL_VALUE_TYPES):
                raise _error(
                    f"Literal values must be strings, integers, True, False or None, got {_describe(arg)}",
                    arg,
                    text,
                    "quote text values, e.g. Literal['yes', 'no']",
                )
            values.append(arg.value)
        return _apply(base, tuple(values), node, text)
    if base is tuple or base is typing.Tuple:  # noqa: UP006
        resolved = _tuple_args(node, custom_types, text)
    else:
        resolved = tuple(_type_arg(arg, custom_types, text) for arg in args)
    if base is typing.Union:
        return _apply(typing.Union, resolved, node, text)
    if base is typing.Optional:
        return typing.Optional[resolved[0]]  # noqa: UP045
    return _apply(base, resolved, node, text)


def _tuple_args(node: SubscriptNode, custom_types: Mapping[str, Any] | None, text: str) -> tuple[Any, ...]:
    args = node.args
    name = node.base.name
    if len(args) == 1 and isinstance(args[0], ConstNode) and args[0].value == ():
        return ()
    resolved = []
    for index, arg in enumerate(args):
        if isinstance(arg, ConstNode) and arg.value is Ellipsis:
            if index != 1 or len(args) != 2:
                raise _error(
                    "'...' is only allowed as the second of two tuple arguments",
                    arg,
                    text,
                    f"write '{name}[int, ...]' for a variable-length tuple",
                )
            resolved.append(Ellipsis)
            continue
        resolved.append(_type_arg(arg, custom_types, text))
    return tuple(resolved)


def _apply(base: Any, args: tuple[Any, ...], node: Any, text: str) -> Any:
    try:
        return base[args]
    except TypeError as exc:  # e.g. a custom type that is not generic
        raise _error(f"cannot apply type arguments: {exc}", node, text, "check the type arguments") from exc


def _lookup(node: NameNode, custom_types: Mapping[str, Any] | None, text: str) -> Any:
    name = node.name
    if custom_types and name in custom_types:
        return custom_types[name]
    value = BUILTIN_TYPES.get(name)
    if value is not None:
        return value
    value = TYPING_NAMES.get(name)
    if value is not None:
        return value
    head, _, tail = name.partition(".")
    if head == "typing" and tail in TYPING_NAMES:
        return TYPING_NAMES[tail]
    if head == "dspy" and tail in DSPY_TYPE_NAMES:
        import dspy  # a fixed, already-installed dependency: never a name taken from the string

        found = getattr(dspy, tail, None)
        if found is not None:
            return found
    if custom_types and head in custom_types and tail:
        found = _attribute_path(custom_types[head], tail)
        if found is not None:
            return found
    close = difflib.get_close_matches(name, known_type_names(custom_types), n=3, cutoff=0.6)
    suggestion = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise _error(
        f"unknown type {name!r}",
        node,
        text,
        f"{suggestion}use a builtin (str, int, float, bool, list, dict, ...), a typing name (Optional, Union, "
        f"Literal, Any, List, Dict, ...), or pass custom_types={{{name!r}: {name.rpartition('.')[2]}}}",
    )


def _attribute_path(obj: Any, path: str) -> Any:
    """Walk ``A.B`` on a caller-provided type, refusing private attributes (never imports)."""
    for part in path.split("."):
        if part.startswith("_"):
            return None
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if is_type_like(obj) else None


def _describe(node: TypeNode) -> str:
    if isinstance(node, ConstNode):
        return "'...'" if node.value is Ellipsis else repr(node.value)
    if isinstance(node, NameNode):
        return repr(node.name)
    return "an expression"


def _const_error(node: ConstNode, text: str) -> SignatureError:
    if node.value is Ellipsis:
        return _error("'...' is not a type here", node, text, "use it only in 'tuple[X, ...]'")
    if node.value == ():
        return _error("'()' is not a type here", node, text, "use it only in 'tuple[()]' (the empty tuple)")
    return _error(
        f"the value {node.value!r} is not a type",
        node,
        text,
        "values are only allowed inside Literal[...], e.g. Literal['yes', 'no']",
    )


def _error(message: str, node: Any, text: str, hint: str) -> SignatureError:
    return SignatureError(message, text=text, column=node.column, hint=hint)
