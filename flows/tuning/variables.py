"""Pipeline variables: named knobs (``k``, ``temperature``, ``reasoner``) that steps reference as ``${name}``.

A spec declares its variables next to its steps::

    variables:
      k: {int: [1, 10], default: 3}
      temperature: {float: [0, 1], default: 0.7}
      reasoner: {choice: [dspy.Predict, dspy.ChainOfThought], default: dspy.ChainOfThought}
    steps:
      - {retrieve: question, k: "${k}"}
      - {module: "${reasoner}", signature: "context, question -> answer",
         options: {temperature: "${temperature}"}}

Any string in a step may hold a reference: a whole-string reference (``"${k}"``) becomes the value
with its type (an ``int`` for an ``int`` variable), a reference inside longer text is interpolated
(``"Answer in ${n} words"``), and ``$${`` writes a literal ``${``. One variable may appear in many
steps (the same ``k`` in two retrieve steps); that is how it coordinates them. References are
interpreted only in a spec that declares variables; in any other spec ``${`` is plain text.

Resolution (`flows.engine.spec.resolve_spec`) turns a spec and a choice of values into a concrete spec *before* any
execution; every value is checked against its variable's range or choices, and the concrete spec
goes through the ordinary validation (so a ``choice`` of modules still passes the registry's
allowlist: nothing outside the registry is ever imported). Errors are `VariableError`, naming the
variable and the step. Defaults make a spec with variables runnable as it is: `PipelineSpec` keeps
the referencing steps as a template and validates itself with the defaults substituted.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dspex.exceptions import VariableError

__all__ = [
    "Variable",
    "VariableValue",
    "allow_reference",
    "check_module_choices",
    "check_variable_names",
    "default_values",
    "has_references",
    "references",
    "substitute",
    "validate_values",
]

VariableValue = str | int | float | bool
_REF = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _choice_value(value: Any) -> Any:
    """A class given as a choice (``dspy.Predict`` from Python) becomes its registry name."""
    if not isinstance(value, type):
        return value
    import dspy

    name: str = value.__name__
    if getattr(dspy, name, None) is value:
        return f"dspy.{name}"
    return f"{value.__module__}:{value.__qualname__}"


class Variable(BaseModel):
    """One variable: an integer range, a float range, or a list of choices, and its default.

    Exactly one of ``int``, ``float`` and ``choice`` is given. The default, when omitted, is the low
    end of a range or the first choice.

    Example:
        >>> Variable.model_validate({"int": [1, 10], "default": 3}).default
        3
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, serialize_by_alias=True)

    int_range: tuple[int, int] | None = Field(
        default=None, alias="int", description="Inclusive integer range [low, high]."
    )
    float_range: tuple[float, float] | None = Field(
        default=None, alias="float", description="Inclusive float range [low, high]."
    )
    choice: list[VariableValue] | None = Field(
        default=None,
        description="The allowed values (module names, strings, numbers); a module choice must be "
        "a registry name.",
    )
    default: VariableValue | None = Field(
        default=None, description="The value used when none is chosen (default: low end / first choice)."
    )
    log: bool = Field(default=False, description="Search a range on a log scale (tune).")
    description: str | None = Field(default=None, description="What the variable controls.")

    @field_validator("choice", mode="before")
    @classmethod
    def _classes_to_names(cls, value: Any) -> Any:
        return [_choice_value(v) for v in value] if isinstance(value, list | tuple) else value

    @field_validator("default", mode="before")
    @classmethod
    def _class_default(cls, value: Any) -> Any:
        return _choice_value(value)

    @model_validator(mode="after")
    def _one_kind(self) -> Variable:
        given = [k for k in ("int", "float", "choice") if self.bounds_of(k) is not None]
        if len(given) != 1:
            raise ValueError(f"a variable needs exactly one of int, float or choice (got {given or 'none'})")
        kind = given[0]
        if kind == "choice":
            if not self.choice:
                raise ValueError("choice needs at least one value")
            if len({repr(v) for v in self.choice}) != len(self.choice):
                raise ValueError(f"choice has duplicate values: {self.choice}")
        else:
            low, high = self.bounds_of(kind)
            if low > high:
                raise ValueError(f"{kind} range [{low}, {high}] has low > high")
            if self.log and low <= 0:
                raise ValueError(f"a log-scale range needs low > 0, got {low}")
        if self.default is not None:
            object.__setattr__(self, "default", self.check(self.default))
        return self

    def bounds_of(self, kind: str) -> Any:
        """The range or choices of ``kind`` (``int``, ``float``, ``choice``), or None."""
        return {"int": self.int_range, "float": self.float_range, "choice": self.choice}[kind]

    @property
    def kind(self) -> str:
        """``int``, ``float`` or ``choice``."""
        return "int" if self.int_range is not None else "float" if self.float_range is not None else "choice"

    def default_value(self) -> VariableValue:
        """The default, or the low end of the range, or the first choice."""
        if self.default is not None:
            return self.default
        if self.int_range is not None:
            return self.int_range[0]
        if self.float_range is not None:
            return self.float_range[0]
        assert self.choice
        return self.choice[0]

    def check(self, value: Any) -> VariableValue:
        """``value`` coerced to this variable's type.

        Raises:
            ValueError: The value is out of range, not one of the choices, or of the wrong type.
        """
        value = _choice_value(value)
        if self.choice is not None:
            for option in self.choice:
                if option == value and type(option) is type(value):
                    return option
            raise ValueError(f"{value!r} is not one of the choices {self.choice}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{value!r} is not a number")
        number: int | float
        low: int | float
        high: int | float
        if self.int_range is not None:
            if value != int(value):
                raise ValueError(f"{value!r} is not an integer")
            number, (low, high) = int(value), self.int_range
        else:
            assert self.float_range is not None
            number, (low, high) = float(value), self.float_range
        if not low <= number <= high:
            raise ValueError(f"{value!r} is outside [{low}, {high}]")
        return number


