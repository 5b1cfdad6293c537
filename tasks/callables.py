"""Named Python callables a spec may refer to: ReAct tools and BestOfN/Refine reward functions.

A spec comes from users (possibly through the Prefect UI), so it never makes us import whatever it
names. A callable is usable when it was registered in code (``register_callable("search", fn)``),
or when it is an import path ``pkg.mod:attr`` whose root package is listed in the setting
``DSPEX_TRUSTED_IMPORT_ROOTS`` (e.g. ``["my_project"]``), the same trust a user gives by installing
that package. Anything else is a clear error naming the setting.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from dspex.exceptions import PipelineSpecError, UntrustedImportError
from dspex.imports import is_import_path, load_attribute

__all__ = ["callable_names", "register_callable", "resolve_callable", "unregister_callable"]

_registered: dict[str, Callable[..., Any]] = {}
_lock = threading.Lock()


def register_callable(name: str, fn: Callable[..., Any]) -> None:
    """Make ``fn`` available to specs as ``name`` (a tool or a reward function).

    Args:
        name: The name specs use.
        fn: The callable. Its name and docstring describe it to ReAct.
    """
    if not callable(fn):
        raise TypeError(f"{name!r}: {fn!r} is not callable")
    with _lock:
        _registered[name] = fn


def unregister_callable(name: str) -> None:
    """Forget a registered callable (no error when absent)."""
    with _lock:
        _registered.pop(name, None)


def callable_names() -> list[str]:
    """The registered names, sorted."""
    with _lock:
        return sorted(_registered)


def resolve_callable(ref: str) -> Callable[..., Any]:
    """The callable a spec names.

    Args:
        ref: A registered name, or a trusted import path ``pkg.mod:attr``.

    Raises:
        PipelineSpecError: Unknown name, untrusted or malformed import path, or not callable.
    """
    with _lock:
        if ref in _registered:
            return _registered[ref]
    if not is_import_path(ref):
        known = ", ".join(callable_names()) or "none registered"
        raise PipelineSpecError(f"unknown callable {ref!r} (registered: {known})")
    try:
        fn = load_attribute(ref, what="callable")
    except UntrustedImportError as exc:
        raise UntrustedImportError(
            f"{exc}; or register it in code with tasks.callables.register_callable"
        ) from None
    except (ImportError, AttributeError) as exc:
        raise PipelineSpecError(f"cannot load {ref!r}: {exc}") from exc
    if not callable(fn):
        raise PipelineSpecError(f"{ref!r} is not callable")
    return fn
