"""The syntax tree of a parsed signature string, before any name is resolved to a type.

Nodes are small immutable tuples that keep the column of what they came from, so the type resolver
(`tasks.signatures.types`) can point at the exact place of a semantic error.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["ConstNode", "FieldNode", "NameNode", "SignatureNode", "SubscriptNode", "TypeNode", "UnionNode"]


class NameNode(NamedTuple):
    """A (possibly dotted) type name such as ``int`` or ``typing.List``.

    Attributes:
        name: The full dotted name.
        column: 1-based column of its first character.
    """

    name: str
    column: int


class ConstNode(NamedTuple):
    """A literal value: a string, a number, ``None``, ``True``/``False``, or ``...``.

    Attributes:
        value: The Python value.
        column: 1-based column.
    """

    value: Any
    column: int


class SubscriptNode(NamedTuple):
    """A generic applied to arguments, such as ``dict[str, int]``.

    Attributes:
        base: The generic being subscripted.
        args: Its arguments, in order (empty for ``tuple[()]``).
        column: 1-based column of the opening bracket.
    """

    base: NameNode
    args: tuple[TypeNode, ...]
    column: int


class UnionNode(NamedTuple):
    """A PEP 604 union ``left | right`` (left-associative, like Python).

    Attributes:
        left: The left operand.
        right: The right operand.
        column: 1-based column of the ``|``.
    """

    left: TypeNode
    right: TypeNode
    column: int


TypeNode = NameNode | ConstNode | SubscriptNode | UnionNode


class FieldNode(NamedTuple):
    """One field: a name and an optional type annotation.

    Attributes:
        name: The field name (NFKC-normalised, as Python normalises identifiers).
        column: 1-based column of the name.
        annotation: The type expression, or None for an untyped field.
    """

    name: str
    column: int
    annotation: TypeNode | None


class SignatureNode(NamedTuple):
    """A whole signature: input fields, ``->``, output fields.

    Attributes:
        inputs: The input fields in order.
        outputs: The output fields in order.
        arrow_column: 1-based column of the ``->``.
    """

    inputs: tuple[FieldNode, ...]
    outputs: tuple[FieldNode, ...]
    arrow_column: int
