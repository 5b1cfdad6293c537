"""Build the DSPy module a pipeline step names.

Only modules the registry knows are built: DSPy's own (``dspy.ChainOfThought``) by their import
path in the registry record, and user programs (``pkg.mod:Program``) that were registered in code.
The registry is the allowlist: a spec (which may come from the Prefect UI) never imports anything
else. Built modules are cached per process by the step's configuration, because building
a module parses its signature and, for user programs, may load saved state.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import logging
import os
import shutil
import sys
import textwrap
import threading
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dspy
from pydantic import BaseModel

from dspex.exceptions import (
    PipelineSpecError,
    ProgramOutputError,
    SandboxUnavailableError,
    UntrustedImportError,
)
from dspex.imports import load_attribute, trusted_roots
from tasks.callables import resolve_callable

__all__ = [
    "ProgramFields",
    "build_module",
    "check_program_step",
    "module_class",
    "program_class",
    "program_fields",
    "program_identity",
    "program_input_names",
    "program_optional_names",
    "program_output_names",
    "read_program_state",
    "returned_fields",
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
# Output names inferred per program and options (building a program to read its predictors is not free).
_outputs_cache: dict[str, tuple[str, ...] | None] = {}
logger = logging.getLogger(__name__)


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


def program_identity(step: Any) -> dict[str, Any]:
    """What a step's answers depend on beyond its spec: the code and saved state it runs (issue 24).

    Part of the resume key (`flows.guards.resume.step_key`), so an edited program, new saved state, or an
    upgraded DSPy never gets an earlier run's answers:

    - ``dspy``: the installed DSPy version (its adapters write the prompts);
    - ``source``: for a user program, a SHA-256 of the source file of every module its class and
      base classes are defined in (outside DSPy); for tools and reward functions, of theirs;
    - ``state``: a SHA-256 of the saved state file's bytes (a payload reference is content-addressed
      already and is part of the spec).

    A file that cannot be read here (a distributed orchestrator without the package) is keyed by
    its absence; the key is then stable on that machine, not a promise about the code.
    """
    identity: dict[str, Any] = {"dspy": getattr(dspy, "__version__", "")}
    files: list[str] = []
    if ":" in str(getattr(step, "module", "")):
        try:
            cls: type = program_class(step.module)
        except (PipelineSpecError, LookupError):
            identity["source"] = "unloadable"
        else:
            files += [f for base in cls.__mro__ if (f := _own_source_file(base)) is not None]
    for name in [*getattr(step, "tools", []), *([step.reward] if getattr(step, "reward", None) else [])]:
        try:
            target = resolve_callable(name)
        except PipelineSpecError:  # an unknown name fails the run itself; here it is keyed by name
            continue
        if (file := _own_source_file(target)) is not None:
            files.append(file)
    if files:
        identity["source"] = {f: _file_digest(f) for f in sorted(set(files))}
    state = getattr(step, "state", None)
    if state and not state.strip().startswith("{"):
        identity["state"] = _state_digest(state.strip())
    return identity


def _own_source_file(obj: Any) -> str | None:
    """The source file of the module ``obj`` is defined in, unless that is DSPy's or the stdlib's."""
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    file = getattr(module, "__file__", None)
    if not file or str(getattr(obj, "__module__", "")).split(".")[0] in (*_DSPY_ROOTS, "builtins"):
        return None
    return os.path.abspath(file)


_digests: dict[tuple[str, int, int], str] = {}


def _file_digest(path: str) -> str:
    """SHA-256 of a file, cached by its path, mtime and size (an edit changes them)."""
    try:
        stat = os.stat(path)
    except OSError:
        return "missing"
    key = (path, stat.st_mtime_ns, stat.st_size)
    found = _digests.get(key)
    if found is None:
        with open(path, "rb") as handle:
            found = _digests[key] = hashlib.sha256(handle.read()).hexdigest()
    return found


def _state_digest(location: str) -> str:
    import fsspec  # as in read_program_state: only a step with saved state needs it

    from tasks.payloads.confine import check_data_read

    try:
        check_data_read(location, "saved program state")  # the same read fence as loading it
        with fsspec.open(location, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except (OSError, ValueError):  # unreadable or fenced off here (PayloadAccessError): the run reports it
        return "unreadable"


def program_optional_names(step: Any) -> list[str]:
    """``forward``'s named parameters with a default, which a row passes when it has the field
    (issue 24: ``style`` in the rows reaches ``forward(question, style="plain")``).

    Only named parameters: a ``forward(**kwargs)`` gets what the step's signature or ``inputs``
    name, never every field of the row (gold labels, ids). Empty for a step that is not a user
    program, or a program that cannot be loaded here.
    """
    if ":" not in str(getattr(step, "module", "")):
        return []
    try:
        fields = program_fields(step.module)
    except (PipelineSpecError, LookupError):
        return []
    return [name for name in fields.optional if name not in fields.required]


def program_output_names(step: Any) -> tuple[str, ...] | None:
    """The outputs of a user program without a step signature, as far as its class tells (issue 24).

    In order: the program's declared ``signature`` attribute; else the fields of the pydantic model
    ``forward``'s return annotation names; else the keys its ``forward`` returns,
    when every ``return`` is a literal ``dspy.Prediction(k=...)`` or ``{"k": ...}``; else the output
    fields of its predictors' signatures (``named_predictors``, read from the instance `build_module`
    builds and caches for the run). None when none of these says anything.
    """
    try:
        cls = program_class(step.module)
    except (PipelineSpecError, LookupError):
        return None
    declared = _declared_outputs(cls)
    if declared is not None:
        return declared
    key = json.dumps([step.module, step.options], sort_keys=True, default=str)
    with _cache_lock:
        if key in _outputs_cache:
            return _outputs_cache[key]
    names = _annotated_fields(cls) or _returned_keys(cls) or _predictor_outputs(step)
    with _cache_lock:
        _outputs_cache[key] = names
    return names


def _annotated_fields(cls: type[dspy.Module]) -> tuple[str, ...] | None:
    """The fields of the pydantic model ``forward`` is annotated to return, if it is one."""
    try:
        returned = typing.get_type_hints(cls.forward).get("return")
    except Exception:  # annotations that do not resolve here say nothing
        return None
    if isinstance(returned, type) and issubclass(returned, BaseModel):
        return tuple(returned.model_fields) or None
    return None


def _returned_keys(cls: type[dspy.Module]) -> tuple[str, ...] | None:
    """The keys of ``forward``'s returns when each is a literal Prediction(...) or dict (else None)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls.forward)))
    except (OSError, TypeError, SyntaxError):
        return None
    keys: list[str] = []
    returns = [node for node in ast.walk(tree) if isinstance(node, ast.Return)]
    for node in returns:
        value = node.value
        if isinstance(value, ast.Call) and getattr(value.func, "attr", getattr(value.func, "id", "")) in (
            "Prediction",
            "dict",
        ):
            if value.args or any(k.arg is None for k in value.keywords):
                return None
            found = [str(k.arg) for k in value.keywords]
        elif isinstance(value, ast.Dict) and all(isinstance(k, ast.Constant) for k in value.keys):
            found = [str(k.value) for k in value.keys if isinstance(k, ast.Constant)]
        else:
            return None
        keys.extend(k for k in found if k not in keys)
    return tuple(keys) or None


