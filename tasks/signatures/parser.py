"""Recursive-descent parser: tokens of a signature string to a `SignatureNode` syntax tree.

Grammar (``|`` binds looser than subscripts, as in Python)::

    signature := fields '->' fields
    fields    := [field (',' field)* [',']]
    field     := NAME [':' type]
    type      := primary ('|' primary)*
    primary   := NAME ('.' NAME)* ['[' type (',' type)* [','] ']'] | '(' type ')' | '(' ')'
               | STRING | NUMBER | '...'

Besides syntax, the parser checks field names (identifiers, no keywords, no leading underscore, no
name that dspy.Signature or pydantic reserve, no duplicates), since those errors need the column.
"""

from __future__ import annotations

import keyword
import re
import unicodedata

from pydantic import BaseModel

from dspex.exceptions import SignatureError
from tasks.signatures.syntax import (
    ConstNode,
    FieldNode,
    NameNode,
    SignatureNode,
    SubscriptNode,
    TypeNode,
    UnionNode,
)
from tasks.signatures.tokenizer import Token, tokenize

__all__ = ["RESERVED_FIELD_NAMES", "parse"]

# Attributes of dspy.Signature (its metaclass properties and class methods): a field with one of these
# names breaks or shadows it. tests/tasks/signatures check this list against the installed DSPy.
_DSPY_SIGNATURE_ATTRIBUTES = frozenset(
    {
        "append",
        "append_instructions",
        "delete",
        "dump_state",
        "equals",
        "fields",
        "input_fields",
        "insert",
        "instructions",
        "load_state",
        "output_fields",
        "prepend",
        "signature",
        "with_instructions",
        "with_updated_fields",
    }
)

#: Field names a signature may not use: they shadow dspy.Signature or pydantic.BaseModel attributes.
RESERVED_FIELD_NAMES: frozenset[str] = _DSPY_SIGNATURE_ATTRIBUTES | frozenset(
    name for name in dir(BaseModel) if not name.startswith("_")
)

_SIMPLE_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t"}
_ESCAPE_RE = re.compile(r"\\(.)")
_EXAMPLE = "e.g. 'question: str, context: list[str] -> answer: str'"


def parse(text: str) -> SignatureNode:
    """Parse a signature string into its syntax tree.

    Args:
        text: The signature string.

    Returns:
        The syntax tree; names are not resolved to types yet.

    Raises:
        SignatureError: On any syntax or naming error, with the column and a one-line hint.
    """
    if not text.strip():
        raise SignatureError(
            "empty signature", text=text, column=1, hint=f"write inputs -> outputs, {_EXAMPLE}"
        )
    tokens = tokenize(text)
    tokens.append(_end_token(text))  # a sentinel, so the cursor never runs past the list
    return _Parser(text, tokens).signature()


def _end_token(text: str) -> Token:
    return ("end", "", len(text.rstrip()) + 1)


