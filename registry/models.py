"""The registry's record of one module: `ModuleInfo` and the small types it is made of.

A `ModuleInfo` says what a DSPy module (or a user's own module) is, what it can do, what it needs,
which work pool serves it and how long it typically takes. Records are frozen pydantic models with
``extra="forbid"``, so a typo in a field name is an error rather than a silently ignored key.
"""

from __future__ import annotations

import keyword
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dspex.exceptions import InvalidModuleInfoError
from dspex.imports import is_import_path as _is_import_path
from dspex.imports import refused_root

__all__ = [
    "CAPABILITY_IMPLIES",
    "Category",
    "ModuleInfo",
    "ModuleMetadata",
    "ModuleSource",
    "PoolType",
    "Requirements",
    "ResourceLevel",
    "expand_capabilities",
    "is_dotted_name",
    "is_import_path",
    "parse_module_info",
]


class PoolType(StrEnum):
    """The Prefect work pool that serves a module (the seed's ``:neural`` pool is ``gpu``)."""

    GENERAL = "general"
    OPTIMIZER = "optimizer"
    GPU = "gpu"


class Category(StrEnum):
    """What kind of work a module does.

    The seed's four (prediction, reasoning, optimization, retrieval) plus what discovery of the
    installed ``dspy`` needs: embedding (an embedder), composition (modules that wrap other modules:
    BestOfN, Refine, Parallel), evaluation (Evaluate and LM-judged metrics) and custom (a user's module
    registered without a category).
    """

    PREDICTION = "prediction"
    REASONING = "reasoning"
    OPTIMIZATION = "optimization"
    RETRIEVAL = "retrieval"
    EMBEDDING = "embedding"
    COMPOSITION = "composition"
    EVALUATION = "evaluation"
    CUSTOM = "custom"


ResourceLevel = Literal["low", "medium", "high", "very_high"]
ModuleSource = Literal["core", "discovered", "user", "dspex"]

_RECORD = ConfigDict(frozen=True, extra="forbid")

#: Specialised capabilities and the general ones they include. A capability query for the general word
#: finds the specialised modules too: the seed's catalogue gives ProgramOfThought only
#: ``complex_reasoning``, yet its own example expects ``find_by_capability(:reasoning)`` to find it.
CAPABILITY_IMPLIES: dict[str, tuple[str, ...]] = {
    "complex_reasoning": ("reasoning",),
    "hyperparameter_optimization": ("optimization",),
    "prompt_optimization": ("optimization",),
    "instruction_optimization": ("optimization",),
    "weight_optimization": ("optimization",),
    "semantic_search": ("retrieval",),
    "passage_retrieval": ("retrieval",),
}


def expand_capabilities(capabilities: tuple[str, ...]) -> tuple[str, ...]:
    """The capabilities followed by the general ones they imply, without duplicates.

    Args:
        capabilities: A record's own capabilities.
    """
    expanded = dict.fromkeys(capabilities)
    for capability in capabilities:
        expanded.update(dict.fromkeys(CAPABILITY_IMPLIES.get(capability, ())))
    return tuple(expanded)


def _is_identifier_path(text: str) -> bool:
    parts = text.split(".")
    return all(part.isidentifier() and not keyword.iskeyword(part) for part in parts)


def is_dotted_name(text: str) -> bool:
    """Whether ``text`` is a dotted Python name such as ``dspy.ChainOfThought``.

    Args:
        text: The candidate name.
    """
    return bool(text) and _is_identifier_path(text)


def is_import_path(text: str) -> bool:
    """Whether ``text`` has the ``pkg.mod:Class`` form, checked without importing anything.

    Args:
        text: The candidate import path.
    """
    return _is_import_path(text)  # the one grammar, shared with tasks and flows


def _refuse_root(import_path: str) -> None:
    # A module record never points into the standard library (subprocess:Popen, os:system,
    # builtins:eval): refused at registration, so such a record cannot be saved, loaded or run.
    reason = refused_root(import_path.split(":")[0].split(".")[0])
    if reason:
        raise ValueError(
            f"{import_path!r} is refused: {reason}; a module is a dspy.Module subclass in DSPy or your own package"
        )


