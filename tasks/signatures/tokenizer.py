"""Tokenizer for DSPy's string signature syntax (``"question: str, context: list[str] -> answer"``).

One compiled regular expression recognises every token; anything it does not recognise is a
`SignatureError` with the column and a hint chosen for the character (a ``=`` default, a ``*`` or
``/`` marker, an unterminated string), so no input reaches Python's own parser.
"""

from __future__ import annotations

import re

from dspex.exceptions import SignatureError

__all__ = ["Token", "tokenize"]

# Order matters: "..." before ".". Numbers are unsigned, as DSPy rejects Literal[-1]. Leading whitespace
# is folded into each match, and the last alternative catches any other character so it can be reported.
_TOKEN_RE = re.compile(
    r"""
    \s*(?:
      (?P<arrow>->)
    | (?P<ellipsis>\.\.\.)
    | (?P<name>[^\W\d]\w*)
    | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
    | (?P<string>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")
    | (?P<punct>[,:\[\]()|.])
    | (?P<bad>\S)
    )
    """,
    re.VERBOSE,
)

# Hints for characters that people plausibly type but the syntax has no place for.
_CHAR_HINTS = {
    "=": "field defaults are not part of a signature string; use a class-based dspy.Signature",
    "*": "star-arguments are not fields; list each field by name",
    "/": "positional-only markers are not fields; list each field by name",
    ">": "inputs and outputs are separated by '->'",
    "-": "'->' separates inputs from outputs; negative numbers are not allowed in Literal[...]",
    "'": "this string is not closed; close it with the same quote on the same line",
    '"': "this string is not closed; close it with the same quote on the same line",
    ";": "separate fields with ',', not ';'",
    "{": "use dict[K, V] for mappings; braces are not allowed",
    "}": "use dict[K, V] for mappings; braces are not allowed",
    "#": "comments are not allowed in a signature string",
}
_DEFAULT_HINT = "a signature holds names, types, ',', ':', '|', brackets and one '->'"


#: One token: ``(kind, text, column)``. ``kind`` is ``name``, ``arrow``, ``ellipsis``, ``number``,
#: ``string``, or the punctuation character itself; ``column`` is 1-based. Plain tuples: a signature is
#: tokenized on every uncached parse, and tuple creation is the cheapest record Python has.
Token = tuple[str, str, int]


def tokenize(text: str) -> list[Token]:
    """Split a signature string into tokens, dropping whitespace.

    Args:
        text: The signature string.

    Returns:
        The tokens in order; the list is empty for a blank string.

    Raises:
        SignatureError: On a character the syntax does not allow, with its column and a hint.
    """
    tokens = [
        (value if kind == "punct" else kind, value, m.start(kind) + 1)
        for m in _TOKEN_RE.finditer(text)
        for kind in (m.lastgroup or "bad",)
        for value in (m.group(kind),)
    ]
    for kind, char, column in tokens:
        if kind == "bad":
            raise SignatureError(
                f"unexpected character {char!r}",
                text=text,
                column=column,
                hint=_CHAR_HINTS.get(char, _DEFAULT_HINT),
            )
    return tokens
