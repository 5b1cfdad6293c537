"""JSON-schema tweaks so Prefect's UI renders flow parameters as forms, not raw JSON editors.

Prefect 3.8.8's Run form (``SchemaFormPropertyAnyOf`` in its UI bundle) understands ``anyOf``: it
shows a choice between the options, labelled by their titles, picks the option whose properties
overlap most with the current value, and renders that option's fields. It has no ``oneOf`` case, so
pydantic's schema of a discriminated union (``oneOf`` plus a ``discriminator``) falls back to a raw
JSON editor. `FormUnion` rewrites such a union's schema to ``anyOf``. Validation is unchanged: the
union stays discriminated (each step kind has its own head key, or a literal ``kind``).
"""

from __future__ import annotations

from typing import Any

from pydantic import GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

__all__ = ["FormUnion"]


class FormUnion:
    """``Annotated`` metadata: publish a (discriminated) union as ``anyOf`` for Prefect's form renderer.

    Example:
        >>> from typing import Annotated, Literal
        >>> from pydantic import BaseModel, Field, TypeAdapter
        >>> class A(BaseModel):
        ...     kind: Literal["a"] = "a"
        >>> class B(BaseModel):
        ...     kind: Literal["b"] = "b"
        >>> schema = TypeAdapter(Annotated[A | B, Field(discriminator="kind"), FormUnion()]).json_schema()
        >>> "anyOf" in schema and "oneOf" not in schema
        True
    """

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema) if "$ref" in schema else schema
        if "oneOf" in target:
            target["anyOf"] = target.pop("oneOf")
            target.pop("discriminator", None)
        return schema

    def __repr__(self) -> str:
        return "FormUnion()"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, FormUnion)

    def __hash__(self) -> int:
        return hash(FormUnion)