def _predictor_outputs(step: Any) -> tuple[str, ...] | None:
    try:
        # The instance the run itself uses (build_module caches it): the program is built once.
        predictors = build_module(step).named_predictors()
    except Exception as exc:  # a user's constructor: whatever it raises, the run reports it later
        logger.debug("cannot build %s to read its predictors: %s", step.module, exc)
        return None
    names: list[str] = []
    for _name, predictor in predictors:
        signature = getattr(predictor, "signature", None)
        for field in getattr(signature, "output_fields", {}) or {}:
            if field not in names:
                names.append(field)
    return tuple(names) or None


def returned_fields(result: Any, step: Any, names: list[str] | None) -> dict[str, Any]:
    """The fields of what a module returned: a ``dspy.Prediction`` (or Example), a mapping, a
    pydantic model, or a ``str`` (issue 24).

    A ``str`` is the value of the step's single output: the sole output of its signature, else of
    the program's (declared or inferred, `program_output_names`), else ``output``.

    Args:
        result: The module's return value.
        step: The module step.
        names: The step signature's output names (None without a signature).

    Raises:
        ProgramOutputError: Any other return type (the message names it and what is accepted).
    """
    if isinstance(result, dspy.Prediction | dspy.Example):
        keys = list(result.keys()) or (names or [])
        return {key: result.get(key) for key in keys}
    if isinstance(result, Mapping):
        return {str(key): value for key, value in result.items()}
    if isinstance(result, BaseModel):
        return {name: getattr(result, name) for name in type(result).model_fields}
    if isinstance(result, str):
        outputs = names if names is not None else list(program_output_names(step) or ())
        return {outputs[0] if len(outputs) == 1 else "output": result}
    raise ProgramOutputError(
        f"{step.module} returned a {type(result).__module__}.{type(result).__qualname__}; a module must return "
        "a dspy.Prediction, a dict, a pydantic model or a str"
    )


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
        step: A `flows.engine.spec.ModuleStep` (anything with its fields).

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
