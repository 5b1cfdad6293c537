"""Import paths a spec or the registry may name, and the one gate every such import passes.

A spec can come from anyone who can reach the Prefect UI, and the registry file from anyone who can
write it, so a ``pkg.mod:attr`` string is never imported just because it is well formed:

- the grammar lives here, once (`IMPORT_PATH`, `is_import_path`): ``pkg.mod:attr`` or
  ``pkg.mod:Outer.attr``, Python identifiers only, no keywords, no private (``_``) attribute parts;
- its top-level package must be allowed: listed in ``DSPEX_TRUSTED_IMPORT_ROOTS`` (the trust a user
  gives by installing that package), or one the caller always allows (``dspy`` for DSPy's own
  classes);
- the standard library and Python's startup hooks (``os:system``, ``subprocess:Popen``,
  ``builtins:eval``, ``site``) are never allowed, even when listed: no pipeline step needs them and they
  are exactly what an attacker would name.

`load_attribute` imports only after every check passed.
"""

from __future__ import annotations

import importlib
import keyword
import re
import sys
from collections.abc import Iterable
from typing import Any

from dspex.exceptions import UntrustedImportError

__all__ = [
    "IMPORT_PATH",
    "check_import_path",
    "is_import_path",
    "load_attribute",
    "refused_root",
    "split_import_path",
    "trusted_roots",
]

#: ``pkg.mod:attr`` (the attribute may be dotted: ``pkg.mod:Outer.Inner``); the one grammar.
IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")

# Roots outside the standard library that still hand over the interpreter: startup hooks and the
# module every script runs as.
_ALWAYS_REFUSED = frozenset({"__main__", "builtins", "site", "sitecustomize", "usercustomize", "_io"})


def is_import_path(text: object) -> bool:
    """Whether ``text`` has the ``pkg.mod:attr`` form (checked without importing anything).

    Private attribute parts (``pkg.mod:_helper``, ``pkg.mod:x.__class__``) and keywords are refused:
    they are how a well-formed path reaches what its module did not mean to export.

    Args:
        text: The candidate import path.
    """
    if not isinstance(text, str) or not IMPORT_PATH.match(text):
        return False
    module, _, attribute = text.partition(":")
    parts = [*module.split("."), *attribute.split(".")]
    return all(not keyword.iskeyword(p) for p in parts) and not any(
        p.startswith("_") for p in attribute.split(".")
    )


def split_import_path(text: str) -> tuple[str, str]:
    """``("pkg.mod", "attr")`` of a well-formed import path.

    Raises:
        UntrustedImportError: ``text`` is not an import path.
    """
    if not is_import_path(text):
        raise UntrustedImportError(f"{text!r} is not an import path 'pkg.mod:attr'")
    module, _, attribute = text.partition(":")
    return module, attribute


def refused_root(root: str) -> str | None:
    """Why a top-level package may never be imported by name from a spec, or None if it may.

    Args:
        root: A top-level package name (``os``, ``my_project``).
    """
    if root in _ALWAYS_REFUSED or root.startswith("_"):
        return f"{root!r} is an interpreter hook"
    if root in sys.stdlib_module_names:
        return f"{root!r} is part of Python's standard library"
    return None


def trusted_roots(configured: Iterable[str] | None = None) -> frozenset[str]:
    """The top-level packages specs may import from: ``DSPEX_TRUSTED_IMPORT_ROOTS``.

    Args:
        configured: The roots to use; default the setting.

    Raises:
        UntrustedImportError: The setting lists a standard-library or interpreter root, which is
            never trusted (say so rather than silently ignore it).
    """
    if configured is None:
        from dspex.settings import get_settings

        configured = get_settings().trusted_import_roots
    roots = frozenset(configured)
    for root in sorted(roots):
        reason = refused_root(root)
        if reason:
            raise UntrustedImportError(
                f"DSPEX_TRUSTED_IMPORT_ROOTS lists {root!r}, which is never trusted: {reason}; "
                "list only your own packages"
            )
    return roots


def check_import_path(path: str, *, also_allowed: Iterable[str] = (), what: str = "import path") -> str:
    """Check that ``path`` may be imported, without importing anything.

    Args:
        path: ``pkg.mod:attr``.
        also_allowed: Roots allowed besides the trusted ones (``("dspy",)`` for DSPy's classes).
        what: What the path names, for the message (``user program``, ``tool``).

    Returns:
        The path's top-level package.

    Raises:
        UntrustedImportError: A malformed path, a refused root, or a root that is not trusted.
    """
    module, _ = split_import_path(path)
    root = module.split(".")[0]
    reason = refused_root(root)
    if reason:
        raise UntrustedImportError(f"{what} {path!r} is refused: {reason}")
    if root not in set(also_allowed) | trusted_roots():
        raise UntrustedImportError(
            f"{what} {path!r} is not trusted: add {root!r} to DSPEX_TRUSTED_IMPORT_ROOTS "
            "(a JSON list of your own top-level packages) to allow it"
        )
    return root


def load_attribute(path: str, *, also_allowed: Iterable[str] = (), what: str = "import path") -> Any:
    """Import ``pkg.mod`` and return its ``attr``, after `check_import_path` allowed it.

    Raises:
        UntrustedImportError: The path is not allowed (nothing was imported).
        ImportError, AttributeError: It is allowed but does not load.
    """
    check_import_path(path, also_allowed=also_allowed, what=what)
    module_name, attribute = split_import_path(path)
    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj
