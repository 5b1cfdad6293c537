"""The native signature engine: parse, validate and compile DSPy string signatures.

``parse_signature("question: str, context: list[str] -> answer: str")`` tokenizes, parses and resolves
the string without ever importing anything it names, and gives the same field names, order and
annotations as ``dspy.Signature(text)``, with clearer errors (`SignatureError` carries the column and a
hint). ``compile_signature`` adds pydantic validators for rows of inputs and outputs.
"""

from dspex.exceptions import SignatureError
from tasks.signatures.compiled import CompiledSignature, clear_compiled_cache, compile_signature
from tasks.signatures.parser import RESERVED_FIELD_NAMES
from tasks.signatures.spec import FieldSpec, SignatureSpec, clear_signature_cache, parse_signature
from tasks.signatures.types import BUILTIN_TYPES, DSPY_TYPE_NAMES, TYPING_NAMES

__all__ = [
    "BUILTIN_TYPES",
    "DSPY_TYPE_NAMES",
    "RESERVED_FIELD_NAMES",
    "TYPING_NAMES",
    "CompiledSignature",
    "FieldSpec",
    "SignatureError",
    "SignatureSpec",
    "clear_compiled_cache",
    "clear_signature_cache",
    "compile_signature",
    "parse_signature",
]
