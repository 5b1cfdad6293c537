"""Build the DSPy module a pipeline step names.

Only modules the registry knows are built: DSPy's own (``dspy.ChainOfThought``) by their import
path in the registry record, and user programs (``pkg.mod:Program``) that were registered in code.
The registry is the allowlist: a spec (which may come from the Prefect UI) never imports anything
else. Built modules are cached per process by the step's configuration, because building
a module parses its signature and, for user programs, may load saved state.
"""

from __future__ import annotations

import inspect
import json
import shutil
import threading
from dataclasses import dataclass
from typing import Any

import dspy

from dspex.exceptions import PipelineSpecError, SandboxUnavailableError, UntrustedImportError
from dspex.imports import load_attribute, trusted_roots
from tasks.callables import resolve_callable

__all__ = [
    "ProgramFields",
    "build_module",
    "check_program_step",
    "module_class",
    "program_class",
    "program_fields",
    "program_input_names",
    "read_program_state",
    "sandbox_available",
]

# DSPy's own classes are always importable by their registry import path.
_DSPY_ROOTS = ("dspy",)

# Modules whose generated code must run in DSPy's Deno/Pyodide sandbox.
_CODE_RUNNERS = {"ProgramOfThought", "CodeAct"}
# Modules that wrap another module (built from the step's signature with options["inner"]).
_WRAPPERS = {"BestOfN", "Refine"}

_cache: dict[str, dspy.Module] = {}
_cache_lock = threading.Lock()


def module_class(name: str) -> type:
    """The class a registry name stands for, loaded from the registry record's import path.

    Only DSPy's own classes (root ``dspy``) and classes under ``DSPEX_TRUSTED_IMPORT_ROOTS`` are ever
    imported; the standard library never is, whatever a record says (see `dspex.imports`).

    Args:
        name: A registry name (``dspy.Predict``) or a registered user import path.

    Raises:
        UnknownModuleError: The registry does not know ``name``.
        UntrustedImportError: The record's import path is not allowed (nothing was imported).
        PipelineSpecError: The record's import path does not load to a class.
    """
    import registry

    info = registry.get_module(name)
    path = info.metadata.import_path or (name if ":" in name else None)
    if path is None:
        module_name, _, attr = name.rpartition(".")
        path = f"{module_name}:{attr}"
    what = "user program" if info.metadata.source == "user" else "module"
    try:
        allowed = (*_DSPY_ROOTS, "tasks") if path in _pattern_paths() else _DSPY_ROOTS
        obj: Any = load_attribute(path, also_allowed=allowed, what=what)
    except (ImportError, AttributeError) as exc:
        raise PipelineSpecError(f"cannot load module {name!r} from {path!r}: {exc}") from exc
    if not isinstance(obj, type):
        raise PipelineSpecError(f"{name!r} ({path}) is not a class")
    return obj


def _pattern_paths() -> frozenset[str]:
    """The exact import paths of DSPex's own pattern modules (`tasks.patterns`), from the catalogue's
    code, never from a registry file: allowed like DSPy's classes, and nothing else under ``tasks``."""
    from registry.catalogue import pattern_modules

    return frozenset(m.metadata.import_path for m in pattern_modules() if m.metadata.import_path)


def program_class(name: str) -> type[dspy.Module]:
    """`module_class`, checked to be a ``dspy.Module`` subclass defined under an allowed root.

    This runs before the class is instantiated with a spec's options, so a record that names some
    other class (``subprocess:Popen`` smuggled in under a trusted package) never gets called.

    Raises:
        UntrustedImportError: Not a ``dspy.Module`` subclass, or defined outside the allowed roots.
    """
    cls = module_class(name)
    if not issubclass(cls, dspy.Module):
        raise UntrustedImportError(
            f"{name!r} is {cls.__module__}.{cls.__qualname__}, not a dspy.Module subclass"
        )
    root = str(getattr(cls, "__module__", "")).split(".")[0]
    own = f"{cls.__module__}:{cls.__qualname__}" in _pattern_paths()
    if not own and root not in _DSPY_ROOTS and root not in trusted_roots():
        raise UntrustedImportError(
            f"{name!r} resolves to {cls.__module__}.{cls.__qualname__}, defined outside the trusted roots"
        )
    return cls


@dataclass(frozen=True)
class ProgramFields:
    """What a user program declares about its fields, read from its class (never by running it).

    Attributes:
        required: ``forward``'s named parameters without a default (the row fields it needs).
        optional: Its named parameters with a default.
        open: Whether ``forward`` also takes ``**kwargs`` or ``*args`` (any input goes).
        outputs: The outputs of the program's ``signature`` attribute, if it declares one.
    """

    required: tuple[str, ...]
    optional: tuple[str, ...]
    open: bool
    outputs: tuple[str, ...] | None