# --- references ---------------------------------------------------------------------------------


def allow_reference(schema: dict[str, Any]) -> None:
    """JSON-schema hook for a non-string step field: it also accepts a ``${name}`` reference.

    The Prefect UI form and a deployment's parameter check then accept a spec with variables; the
    spec itself substitutes the values before the field is validated.
    """
    kept: dict[str, Any] = {k: schema.pop(k) for k in ("title", "description", "default") if k in schema}
    original = dict(schema)
    schema.clear()
    schema.update(kept)
    schema["anyOf"] = [original, {"type": "string", "pattern": r"^\$\{\s*[A-Za-z_][A-Za-z0-9_]*\s*\}$"}]


def _walk_strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk_strings(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _walk_strings(item, f"{path}[{i}]")


def _step_label(step: Any, path: str) -> str:
    name = step.get("name") if isinstance(step, Mapping) else None
    return str(name) if isinstance(name, str) else path


def _step_strings(steps: list[Any], prefix: str = "steps") -> Iterator[tuple[str, str, str]]:
    """(step label, field path, text) for every string in the steps; nested steps are labelled
    by their own name or path."""
    for i, step in enumerate(steps):
        path = f"{prefix}[{i}]"
        label = _step_label(step, path)
        if not isinstance(step, Mapping):
            continue
        for key, value in step.items():
            nested = _nested_steps(key, value)
            if nested is not None:
                for sub_prefix, sub_steps in nested:
                    yield from _step_strings(sub_steps, f"{path}.{sub_prefix}")
                continue
            for field_path, text in _walk_strings(value, key):
                yield label, field_path, text


def _nested_steps(key: str, value: Any) -> list[tuple[str, list[Any]]] | None:
    if key == "parallel" and isinstance(value, Mapping):
        return [(f"parallel.{b}", s) for b, s in value.items() if isinstance(s, list)]
    if key in ("then", "otherwise", "steps") and isinstance(value, list):
        return [(key, value)]
    if key == "select" and isinstance(value, Mapping) and isinstance(value.get("candidates"), list):
        return [("select.candidates", value["candidates"])]
    return None


def references(steps: list[Any]) -> dict[str, list[str]]:
    """Variable name -> labels of the steps that reference it (raw, unvalidated steps)."""
    found: dict[str, list[str]] = {}
    for label, _path, text in _step_strings(steps):
        for match in _REF.finditer(text):
            if match.group(1) is not None:
                labels = found.setdefault(match.group(1).strip(), [])
                if label not in labels:
                    labels.append(label)
    return found


def has_references(steps: Any) -> bool:
    """Whether any string in ``steps`` holds a ``${...}`` reference."""
    return isinstance(steps, list) and bool(references(steps))


def substitute(steps: list[Any], values: Mapping[str, VariableValue]) -> list[Any]:
    """A deep copy of raw ``steps`` with every reference replaced by its value.

    Raises:
        VariableError: A reference to a name that is not a variable (names the step).
    """

    def replace(text: str, label: str) -> Any:
        whole = _REF.fullmatch(text)
        if whole is not None and whole.group(1) is not None:
            return values[_known(whole.group(1).strip(), label)]

        def one(match: re.Match[str]) -> str:
            if match.group(1) is None:
                return "${"
            return str(values[_known(match.group(1).strip(), label)])

        return _REF.sub(one, text)

    def _known(name: str, label: str) -> str:
        if name not in values:
            known = ", ".join(sorted(values)) or "none declared"
            raise VariableError(
                f"references undefined variable {name!r} (variables: {known})", variable=name, step=label
            )
        return name

    def walk(value: Any, label: str) -> Any:
        if isinstance(value, str):
            return replace(value, label) if "${" in value or "$${" in value else value
        if isinstance(value, Mapping):
            return {k: walk(v, label) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v, label) for v in value]
        return copy.deepcopy(value)

    def walk_steps(raw: list[Any], prefix: str) -> list[Any]:
        out = []
        for i, step in enumerate(raw):
            path = f"{prefix}[{i}]"
            if not isinstance(step, Mapping):
                out.append(step)
                continue
            label = _step_label(step, path)
            new: dict[str, Any] = {}
            for key, value in step.items():
                nested = _nested_steps(key, value)
                if nested is None:
                    new[key] = walk(value, label)
                elif key == "parallel":
                    new[key] = {b: walk_steps(s, f"{path}.parallel.{b}") for b, s in value.items()}
                elif key == "select":
                    new[key] = {
                        **{k: walk(v, label) for k, v in value.items() if k != "candidates"},
                        "candidates": walk_steps(value["candidates"], f"{path}.select.candidates"),
                    }
                else:
                    new[key] = walk_steps(value, f"{path}.{key}")
            out.append(new)
        return out

    return walk_steps(steps, "steps")


