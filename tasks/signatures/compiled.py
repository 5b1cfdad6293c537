"""Compiled signatures: a parsed spec plus pydantic validators for its inputs and outputs.

Coercion rules (pydantic's *lax* mode, applied per field by its annotation):

* ``int`` accepts ``3``, ``3.0`` and ``"3"``; ``float`` accepts ints and numeric strings;
  ``bool`` accepts ``True``/``False``, ``0``/``1`` and ``"true"``/``"false"``/``"yes"``/``"no"``.
* ``str`` accepts strings, and numbers (converted with ``str()``); never lists or dicts.
* ``list[X]``/``tuple``/``set`` accept lists, tuples and sets, validating each item as ``X``.
* ``Literal[...]`` accepts only the listed values; ``Optional[X]`` also accepts ``None``.
* An *untyped* field (``"context, question -> answer"``) accepts any value, as DSPy formats any value
  into the prompt; only its presence is checked.
* A field may be missing only when its annotation admits ``None``; it then validates to ``None``.
* Keys of the row that are not fields of the signature are ignored (rows often carry the answer).

Every bad or missing field is reported at once in one `InputValidationError`.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Iterable, Mapping
from typing import Any, NotRequired

from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict

from dspex.exceptions import InputValidationError, SignatureError
from tasks.signatures.spec import FieldSpec, SignatureSpec, parse_signature

__all__ = ["CompiledSignature", "clear_compiled_cache", "compile_signature"]

_CONFIG = ConfigDict(arbitrary_types_allowed=True, coerce_numbers_to_str=True, extra="ignore")
_MAX_SHOWN_INPUT = 80


def _admits_none(annotation: Any) -> bool:
    if annotation is type(None):
        return True
    return typing.get_origin(annotation) is typing.Union and type(None) in typing.get_args(annotation)


class _SideValidator:
    """Validates one side (inputs or outputs) of a signature with a single TypedDict adapter."""

    __slots__ = ("adapter", "kind", "names", "optional", "spec")

    def __init__(self, spec: SignatureSpec, fields: tuple[FieldSpec, ...], kind: str) -> None:
        self.spec = spec
        self.kind = kind
        self.names = tuple(f.name for f in fields)
        self.optional = tuple(f.name for f in fields if f.typed and _admits_none(f.annotation))
        annotations: dict[str, Any] = {}
        for f in fields:
            ann = f.annotation if f.typed else Any
            annotations[f.name] = NotRequired[ann] if f.name in self.optional else ann
        # The functional form takes any identifier as a key, with no clash with class attributes.
        row_type = with_config(_CONFIG)(TypedDict(f"{kind.title()}Row", annotations))  # type: ignore[operator]
        self.adapter: TypeAdapter[Any] = TypeAdapter(row_type)

    def validate(self, row: Any) -> dict[str, Any]:
        data = _as_mapping(row, self.kind, self.spec)
        try:
            validated = self.adapter.validate_python(data)
        except ValidationError as exc:
            raise self._error(exc) from None
        for name in self.optional:
            validated.setdefault(name, None)
        return {name: validated[name] for name in self.names}

    def _error(self, exc: ValidationError) -> InputValidationError:
        grouped: dict[str, list[str]] = {}
        inputs: dict[str, Any] = {}
        for err in exc.errors(include_url=False):
            loc = err["loc"]
            field = str(loc[0]) if loc else "<row>"
            where = "".join(f"[{part!r}]" for part in loc[1:])
            grouped.setdefault(field, []).append(f"{where}: {err['msg']}" if where else err["msg"])
            if field not in inputs:
                inputs[field] = None if err["type"] == "missing" else _get(exc, field, err)
        errors = [
            {"field": field, "message": "; ".join(messages), "input": inputs[field]}
            for field, messages in sorted(grouped.items(), key=lambda kv: _order(self.names, kv[0]))
        ]
        detail = "; ".join(f"{e['field']!r}: {e['message']}{_shown(e)}" for e in errors)
        n = len(errors)
        message = f"{n} {self.kind} field{'s' if n != 1 else ''} of signature {self.spec.text!r} {'do' if n != 1 else 'does'} not validate: {detail}"
        return InputValidationError(message, errors)


def _get(exc: ValidationError, field: str, err: Any) -> Any:
    if len(err["loc"]) == 1:
        return err["input"]
    return None  # an item-level error: the field value itself is reported through the message


def _shown(entry: dict[str, Any]) -> str:
    value = entry["input"]
    if value is None:
        return ""
    text = repr(value)
    return f" (got {text[:_MAX_SHOWN_INPUT]}{'...' if len(text) > _MAX_SHOWN_INPUT else ''})"


def _order(names: tuple[str, ...], field: str) -> int:
    return names.index(field) if field in names else len(names)


def _as_mapping(row: Any, kind: str, spec: SignatureSpec) -> Mapping[str, Any]:
    if isinstance(row, Mapping):
        return row
    to_dict = getattr(row, "toDict", None)  # dspy.Example / dspy.Prediction
    if callable(to_dict):
        result = to_dict()
        if isinstance(result, Mapping):
            return result
    raise InputValidationError(
        f"{kind} of signature {spec.text!r} must be a mapping (or a dspy.Example), got {type(row).__name__}",
        [{"field": "<row>", "message": "not a mapping", "input": None}],
    )


class CompiledSignature:
    """A `SignatureSpec` with validators for its inputs and outputs.

    Build it with `compile_signature`; see the module docstring for the coercion rules.

    Attributes:
        spec: The parsed signature.
    """

    __slots__ = ("_inputs", "_outputs", "spec")

    def __init__(self, spec: SignatureSpec) -> None:
        self.spec = spec
        self._inputs = _SideValidator(spec, spec.inputs, "input")
        self._outputs = _SideValidator(spec, spec.outputs, "output")

    def validate_inputs(self, row: Any) -> dict[str, Any]:
        """Validate and coerce one row of inputs.

        Args:
            row: A mapping (or ``dspy.Example``) holding at least the input fields; other keys are ignored.

        Returns:
            The input fields, in signature order, coerced to their annotations.

        Raises:
            InputValidationError: Listing every bad or missing field at once.
        """
        return self._inputs.validate(row)

    def validate_outputs(self, row: Any) -> dict[str, Any]:
        """Validate and coerce one row of outputs (a mapping or a ``dspy.Prediction``).

        Raises:
            InputValidationError: Listing every bad or missing output field at once.
        """
        return self._outputs.validate(row)

    def validate_rows(self, rows: Iterable[Any]) -> list[dict[str, Any]]:
        """Validate many rows of inputs, reporting every bad row (and its fields) at once.

        Args:
            rows: Row mappings or ``dspy.Example`` objects.

        Returns:
            The validated input dicts, in order.

        Raises:
            InputValidationError: Whose ``errors`` carry a ``row`` index besides field, message, input.
        """
        results: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        bad_rows: list[int] = []
        for index, row in enumerate(rows):
            try:
                results.append(self._inputs.validate(row))
            except InputValidationError as exc:
                bad_rows.append(index)
                errors.extend({"row": index, **e} for e in exc.errors)
        if errors:
            shown = ", ".join(str(i) for i in bad_rows[:10]) + (", ..." if len(bad_rows) > 10 else "")
            first = "; ".join(f"row {e['row']} {e['field']!r}: {e['message']}" for e in errors[:5])
            raise InputValidationError(
                f"{len(bad_rows)} row(s) do not fit signature {self.spec.text!r} (rows {shown}): {first}",
                errors,
            )
        return results

    def __repr__(self) -> str:
        return f"CompiledSignature({self.spec.text!r})"


def compile_signature(
    text: str | SignatureSpec, instructions: str | None = None, custom_types: Mapping[str, Any] | None = None
) -> CompiledSignature:
    """Parse (if needed) and compile a signature; cached like `parse_signature`.

    Args:
        text: A signature string, or an already parsed `SignatureSpec`.
        instructions: Task instructions (only with a string).
        custom_types: Extra type names (only with a string).

    Raises:
        SignatureError: If the string does not parse.
    """
    if isinstance(text, SignatureSpec):
        if instructions is not None or custom_types is not None:
            raise SignatureError(
                "pass instructions and custom_types to parse_signature, not with a SignatureSpec"
            )
        return _compile_spec(text)
    return _compile_spec(parse_signature(text, instructions, custom_types))


@functools.lru_cache(maxsize=256)
def _compile_spec(spec: SignatureSpec) -> CompiledSignature:
    return CompiledSignature(spec)


def clear_compiled_cache() -> None:
    """Empty the compiled-signature cache (for tests and benchmarks)."""
    _compile_spec.cache_clear()