def program_fields(name: str) -> ProgramFields:
    """The fields a registered user program declares (`ProgramFields`).

    Raises:
        UntrustedImportError: The program may not be imported, or is not a ``dspy.Module``.
        PipelineSpecError: It cannot be loaded.
    """
    cls = program_class(name)  # not cached: the trust check runs every time
    required: list[str] = []
    optional: list[str] = []
    open_ = False
    try:
        parameters = list(inspect.signature(cls.forward).parameters.values())[1:]  # without self
    except (TypeError, ValueError):
        parameters, open_ = [], True
    for parameter in parameters:
        if parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
            open_ = True
        elif parameter.default is parameter.empty:
            required.append(parameter.name)
        else:
            optional.append(parameter.name)
    return ProgramFields(tuple(required), tuple(optional), open_, _declared_outputs(cls))


def _declared_outputs(cls: type) -> tuple[str, ...] | None:
    declared = getattr(cls, "signature", None)
    if isinstance(declared, str):
        from tasks.signatures import parse_signature

        return tuple(parse_signature(declared).output_names)
    if isinstance(declared, type) and issubclass(declared, dspy.Signature):
        return tuple(getattr(declared, "output_fields", {}))
    return None


def program_input_names(step: Any) -> list[str]:
    """The inputs of a user-program step without a signature: ``forward``'s required parameters
    and the ones its ``inputs`` mapping names (only the mapping when the program cannot be loaded
    here, e.g. an orchestrator without the package)."""
    mapped = list(step.inputs)
    try:
        fields = program_fields(step.module)
    except UntrustedImportError:
        raise
    except (PipelineSpecError, LookupError):
        return mapped
    return list(dict.fromkeys([*fields.required, *mapped]))


def check_program_step(step: Any) -> None:
    """Reject, before any row runs, a user-program step whose fields cannot line up.

    - no ``signature``, no ``inputs`` and a ``forward(**kwargs)``: nothing says what to pass;
    - a ``signature`` input that ``forward`` does not accept;
    - a ``signature`` output the program's own declared signature does not produce.

    A program that cannot be imported here is checked when it runs instead (a distributed
    orchestrator may not have the package); one that may not be imported is refused now.

    Raises:
        PipelineSpecError: The step cannot work (names it and what to change).
        UntrustedImportError: The program may not be imported.
    """
    try:
        fields = program_fields(step.module)
    except UntrustedImportError:
        raise
    except PipelineSpecError:
        return
    accepted = {*fields.required, *fields.optional}
    if step.signature is None:
        if fields.open and not fields.required and not step.inputs:
            raise PipelineSpecError(
                f"{step.module}.forward takes **kwargs, so its inputs cannot be inferred: give the step a "
                "'signature' ('question -> answer') or an 'inputs' mapping",
                step=step.name,
            )
        return
    spec = step.signature_spec()
    unknown = [n for n in spec.input_names if n not in accepted] if not fields.open else []
    if unknown:
        raise PipelineSpecError(
            f"signature inputs {unknown} are not parameters of {step.module}.forward "
            f"({sorted(accepted) or 'none'})",
            step=step.name,
        )
    if fields.outputs is not None:
        missing = [n for n in spec.output_names if n not in fields.outputs]
        if missing:
            raise PipelineSpecError(
                f"signature outputs {missing} are not produced by {step.module}, whose signature declares "
                f"{list(fields.outputs)}",
                step=step.name,
            )


def sandbox_available() -> bool:
    """Whether DSPy's code sandbox (Deno running Pyodide) can start here."""
    if shutil.which("deno"):
        return True
    try:
        from deno import find_deno_bin  # the optional 'deno' PyPI package ships the binary
    except ImportError:
        return False
    try:
        return bool(find_deno_bin())
    except (OSError, RuntimeError):
        return False


def build_module(step: Any) -> dspy.Module:
    """The DSPy module for a module step, cached per step configuration.

    Args:
        step: A `flows.spec.ModuleStep` (anything with its fields).

    Raises:
        SandboxUnavailableError: The module runs generated code and no sandbox is available.
        PipelineSpecError: Options the module does not accept, an unknown tool or reward.
    """
    key = json.dumps(step.model_dump(mode="json", exclude={"name", "batch_size", "pool"}), sort_keys=True)
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    module = _with_state(_build(step), step)
    with _cache_lock:
        _cache.setdefault(key, module)
    return module