class Requirements(BaseModel):
    """The resources a module needs, coarsely.

    Attributes:
        memory: How much memory one call needs.
        compute: How much CPU (or accelerator) work one call does.
        gpu: Whether the module needs (or greatly benefits from) an accelerator.
    """

    model_config = _RECORD

    memory: ResourceLevel = "low"
    compute: ResourceLevel = "low"
    gpu: bool = False


class ModuleMetadata(BaseModel):
    """Where a record came from.

    Attributes:
        source: ``core`` (the seed's catalogue), ``dspex`` (DSPex's own pattern modules,
            `tasks.patterns`), ``discovered`` (found in the installed ``dspy``) or
            ``user`` (registered by a user).
        import_path: Where the class lives, as ``pkg.mod:Class``; ``None`` when unknown.
        version: The version of the package providing the module, when known.
        description: One line saying what the module does.
        deprecated: Whether the providing package marks the module deprecated.
    """

    model_config = _RECORD

    source: ModuleSource = "user"
    import_path: str | None = None
    version: str | None = None
    description: str = ""
    deprecated: bool = False

    @field_validator("import_path")
    @classmethod
    def _import_path_form(cls, value: str | None) -> str | None:
        if value is not None and not is_import_path(value):
            raise ValueError(f"import_path must look like 'pkg.mod:Class', got {value!r}")
        if value is not None:
            _refuse_root(value)
        return value


class ModuleInfo(BaseModel):
    """Everything the registry knows about one module.

    Attributes:
        name: The registry key: a dotted name (``dspy.ChainOfThought``) or, for user modules, an
            import path (``pkg.mod:Class``).
        category: What kind of work it does.
        capabilities: What it can do, as snake_case words (``reasoning``, ``tool_use``).
        requirements: The resources it needs.
        pool_type: The work pool that serves it; ``neural`` (the seed's name) is accepted for ``gpu``.
        estimated_duration_ms: The static (catalogue) duration of one typical call, in milliseconds.
        native_available: Whether a native implementation (no DSPy module call) exists.
        examples: Short usage snippets.
        metadata: Where the record came from.
    """

    model_config = _RECORD

    name: str = Field(min_length=1, max_length=300)
    category: Category
    capabilities: tuple[str, ...] = ()
    requirements: Requirements = Field(default_factory=Requirements)
    pool_type: PoolType = PoolType.GENERAL
    estimated_duration_ms: int = Field(ge=0)
    native_available: bool = False
    examples: tuple[str, ...] = ()
    metadata: ModuleMetadata = Field(default_factory=ModuleMetadata)

    @field_validator("name")
    @classmethod
    def _name_form(cls, value: str) -> str:
        if not (is_dotted_name(value) or is_import_path(value)):
            raise ValueError(f"name must be a dotted name ('dspy.Predict') or 'pkg.mod:Class', got {value!r}")
        if ":" in value:
            _refuse_root(value)
        return value

    @field_validator("capabilities")
    @classmethod
    def _capability_words(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Normalised so that find_by_capability("Tool_Use") and the catalogue agree.
        seen: dict[str, None] = {}
        for raw in value:
            word = raw.strip().lower()
            if not word or not word[0].isalpha() or not word.replace("_", "").isalnum():
                raise ValueError(f"capability must be a snake_case word, got {raw!r}")
            seen[word] = None
        return tuple(seen)

    @field_validator("pool_type", mode="before")
    @classmethod
    def _neural_means_gpu(cls, value: Any) -> Any:
        return PoolType.GPU if value == "neural" else value


def parse_module_info(data: ModuleInfo | Any, *, where: str = "module record") -> ModuleInfo:
    """Validate a `ModuleInfo` or a mapping into one, with a typed error.

    Args:
        data: A `ModuleInfo` (returned as is) or a JSON-like mapping.
        where: What the record is, for the error message (a file name, "register_module").

    Raises:
        InvalidModuleInfoError: The record does not validate; the message lists every bad field and,
            for unknown keys, the valid ones.
    """
    if isinstance(data, ModuleInfo):
        return data
    try:
        return ModuleInfo.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item['loc']) or '<record>'}: {item['msg']}" for item in error.errors()
        )
        name = data.get("name") if isinstance(data, dict) else None
        label = f"{where} {name!r}" if name else where
        valid = ", ".join(ModuleInfo.model_fields)
        raise InvalidModuleInfoError(f"invalid {label}: {problems} (valid fields: {valid})") from error