# --- values -------------------------------------------------------------------------------------


def default_values(variables: Mapping[str, Variable]) -> dict[str, VariableValue]:
    """Every variable's default value."""
    return {name: var.default_value() for name, var in variables.items()}


def validate_values(
    variables: Mapping[str, Variable], values: Mapping[str, Any] | None, used_by: Mapping[str, list[str]]
) -> dict[str, VariableValue]:
    """The defaults overridden by ``values``, each checked against its variable.

    Raises:
        VariableError: An unknown variable name, or a value out of range / not a choice.
    """
    merged = default_values(variables)
    for name, value in (values or {}).items():
        if name not in variables:
            raise VariableError(
                f"no variable {name!r} (variables: {', '.join(sorted(variables)) or 'none'})", variable=name
            )
        try:
            merged[name] = variables[name].check(value)
        except ValueError as exc:
            raise VariableError(str(exc), variable=name, step=_steps_text(used_by.get(name))) from None
    return merged


def _steps_text(labels: list[str] | None) -> str | None:
    return ", ".join(labels) if labels else None


def check_module_choices(variables: Mapping[str, Variable], steps: list[Any]) -> None:
    """Every choice of a variable used as a step's ``module`` must be a registry module.

    Checked for all choices (not only the default) when the spec is built, so a tune never meets
    a module outside the registry's allowlist halfway through.

    Raises:
        VariableError: A choice the registry does not know, or an optimizer (names variable and step).
    """
    import registry
    from dspex.exceptions import UnknownModuleError

    for label, path, text in _step_strings(steps):
        if path != "module":
            continue
        whole = _REF.fullmatch(text)
        if whole is None or whole.group(1) is None:
            continue
        name = whole.group(1).strip()
        var = variables.get(name)
        if var is None:
            continue
        if var.choice is None:
            raise VariableError("a module reference needs a choice variable", variable=name, step=label)
        for value in var.choice:
            try:
                info = registry.get_module(str(value))
            except UnknownModuleError as exc:
                raise VariableError(f"module choice {value!r}: {exc}", variable=name, step=label) from None
            if info.category == "optimization":
                raise VariableError(
                    f"module choice {value!r} is an optimizer, not a step module", variable=name, step=label
                )


def check_variable_names(variables: Mapping[str, Variable], steps: list[Any]) -> None:
    """Names are identifiers, every reference names a variable, and every variable is used.

    Raises:
        VariableError: Naming the variable (and the step, for an undefined reference).
    """
    for name in variables:
        if not _NAME.match(name):
            raise VariableError(f"variable name {name!r} must be an identifier", variable=name)
    used_by = references(steps)
    for name, labels in used_by.items():
        if name not in variables:
            known = ", ".join(sorted(variables)) or "none declared"
            raise VariableError(
                f"references undefined variable {name!r} (variables: {known})",
                variable=name,
                step=", ".join(labels),
            )
    unused = sorted(set(variables) - set(used_by))
    if unused:
        raise VariableError(
            f"variable(s) {unused} are not referenced by any step (reference them as '${{name}}')",
            variable=unused[0],
        )
