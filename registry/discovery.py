"""Discovery of the modules the installed ``dspy`` offers.

``dspy`` 3.4 has no top-level ``__all__``, so discovery reads each subpackage's ``__all__`` and keeps
the classes: the modules of ``dspy.predict``, the optimizers of ``dspy.teleprompt``, the retrievers of
``dspy.retrievers``, the embedder of ``dspy.clients``, ColBERTv2, and the evaluator and LM-judged
metrics of ``dspy.evaluate``. Each gets a category, capabilities, a pool and a typical duration from
`PROFILES`; a class this table does not know yet (a newer ``dspy``) gets its subpackage's default, so
it is still routable. Optimizers go to the ``optimizer`` pool, embedding and neural retrieval work to
``gpu``, everything else to ``general``.

Discovery imports ``dspy`` (about a second), so it runs only when a registry is built, never at
import time, and its result is cached for the process.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from dataclasses import dataclass
from functools import cache

from registry.catalogue import dspy_version
from registry.models import Category, ModuleInfo, ModuleMetadata, PoolType, Requirements, ResourceLevel

__all__ = ["PROFILES", "Profile", "discover_modules"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Profile:
    """What discovery says about a class: category, capabilities, pool, duration, resources."""

    category: Category
    capabilities: tuple[str, ...]
    pool: PoolType
    duration_ms: int
    memory: ResourceLevel = "low"
    compute: ResourceLevel = "low"
    gpu: bool = False


_C, _P = Category, PoolType
_OPT = _P.OPTIMIZER

#: Known classes, by class name.
PROFILES: dict[str, Profile] = {
    # dspy.predict
    "Predict": Profile(_C.PREDICTION, ("basic_generation", "structured_output"), _P.GENERAL, 1000),
    "ChainOfThought": Profile(
        _C.REASONING, ("reasoning", "step_by_step", "explanation"), _P.GENERAL, 3000, "medium", "medium"
    ),
    "ReAct": Profile(
        _C.REASONING, ("reasoning", "tool_use", "iterative"), _P.GENERAL, 5000, "medium", "medium"
    ),
    "ReActV2": Profile(
        _C.REASONING, ("reasoning", "tool_use", "iterative"), _P.GENERAL, 5000, "medium", "medium"
    ),
    "ProgramOfThought": Profile(
        _C.REASONING, ("complex_reasoning", "code_generation"), _P.OPTIMIZER, 10000, "high", "high"
    ),
    "CodeAct": Profile(
        _C.REASONING,
        ("reasoning", "tool_use", "code_generation", "code_execution", "iterative"),
        _P.GENERAL,
        10000,
        "medium",
        "high",
    ),
    "RLM": Profile(
        _C.REASONING,
        ("reasoning", "long_context", "code_execution", "iterative"),
        _P.GENERAL,
        20000,
        "high",
        "high",
    ),
    "MultiChainComparison": Profile(
        _C.REASONING, ("reasoning", "answer_comparison", "ensembling"), _P.GENERAL, 4000, "medium", "medium"
    ),
    "BestOfN": Profile(
        _C.COMPOSITION, ("best_of_n", "reward_selection", "retry"), _P.GENERAL, 5000, "medium", "medium"
    ),
    "Refine": Profile(
        _C.COMPOSITION,
        ("refinement", "feedback", "reward_selection", "retry"),
        _P.GENERAL,
        6000,
        "medium",
        "medium",
    ),
    "Parallel": Profile(_C.COMPOSITION, ("parallel_execution", "batching"), _P.GENERAL, 1000),
    "KNN": Profile(
        _C.RETRIEVAL,
        ("nearest_neighbors", "few_shot_selection", "embeddings"),
        _P.GPU,
        500,
        "medium",
        "high",
        True,
    ),
    # dspy.teleprompt: every optimizer runs in the optimizer pool
    "LabeledFewShot": Profile(_C.OPTIMIZATION, ("few_shot", "demo_selection"), _OPT, 1000),
    "BootstrapFewShot": Profile(
        _C.OPTIMIZATION, ("few_shot", "bootstrapping", "demo_selection"), _OPT, 60_000, "medium", "high"
    ),
    "BootstrapFewShotWithRandomSearch": Profile(
        _C.OPTIMIZATION, ("few_shot", "bootstrapping", "random_search"), _OPT, 180_000, "medium", "high"
    ),
    "BootstrapFewShotWithOptuna": Profile(
        _C.OPTIMIZATION,
        ("few_shot", "bootstrapping", "hyperparameter_optimization"),
        _OPT,
        180_000,
        "medium",
        "high",
    ),
    "MIPROv2": Profile(
        _C.OPTIMIZATION,
        ("hyperparameter_optimization", "prompt_optimization"),
        _OPT,
        300_000,
        "high",
        "very_high",
    ),
    "COPRO": Profile(
        _C.OPTIMIZATION, ("prompt_optimization", "instruction_optimization"), _OPT, 120_000, "medium", "high"
    ),
    "SIMBA": Profile(
        _C.OPTIMIZATION,
        ("prompt_optimization", "few_shot", "introspection"),
        _OPT,
        180_000,
        "medium",
        "high",
    ),
    "GEPA": Profile(
        _C.OPTIMIZATION,
        ("prompt_optimization", "instruction_optimization", "reflective_evolution"),
        _OPT,
        300_000,
        "high",
        "very_high",
    ),
    "KNNFewShot": Profile(
        _C.OPTIMIZATION, ("few_shot", "nearest_neighbors", "embeddings"), _OPT, 30_000, "medium", "high"
    ),
    "Ensemble": Profile(_C.OPTIMIZATION, ("ensembling", "program_composition"), _OPT, 1000),
    "BootstrapFinetune": Profile(
        _C.OPTIMIZATION,
        ("finetuning", "weight_optimization", "bootstrapping"),
        _OPT,
        1_800_000,
        "very_high",
        "very_high",
        True,
    ),
    "BetterTogether": Profile(
        _C.OPTIMIZATION,
        ("prompt_optimization", "weight_optimization", "finetuning"),
        _OPT,
        1_800_000,
        "very_high",
        "very_high",
        True,
    ),
    "AvatarOptimizer": Profile(
        _C.OPTIMIZATION, ("prompt_optimization", "tool_use_optimization"), _OPT, 300_000, "medium", "high"
    ),
    "InferRules": Profile(
        _C.OPTIMIZATION, ("rule_induction", "instruction_optimization"), _OPT, 120_000, "medium", "high"
    ),
    # retrieval and embedding
    "Embeddings": Profile(
        _C.RETRIEVAL, ("semantic_search", "embeddings", "vector_index"), _P.GPU, 500, "high", "high", True
    ),
    "EmbeddingsWithScores": Profile(
        _C.RETRIEVAL,
        ("semantic_search", "embeddings", "vector_index", "relevance_scores"),
        _P.GPU,
        500,
        "high",
        "high",
        True,
    ),
    "Retrieve": Profile(_C.RETRIEVAL, ("passage_retrieval",), _P.GENERAL, 500),
    "ColBERTv2": Profile(_C.RETRIEVAL, ("semantic_search", "embeddings"), _P.GPU, 500, "high", "high", True),
    "Embedder": Profile(_C.EMBEDDING, ("embeddings", "text_encoding"), _P.GPU, 200, "medium", "high", True),
    # dspy.evaluate
    "Evaluate": Profile(
        _C.EVALUATION, ("evaluation", "metric_scoring", "parallel_execution"), _P.GENERAL, 60_000
    ),
    "SemanticF1": Profile(_C.EVALUATION, ("metric_scoring", "llm_judge"), _P.GENERAL, 2000),
    "CompleteAndGrounded": Profile(
        _C.EVALUATION, ("metric_scoring", "llm_judge", "groundedness"), _P.GENERAL, 3000
    ),
}

# Subpackage -> (default profile for a class PROFILES does not know, which classes to keep).
_DEFAULTS: dict[str, Profile] = {
    "dspy.predict": Profile(_C.PREDICTION, ("generation",), _P.GENERAL, 3000),
    "dspy.teleprompt": Profile(_C.OPTIMIZATION, ("optimization",), _OPT, 300_000, "medium", "high"),
    "dspy.retrievers": Profile(_C.RETRIEVAL, ("retrieval",), _P.GENERAL, 500),
    "dspy.clients": Profile(_C.EMBEDDING, ("embeddings",), _P.GPU, 200, "medium", "high", True),
    "dspy.evaluate": Profile(_C.EVALUATION, ("metric_scoring",), _P.GENERAL, 3000),
    "dspy.dsp.colbertv2": Profile(_C.RETRIEVAL, ("semantic_search",), _P.GPU, 500, "high", "high", True),
}

# Classes exported by a subpackage that are not runnable modules (a tool wrapper, an LM client, a
# result record): they are not routed anywhere.
_NOT_MODULES = frozenset(
    {"Tool", "BaseLM", "LM", "Provider", "TrainingJob", "EvaluationResult", "Teleprompter", "Example"}
)


def _exported_classes(package: str) -> list[tuple[str, type]]:
    try:
        module = importlib.import_module(package)
    except ImportError as error:
        # The seed's behaviour: a discovery failure is logged and the catalogue still works.
        logger.warning("registry discovery skipped %s: %s", package, error)
        return []
    names = getattr(module, "__all__", None)
    if names is None and package == "dspy.dsp.colbertv2":
        names = ["ColBERTv2"]
    found = []
    for name in names or ():
        obj = getattr(module, name, None)
        if inspect.isclass(obj) and name not in _NOT_MODULES:
            found.append((name, obj))
    return found


def _registry_name(dspy_module: object, package: str, name: str, cls: type) -> str:
    # The short public name when dspy exports the class at top level, else its subpackage path.
    return f"dspy.{name}" if getattr(dspy_module, name, None) is cls else f"{package}.{name}"


def _describe(cls: type) -> tuple[str, bool]:
    doc = inspect.getdoc(cls) or ""
    deprecated = ".. deprecated::" in doc
    # Skip directive lines and dspy's boilerplate "Experimental: ..." banner to reach the summary.
    lines = [
        line.strip()
        for line in doc.splitlines()
        if line.strip() and not line.strip().startswith(("..", "Experimental:"))
    ]
    first = lines[0] if lines else ""
    if first.startswith("Base class for all DSPy modules"):
        first = ""  # inherited from dspy.Module: says nothing about this class
    return first[:200], deprecated


@cache
def discover_modules() -> tuple[ModuleInfo, ...]:
    """Every module, optimizer, retriever and embedder the installed ``dspy`` exports.

    Returns:
        The discovered records (``metadata.source == "discovered"``, ``native_available`` False), in
        subpackage order; empty when ``dspy`` is not importable.
    """
    try:
        import dspy
    except ImportError as error:
        logger.warning("registry discovery skipped: dspy is not importable: %s", error)
        return ()
    version = dspy_version()
    found: dict[str, ModuleInfo] = {}
    for package, default in _DEFAULTS.items():
        for name, cls in _exported_classes(package):
            profile = PROFILES.get(name, default)
            description, deprecated = _describe(cls)
            key = _registry_name(dspy, package, name, cls)
            found.setdefault(
                key,
                ModuleInfo(
                    name=key,
                    category=profile.category,
                    capabilities=profile.capabilities,
                    requirements=Requirements(
                        memory=profile.memory, compute=profile.compute, gpu=profile.gpu
                    ),
                    pool_type=profile.pool,
                    estimated_duration_ms=profile.duration_ms,
                    native_available=False,
                    metadata=ModuleMetadata(
                        source="discovered",
                        import_path=f"{cls.__module__}:{cls.__qualname__}",
                        version=version,
                        description=description,
                        deprecated=deprecated,
                    ),
                ),
            )
    return tuple(found.values())