def _build(step: Any) -> dspy.Module:
    if step.module.split(".")[0] == "dspy" and step.module.rsplit(".", 1)[-1] == "Parallel":
        cls: type = module_class(step.module)  # dspy.Parallel wraps an inner module (checked below)
    else:
        cls = program_class(step.module)
    short = cls.__name__
    options = dict(step.options)
    if short in _CODE_RUNNERS and not sandbox_available():
        raise SandboxUnavailableError(
            f"{step.module} runs LM-generated code, which DSPex runs only inside DSPy's Deno/Pyodide "
            "sandbox, and no 'deno' executable was found. Enable it with `pip install deno` (or install "
            "Deno and put it on PATH); DSPex never falls back to an unsandboxed interpreter."
        )
    try:
        if ":" in step.module:
            return cls(**options)
        signature = _signature(step)
        if short == "ReAct":
            tools = [resolve_callable(name) for name in step.tools]
            if not tools:
                raise PipelineSpecError("ReAct needs at least one tool in 'tools'", step=step.name)
            return cls(signature, tools=tools, **options)
        if short in _WRAPPERS:
            if not step.reward:
                raise PipelineSpecError(f"{short} needs a 'reward' function", step=step.name)
            inner_name = options.pop("inner", "dspy.Predict")
            inner = program_class(inner_name)(signature)
            options.setdefault("N", 3)
            options.setdefault("threshold", 1.0)
            return cls(module=inner, reward_fn=resolve_callable(step.reward), **options)
        if short == "MultiChainComparison":
            return _MultiChain(signature, **options)
        if short == "Parallel":
            inner_name = options.pop("inner", "dspy.Predict")
            return program_class(inner_name)(signature, **options)
        return cls(signature, **options)
    except TypeError as exc:
        raise PipelineSpecError(
            f"{step.module} rejected its options {sorted(options)}: {exc}", step=step.name
        ) from exc


def _with_state(program: dspy.Module, step: Any) -> dspy.Module:
    """Load the step's saved state (demos, instructions) into a freshly built module."""
    if not step.state:
        return program
    state = read_program_state(step.state)
    try:
        program.load_state(state)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PipelineSpecError(
            f"saved state {step.state[:200]} does not fit {step.module}: {type(exc).__name__}: {exc}",
            step=step.name,
        ) from exc
    return program


def _signature(step: Any) -> type[dspy.Signature]:
    from tasks.signatures import parse_signature

    spec = parse_signature(step.signature, instructions=step.instructions)
    return spec.to_dspy()


def read_program_state(location: str) -> dict[str, Any]:
    """A program's saved state: a JSON file (path or fsspec URL) or a `PayloadRef` (its JSON).

    Never unpickles anything: the state is JSON, or a MessagePack payload holding a dict.

    Raises:
        PipelineSpecError: Nothing at ``location``, or it does not hold a JSON object.
    """
    text = location.strip()
    if text.startswith("{"):
        from tasks.payloads import PayloadRef, read_payload

        try:
            ref = PayloadRef.model_validate_json(text)
        except ValueError as exc:
            raise PipelineSpecError(
                f"program state is neither a path nor a payload reference: {exc}"
            ) from exc
        state = read_payload(ref)
    else:
        import fsspec

        from tasks.payloads.confine import check_data_read

        check_data_read(text, "saved program state")
        try:
            with fsspec.open(text, "rt", encoding="utf-8") as handle:
                state = json.load(handle)
        except FileNotFoundError as exc:
            raise PipelineSpecError(f"saved program state not found: {text}") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PipelineSpecError(f"saved program state is not valid JSON: {text}: {exc}") from exc
    if not isinstance(state, dict):
        raise PipelineSpecError(f"saved program state must be a JSON object: {text[:200]}")
    return state


class _MultiChain(dspy.Module):
    """MultiChainComparison as a step: M reasoning attempts, then DSPy's comparison of them.

    DSPy's ``MultiChainComparison`` compares completions it is given; a pipeline row only has the
    inputs, so the attempts come from ``ChainOfThought`` with distinct rollout ids (as BestOfN does).
    """

    def __init__(self, signature: type[dspy.Signature], M: int = 3, temperature: float = 0.7) -> None:
        super().__init__()
        self.M = M
        self.attempt = dspy.ChainOfThought(signature)
        self.compare = dspy.MultiChainComparison(signature, M=M, temperature=temperature)

    def forward(self, **kwargs: Any) -> dspy.Prediction:
        lm = self.attempt.get_lm() or dspy.settings.lm
        completions = []
        for rollout in range(self.M):
            with dspy.context(lm=lm.copy(rollout_id=rollout, temperature=1.0)):
                completions.append(self.attempt(**kwargs))
        return self.compare(completions, **kwargs)
