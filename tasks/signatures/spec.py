"""`SignatureSpec`: the immutable result of parsing a signature, and `parse_signature` (cached).

A spec holds ordered input and output `FieldSpec` records whose annotations are the same objects
``dspy.Signature(text)`` builds, the effective instructions (DSPy's default when none are given), and
`SignatureSpec.to_dspy`, which builds the ``dspy.Signature`` subclass once per spec without DSPy ever
parsing (or importing anything for) the string.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from dspex.exceptions import SignatureError
from tasks.signatures.parser import parse
from tasks.signatures.types import is_type_like, resolve

if TYPE_CHECKING:
    import dspy

__all__ = ["FieldSpec", "SignatureSpec", "clear_signature_cache", "parse_signature"]

#: Distinct (text, instructions, custom types) combinations kept parsed.
_CACHE_SIZE = 1024


class FieldSpec(NamedTuple):
    """One field of a signature (an immutable, hashable record).

    Attributes:
        name: The field name.
        annotation: Its Python type (``str`` when the string gave none, as in DSPy).
        desc: A description, or None (string signatures carry none).
        typed: Whether the string gave a type; DSPy marks untyped input fields specially.
    """

    name: str
    annotation: Any
    desc: str | None = None
    typed: bool = True

    def __repr__(self) -> str:
        ann = self.annotation.__name__ if isinstance(self.annotation, type) else repr(self.annotation)
        return f"FieldSpec(name={self.name!r}, annotation={ann}, typed={self.typed})"


class SignatureSpec:
    """A parsed, validated signature. Immutable; build it with `parse_signature`.

    Attributes:
        text: The signature string as given.
        inputs: Input fields, in order.
        outputs: Output fields, in order.
        instructions: The effective instructions (DSPy's default sentence when none were given).
    """

    __slots__ = ("_dspy", "inputs", "instructions", "outputs", "text")

    text: str
    inputs: tuple[FieldSpec, ...]
    outputs: tuple[FieldSpec, ...]
    instructions: str
    _dspy: type[dspy.Signature] | None

    def __init__(
        self,
        text: str,
        inputs: tuple[FieldSpec, ...],
        outputs: tuple[FieldSpec, ...],
        instructions: str | None = None,
    ) -> None:
        if not instructions:  # DSPy also falls back to its default sentence for ""
            ins = ", ".join(f"`{f.name}`" for f in inputs)
            outs = ", ".join(f"`{f.name}`" for f in outputs)
            instructions = f"Given the fields {ins}, produce the fields {outs}."
        else:
            instructions = inspect.cleandoc(instructions)  # what dspy.Signature.instructions returns
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "outputs", outputs)
        object.__setattr__(self, "instructions", instructions)
        object.__setattr__(self, "_dspy", None)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"SignatureSpec is immutable; cannot set {key!r}")

    def __delattr__(self, key: str) -> None:
        raise AttributeError(f"SignatureSpec is immutable; cannot delete {key!r}")

    @property
    def input_names(self) -> tuple[str, ...]:
        """Input field names, in order."""
        return tuple(f.name for f in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        """Output field names, in order."""
        return tuple(f.name for f in self.outputs)

    @property
    def fields(self) -> tuple[FieldSpec, ...]:
        """All fields: inputs then outputs."""
        return self.inputs + self.outputs

    def to_dspy(self) -> type[dspy.Signature]:
        """The equivalent ``dspy.Signature`` subclass, built once and cached on this spec.

        Fields are handed to DSPy as (type, field) pairs, so DSPy never parses the string.
        """
        cached = self._dspy
        if cached is None:
            from dspy import InputField, OutputField
            from dspy.signatures.signature import make_signature
            from dspy.utils.constants import IS_TYPE_UNDEFINED

            fields: dict[str, tuple[Any, Any]] = {}
            for f in self.inputs:
                extra = {"desc": f.desc} if f.desc is not None else {}
                fields[f.name] = (f.annotation, InputField(**{IS_TYPE_UNDEFINED: not f.typed}, **extra))
            for f in self.outputs:
                extra = {"desc": f.desc} if f.desc is not None else {}
                fields[f.name] = (f.annotation, OutputField(**extra))
            cached = make_signature(fields, self.instructions)
            object.__setattr__(self, "_dspy", cached)
        return cached

    def _key(self) -> tuple[Any, ...]:
        return (self.text, self.inputs, self.outputs, self.instructions)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SignatureSpec) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"SignatureSpec({self.text!r})"


def parse_signature(
    text: str, instructions: str | None = None, custom_types: Mapping[str, Any] | None = None
) -> SignatureSpec:
    """Parse a DSPy string signature into a `SignatureSpec`. Cached by all three arguments.

    Args:
        text: A signature such as ``"question: str, context: list[str] -> answer: str"``.
        instructions: The task instructions; DSPy's default sentence when None.
        custom_types: Extra type names the string may use (``{"Doc": Doc}``); nothing else resolves and
            nothing is imported.

    Returns:
        The immutable spec (the same object for the same arguments while it stays in the cache).

    Raises:
        SignatureError: With the column and a hint, for any string DSPy would reject, and also for
            duplicate or reserved field names and unknown type names.
    """
    if custom_types is None:
        if type(text) is str and (instructions is None or type(instructions) is str):
            return _parse_cached(text, instructions, None)
        _check_args(text, instructions)
        return _parse_cached(text, instructions, None)
    _check_args(text, instructions)
    if not isinstance(custom_types, Mapping):
        raise SignatureError(
            f"custom_types must be a mapping of names to types, got {type(custom_types).__name__}"
        )
    items = tuple(sorted(custom_types.items(), key=lambda kv: str(kv[0])))
    try:
        return _parse_cached(text, instructions, items)
    except TypeError as exc:  # an unhashable custom type cannot key the cache: parse without it
        if "unhashable" not in str(exc):
            raise
        return _parse(text, instructions, items)


def clear_signature_cache() -> None:
    """Empty the parse cache (for benchmarks and tests)."""
    _parse_cached.cache_clear()


def _check_args(text: Any, instructions: Any) -> None:
    if not isinstance(text, str):
        raise SignatureError(f"a signature must be a string, got {type(text).__name__}")
    if instructions is not None and not isinstance(instructions, str):
        raise SignatureError(f"instructions must be a string or None, got {type(instructions).__name__}")


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _parse_cached(
    text: str, instructions: str | None, custom_items: tuple[tuple[str, Any], ...] | None
) -> SignatureSpec:
    return _parse(text, instructions, custom_items)


def _parse(
    text: str, instructions: str | None, custom_items: tuple[tuple[str, Any], ...] | None
) -> SignatureSpec:
    custom = _check_custom_types(custom_items) if custom_items else None
    tree = parse(text)
    inputs = tuple(
        FieldSpec(f.name, str, typed=False)
        if f.annotation is None
        else FieldSpec(f.name, resolve(f.annotation, custom, text))
        for f in tree.inputs
    )
    outputs = tuple(
        FieldSpec(f.name, str, typed=False)
        if f.annotation is None
        else FieldSpec(f.name, resolve(f.annotation, custom, text))
        for f in tree.outputs
    )
    return SignatureSpec(text, inputs, outputs, instructions)


def _check_custom_types(items: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    custom: dict[str, Any] = {}
    for name, value in items:
        if not isinstance(name, str) or not all(part.isidentifier() for part in name.split(".")):
            raise SignatureError(
                f"custom type name {name!r} is not a (dotted) identifier",
                hint="use names like 'Doc' or 'models.Doc'",
            )
        if not is_type_like(value):
            raise SignatureError(
                f"custom type {name!r} is {value!r}, not a type",
                hint="custom_types values must be classes or typing constructs",
            )
        custom[name] = value
    return custom
