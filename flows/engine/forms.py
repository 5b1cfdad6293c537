"""JSON-schema tweaks so Prefect's UI renders flow parameters as forms, not raw JSON editors.

What Prefect 3.8.8's Run form (its UI bundle, ``SchemaFormProperty*`` components) does with a schema:

* an object with ``properties`` becomes a group of fields; ``enum`` a select; ``anyOf`` *on a
  property* a choice between its options, labelled by their titles;
* an array's item goes straight to the input for its ``type``: an item schema without a ``type``
  (a ``oneOf``/``anyOf`` union, as pydantic writes a discriminated union) falls to the raw JSON
  editor; ``oneOf`` is never understood anywhere.

So a list of pipeline steps (a discriminated union per item) showed each step as raw JSON.
`FormUnion` publishes such a union as **one object form**: a ``kind`` select listing the step kinds,
then the fields of every kind (each described with the kinds that use it), none required and none
with a default, so the form submits exactly the fields a person filled in. Only the published
schema changes: validation stays pydantic's discriminated union (head keys like ``module:`` or an
explicit ``kind``), and the schema still accepts every valid step, because Prefect also checks a
run's parameters against it on the server.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

__all__ = ["FormUnion", "merge_union_schema"]

_DROP = ("default", "title", "description")


def _options(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """A property schema's alternatives, nested ``anyOf`` flattened."""
    if "anyOf" in schema and len(schema) <= 3:  # anyOf plus, at most, title/description/default leftovers
        return [o for option in schema["anyOf"] for o in _options(option)]
    return [schema]


def _is_object(schema: dict[str, Any]) -> bool:
    return "$ref" in schema or (schema.get("type") == "object" and "properties" in schema)


def merge_union_schema(
    options: list[dict[str, Any]], tag: str = "kind", title: str = "Step"
) -> dict[str, Any]:
    """One object schema with the fields of every option (resolved object schemas) of a union.

    Args:
        options: The union's options, each an object schema whose ``tag`` property is a ``const``.
        tag: The discriminating property; it becomes an ``enum`` select listing every option's value.
        title: The merged form's title.
    """
    kinds: list[str] = []
    fields: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for option in options:
        properties = option.get("properties", {})
        kind = str(properties.get(tag, {}).get("const") or option.get("title", "?"))
        kinds.append(kind)
        for name, prop in properties.items():
            if name != tag:
                fields.setdefault(name, []).append((kind, prop))
    merged: dict[str, Any] = {
        tag: {
            "title": tag.capitalize(),
            "type": "string",
            "enum": kinds,
            "description": "Which kind of step; fill in the fields of that kind (each says which kinds use it). "
            "May be left empty when a kind's own field is set (e.g. module).",
            "position": 0,
        }
    }
    for name, variants in fields.items():
        alternatives: list[dict[str, Any]] = []
        for _kind, prop in variants:
            for option in _options({k: v for k, v in prop.items() if k not in _DROP}):
                if option not in alternatives:
                    alternatives.append(option)
        users = [kind for kind, _ in variants]
        descriptions = list(dict.fromkeys(str(p.get("description", "")) for _, p in variants))
        described = (
            f"{', '.join(users)}: {descriptions[0]}"
            if len(descriptions) == 1
            else " ".join(f"{kind}: {p.get('description', '')}" for kind, p in variants)
        )
        defaults = [
            f"{kind} {json.dumps(p['default'])}"
            for kind, p in variants
            if p.get("default") not in (None, [], {})
        ]
        if defaults:
            described += f" (default: {', '.join(defaults)})"
        if any(_is_object(o) for o in alternatives) and {"type": "null"} not in alternatives:
            # A nested object form (a predicate, say) starts filled with its own defaults: offer
            # None first, so a step of another kind submits no half-filled object.
            alternatives = [{"type": "null"}, *alternatives]
        field: dict[str, Any] = alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}
        # `position` orders the UI's fields: the server stores schemas as JSONB, which re-sorts object
        # keys (by length), so without it the Kind select lands among the other fields.
        merged[name] = {
            **field,
            "title": variants[0][1].get("title", name),
            "description": described,
            "position": len(merged),
        }
    return {
        "type": "object",
        "title": title,
        "description": f"One step: {', '.join(kinds)}.",
        "properties": merged,
    }


class FormUnion:
    """``Annotated`` metadata: publish a discriminated union of models as one object form (`merge_union_schema`).

    Args:
        tag: The discriminating property of every option.
        title: The form's title.

    Example:
        >>> from typing import Annotated, Literal
        >>> from pydantic import BaseModel, Field, TypeAdapter
        >>> class A(BaseModel):
        ...     kind: Literal["a"] = "a"
        ...     x: int = 0
        >>> class B(BaseModel):
        ...     kind: Literal["b"] = "b"
        ...     y: str = ""
        >>> schema = TypeAdapter(Annotated[A | B, Field(discriminator="kind"), FormUnion()]).json_schema()
        >>> schema["type"], schema["properties"]["kind"]["enum"], sorted(schema["properties"])
        ('object', ['a', 'b'], ['kind', 'x', 'y'])
    """

    def __init__(self, tag: str = "kind", title: str = "Step") -> None:
        self.tag = tag
        self.title = title

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        options = schema.get("oneOf") or schema.get("anyOf")
        generator = getattr(handler, "generate_json_schema", None)
        if not options or generator is None:
            return schema
        # One shared definition (named after `title`) that every occurrence refers to: a step's own
        # step lists (parallel, then, map...) are steps too, so the form is recursive, like the model.
        defs_ref, ref_schema = generator.get_cache_defs_ref_schema(
            f"flows.engine.forms.{self.title}:{id(self)}"
        )
        if defs_ref not in generator.definitions:
            try:
                resolved = [handler.resolve_ref_schema(o) if "$ref" in o else o for o in options]
            except LookupError:  # inside a recursive model still being built: the outer occurrence fills it
                return ref_schema
            generator.definitions[defs_ref] = merge_union_schema(resolved, tag=self.tag, title=self.title)
        return ref_schema

    def __repr__(self) -> str:
        return f"FormUnion(tag={self.tag!r}, title={self.title!r})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, FormUnion) and (self.tag, self.title) == (other.tag, other.title)

    def __hash__(self) -> int:
        return hash((FormUnion, self.tag, self.title))