class _Parser:
    """One parse: a cursor over the tokens of one string."""

    __slots__ = ("open", "pos", "text", "tokens")

    def __init__(self, text: str, tokens: list[Token]) -> None:
        self.text = text
        self.tokens = tokens
        self.pos = 0
        self.open: list[Token] = []  # brackets opened and not yet closed, for unbalanced-bracket errors

    # --- helpers ---------------------------------------------------------------------------------
    def peek(self) -> Token:
        return self.tokens[self.pos]

    def fail(self, message: str, column: int, hint: str) -> SignatureError:
        return SignatureError(message, text=self.text, column=column, hint=hint)

    def end_column(self) -> int:
        return len(self.text.rstrip()) + 1

    def describe(self, tok: Token) -> str:
        if tok[0] == "end":
            return "end of signature"
        return "'->'" if tok[0] == "arrow" else repr(tok[1])

    # --- grammar ---------------------------------------------------------------------------------
    def signature(self) -> SignatureNode:
        inputs = self.fields()
        tok = self.tokens[self.pos]
        if tok[0] == "end":
            raise self.fail(
                "missing '->'", self.end_column(), f"separate inputs from outputs with '->', {_EXAMPLE}"
            )
        arrow_column = tok[2]
        self.pos += 1
        outputs = self.fields()
        tok = self.tokens[self.pos]
        if tok[0] != "end":  # fields() only stops at '->' or the end
            raise self.fail(
                "more than one '->'",
                tok[2],
                f"a signature has exactly one '->' (the first is at column {arrow_column})",
            )
        if not outputs:
            raise self.fail(
                "no output fields",
                arrow_column,
                "name at least one output after '->', e.g. 'question -> answer'",
            )
        self.check_duplicates(inputs, outputs)
        return SignatureNode(inputs, outputs, arrow_column)

    def fields(self) -> tuple[FieldNode, ...]:
        result: list[FieldNode] = []
        while True:
            tok = self.tokens[self.pos]
            if tok[0] == "end" or tok[0] == "arrow":
                return tuple(result)
            if tok[0] != "name":
                if tok[0] == ",":
                    raise self.fail(
                        "empty field (two commas, or a leading comma)", tok[2], "remove the extra ','"
                    )
                raise self.fail(
                    f"expected a field name, got {self.describe(tok)}",
                    tok[2],
                    "a field is a name, optionally followed by ': type'",
                )
            name = self.field_name(tok)
            self.pos += 1
            annotation: TypeNode | None = None
            after = self.tokens[self.pos]
            if after[0] == ":":
                self.pos += 1
                nxt = self.tokens[self.pos]
                if nxt[0] == "end" or nxt[0] in ("arrow", ","):
                    raise self.fail(
                        f"missing type after ':' of field {name!r}",
                        after[2],
                        "write a type such as 'str' or 'list[str]', or drop the ':'",
                    )
                annotation = self.type_expr()
            result.append(FieldNode(name, tok[2], annotation))
            tok = self.tokens[self.pos]
            if tok[0] == "end" or tok[0] == "arrow":
                return tuple(result)
            if tok[0] == ",":
                self.pos += 1
                continue
            raise self.unexpected_after_field(tok, name)

    def unexpected_after_field(self, tok: Token, name: str) -> SignatureError:
        if tok[0] == "name":
            return self.fail(
                f"missing ',' before {tok[1]!r}", tok[2], "separate fields with commas: 'a, b -> c'"
            )
        if tok[0] in ("]", ")"):
            return self.fail(
                f"unmatched {tok[1]!r}",
                tok[2],
                f"remove it, or add the matching {'[' if tok[0] == ']' else '('!r}",
            )
        if tok[0] == ":":
            return self.fail(
                f"a second ':' after field {name!r}", tok[2], "a field has one type: 'name: type'"
            )
        return self.fail(
            f"unexpected {self.describe(tok)} after field {name!r}",
            tok[2],
            "expected ',' or '->' after a field",
        )

    def field_name(self, tok: Token) -> str:
        name = tok[1]
        if not name.isascii():
            name = unicodedata.normalize("NFKC", name)  # what Python itself does to identifiers
            if not name.isidentifier():
                raise self.fail(f"{tok[1]!r} is not a valid field name", tok[2], "use a Python identifier")
        if keyword.iskeyword(name):
            raise self.fail(
                f"{name!r} is a Python keyword and cannot name a field", tok[2], f"rename it, e.g. '{name}_'"
            )
        if name.startswith("_"):
            raise self.fail(
                f"field name {name!r} starts with '_'",
                tok[2],
                f"pydantic treats such names as private; rename it, e.g. {name.lstrip('_') or 'value'!r}",
            )
        if name in RESERVED_FIELD_NAMES:
            raise self.fail(
                f"field name {name!r} is reserved",
                tok[2],
                f"it would shadow dspy.Signature/pydantic attribute {name!r}; rename it, e.g. '{name}_value'",
            )
        return name

    def check_duplicates(self, inputs: tuple[FieldNode, ...], outputs: tuple[FieldNode, ...]) -> None:
        seen: dict[str, FieldNode] = {}
        n_inputs = len(inputs)
        for index, field in enumerate(inputs + outputs):
            first = seen.get(field.name)
            if first is None:
                seen[field.name] = field
                continue
            if index >= n_inputs and first in inputs:
                hint = f"a field cannot be both an input (column {first.column}) and an output; rename the output"
            else:
                hint = f"it is already defined at column {first.column}; DSPy would silently merge the two"
            raise self.fail(f"duplicate field name {field.name!r}", field.column, hint)

    def type_expr(self) -> TypeNode:
        left = self.primary()
        while True:
            tok = self.tokens[self.pos]
            if tok[0] != "|":
                return left
            self.pos += 1
            nxt = self.tokens[self.pos]
            if nxt[0] == "end" or nxt[0] in ("arrow", ",", "]", ")"):
                raise self.fail("missing type after '|'", tok[2], "write 'X | Y', e.g. 'int | None'")
            left = UnionNode(left, self.primary(), tok[2])

    def primary(self) -> TypeNode:
        tok = self.tokens[self.pos]
        if tok[0] == "end":
            if self.open:
                raise self.unclosed(tok)
            raise self.fail(
                "missing type at end of signature", self.end_column(), "write a type such as 'str'"
            )
        kind = tok[0]
        if kind == "name":
            return self.named()
        self.pos += 1
        if kind == "string":
            return ConstNode(self.string_value(tok), tok[2])
        if kind == "number":
            raw = tok[1]
            value: int | float = float(raw) if ("." in raw or "e" in raw or "E" in raw) else int(raw)
            return ConstNode(value, tok[2])
        if kind == "ellipsis":
            return ConstNode(Ellipsis, tok[2])
        if kind == "(":
            self.open.append(tok)
            nxt = self.tokens[self.pos]
            if nxt[0] == ")":
                self.pos += 1
                self.open.pop()
                return ConstNode((), tok[2])
            inner = self.type_expr()
            self.close(")")
            return inner
        self.pos -= 1
        if self.open and kind in ("]", ")", "arrow"):
            opener = self.open[-1]
            if kind == "]" and opener[0] == "[":
                raise self.fail("missing type argument", tok[2], "write a type before ']', e.g. 'list[str]'")
            if kind == "arrow":
                raise self.unclosed(tok)
        raise self.fail(
            f"expected a type, got {self.describe(tok)}",
            tok[2],
            "a type is a name such as 'str' or 'list[int]'",
        )

    def named(self) -> TypeNode:
        tok = self.tokens[self.pos]
        self.pos += 1
        name = tok[1]
        if name in ("None", "True", "False"):
            return ConstNode({"None": None, "True": True, "False": False}[name], tok[2])
        while True:
            dot = self.tokens[self.pos]
            if dot[0] != ".":
                break
            self.pos += 1
            part = self.tokens[self.pos]
            if part[0] != "name":
                raise self.fail(
                    "expected a name after '.'", dot[2], "write a dotted name such as 'typing.List'"
                )
            self.pos += 1
            name = f"{name}.{part[1]}"
        node = NameNode(name, tok[2])
        bracket = self.tokens[self.pos]
        if bracket[0] != "[":
            return node
        self.pos += 1
        self.open.append(bracket)
        if (nxt := self.tokens[self.pos])[0] == "]":
            raise self.fail(
                f"empty brackets after {name!r}", nxt[2], f"write the type arguments, e.g. '{name}[str]'"
            )
        args = [self.type_expr()]
        while self.tokens[self.pos][0] == ",":
            self.pos += 1
            nxt = self.tokens[self.pos]
            if nxt[0] == "]":
                break
            args.append(self.type_expr())
        self.close("]")
        return SubscriptNode(node, tuple(args), bracket[2])

    def close(self, closer: str) -> None:
        tok = self.tokens[self.pos]
        if tok[0] != "end" and tok[0] == closer:
            self.pos += 1
            self.open.pop()
            return
        if tok[0] in ("]", ")"):
            opener = self.open[-1]
            raise self.fail(
                f"mismatched {tok[1]!r}",
                tok[2],
                f"the {opener[1]!r} at column {opener[2]} is closed with {closer!r}",
            )
        if tok[0] not in ("end", "arrow", ","):
            raise self.fail(
                f"unexpected {self.describe(tok)} inside brackets",
                tok[2],
                f"separate type arguments with ',' and close with {closer!r}",
            )
        raise self.unclosed(tok)

    def unclosed(self, tok: Token) -> SignatureError:
        opener = self.open[-1]
        closer = "]" if opener[0] == "[" else ")"
        where = "the end" if tok[0] == "end" else self.describe(tok)
        return self.fail(f"unclosed {opener[1]!r}", opener[2], f"close it with {closer!r} before {where}")

    def string_value(self, tok: Token) -> str:
        body = tok[1][1:-1]
        if "\\" not in body:
            return body

        def unescape(m: re.Match[str]) -> str:
            char = m.group(1)
            if char not in _SIMPLE_ESCAPES:
                raise self.fail(
                    f"unsupported escape '\\{char}' in string",
                    tok[2],
                    "only \\\\, \\', \\\", \\n and \\t are allowed in Literal strings",
                )
            return _SIMPLE_ESCAPES[char]

        return _ESCAPE_RE.sub(unescape, body)
