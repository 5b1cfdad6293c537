"""The core catalogue: the seed's six DSPy modules, with the seed's exact values.

Core entries win over discovered ones of the same name. The seed's ``:neural`` pool is ``gpu``.
Nothing here imports ``dspy``; the installed version is read from package metadata.
"""

from __future__ import annotations

from functools import cache
from importlib import metadata as importlib_metadata

from registry.models import Category, ModuleInfo, ModuleMetadata, ModuleSource, PoolType, Requirements

__all__ = ["CORE_MODULE_NAMES", "PATTERN_MODULE_NAMES", "core_modules", "dspy_version", "pattern_modules"]


@cache
def dspy_version() -> str | None:
    """The installed ``dspy`` version, or ``None`` when it is not installed."""
    try:
        return importlib_metadata.version("dspy")
    except importlib_metadata.PackageNotFoundError:
        return None


def _core(
    name: str,
    import_path: str,
    category: Category,
    capabilities: tuple[str, ...],
    requirements: Requirements,
    pool_type: PoolType,
    duration_ms: int,
    *,
    native: bool = False,
    description: str,
    examples: tuple[str, ...],
    source: ModuleSource = "core",
) -> ModuleInfo:
    return ModuleInfo(
        name=name,
        category=category,
        capabilities=capabilities,
        requirements=requirements,
        pool_type=pool_type,
        estimated_duration_ms=duration_ms,
        native_available=native,
        examples=examples,
        metadata=ModuleMetadata(
            source=source, import_path=import_path, version=dspy_version(), description=description
        ),
    )


@cache
def core_modules() -> tuple[ModuleInfo, ...]:
    """The seed's core catalogue, in the seed's order."""
    return (
        _core(
            "dspy.Predict",
            "dspy.predict.predict:Predict",
            Category.PREDICTION,
            ("basic_generation", "structured_output"),
            Requirements(memory="low", compute="low"),
            PoolType.GENERAL,
            1000,
            native=True,
            description="Maps inputs to outputs with one LM call.",
            examples=('dspy.Predict("question -> answer")(question="What is 2+2?")',),
        ),
        _core(
            "dspy.ChainOfThought",
            "dspy.predict.chain_of_thought:ChainOfThought",
            Category.REASONING,
            ("reasoning", "step_by_step", "explanation"),
            Requirements(memory="medium", compute="medium"),
            PoolType.GENERAL,
            3000,
            description="Reasons step by step before producing the output.",
            examples=('dspy.ChainOfThought("question -> answer")(question="Why is the sky blue?")',),
        ),
        _core(
            "dspy.ReAct",
            "dspy.predict.react:ReAct",
            Category.REASONING,
            ("reasoning", "tool_use", "iterative"),
            Requirements(memory="medium", compute="medium"),
            PoolType.GENERAL,
            5000,
            description="Interleaves reasoning with tool calls until it can answer.",
            examples=('dspy.ReAct("question -> answer", tools=[search])(question="Who wrote Dune?")',),
        ),
        _core(
            "dspy.ProgramOfThought",
            "dspy.predict.program_of_thought:ProgramOfThought",
            Category.REASONING,
            ("complex_reasoning", "code_generation"),
            Requirements(memory="high", compute="high"),
            PoolType.OPTIMIZER,
            10000,
            description="Writes and runs a program to compute the answer (needs a code sandbox).",
            examples=('dspy.ProgramOfThought("question -> answer")(question="What is 17 * 23?")',),
        ),
        _core(
            "dspy.MIPROv2",
            "dspy.teleprompt.mipro_optimizer_v2:MIPROv2",
            Category.OPTIMIZATION,
            ("hyperparameter_optimization", "prompt_optimization"),
            Requirements(memory="high", compute="very_high"),
            PoolType.OPTIMIZER,
            300_000,
            description="Optimizes instructions and few-shot demos jointly with Bayesian search.",
            examples=("dspy.MIPROv2(metric=exact_match, auto='light').compile(program, trainset=train)",),
        ),
        _core(
            "dspy.ColBERTv2",
            "dspy.dsp.colbertv2:ColBERTv2",
            Category.RETRIEVAL,
            ("semantic_search", "embeddings"),
            Requirements(memory="high", compute="high", gpu=True),
            PoolType.GPU,
            500,
            description="Late-interaction neural retrieval over a ColBERTv2 index.",
            examples=('dspy.ColBERTv2(url="http://localhost:8893/api/search")("query", k=3)',),
        ),
    )


#: The names of the core catalogue, in order.
CORE_MODULE_NAMES: tuple[str, ...] = (
    "dspy.Predict",
    "dspy.ChainOfThought",
    "dspy.ReAct",
    "dspy.ProgramOfThought",
    "dspy.MIPROv2",
    "dspy.ColBERTv2",
)


@cache
def pattern_modules() -> tuple[ModuleInfo, ...]:
    """DSPex's reasoning patterns (`tasks.patterns`): real DSPy modules, served by the general pool.

    Catalogued here like the seed's modules (source ``dspex``), and loaded with what discovery finds,
    so a registry of the seed's catalogue alone stays exactly the seed's: a step names them
    (``module: dspex.TreeOfThoughts``) and they route by these records. Estimates are per example:
    several LM calls each.
    """
    return (
        _core(
            "dspex.SelfCorrectingChainOfThought",
            "tasks.patterns.self_correct:SelfCorrectingChainOfThought",
            Category.REASONING,
            ("reasoning", "step_by_step", "self_correction", "validation"),
            Requirements(memory="medium", compute="medium"),
            PoolType.GENERAL,
            6000,
            description="Chain of thought that validates its outputs (signature or a scorer) and "
            "retries with feedback, up to max_retries times.",
            source="dspex",
            examples=(
                '{"module": "dspex.SelfCorrectingChainOfThought", "signature": "question -> answer: int", '
                '"options": {"max_retries": 2}}',
            ),
        ),
        _core(
            "dspex.TreeOfThoughts",
            "tasks.patterns.tree_of_thoughts:TreeOfThoughts",
            Category.REASONING,
            ("reasoning", "complex_reasoning", "search"),
            Requirements(memory="medium", compute="high"),
            PoolType.GENERAL,
            15000,
            description="Grows reasoning breadth x depth nodes, keeping the best child per level "
            "(scored by a metric or an LM judge).",
            source="dspex",
            examples=(
                '{"module": "dspex.TreeOfThoughts", "signature": "question -> answer", '
                '"options": {"breadth": 3, "depth": 2, "scorer": "judge"}}',
            ),
        ),
        _core(
            "dspex.Ensemble",
            "tasks.patterns.ensemble:Ensemble",
            Category.COMPOSITION,
            ("ensemble", "majority_vote", "self_consistency"),
            Requirements(memory="medium", compute="medium"),
            PoolType.GENERAL,
            5000,
            description="Samples N completions and merges them by majority vote (as dspy.majority) or "
            "by an LM judge.",
            source="dspex",
            examples=(
                '{"module": "dspex.Ensemble", "signature": "question -> answer", '
                '"options": {"n": 5, "merge": "vote"}}',
            ),
        ),
    )


#: The names of the pattern modules, in order.
PATTERN_MODULE_NAMES: tuple[str, ...] = (
    "dspex.SelfCorrectingChainOfThought",
    "dspex.TreeOfThoughts",
    "dspex.Ensemble",
)
