"""Where DSPex may read when a location arrives through the Prefect API, and how that is decided.

**Which reads are fenced.** The fence guards values that come through the Prefect API: a deployment
run's parameters (the UI's form, the API, a schedule, ``run_deployment``), a worker's ``run-step``
parameters, session turns dispatched to workers. That is where one person can make another person's
machine read a file: a `PayloadRef` whose ``uri`` is ``file:///etc/shadow`` would answer with the
file's size and checksum, a dataset path would read any file the worker can reach, an ``http://``
URL would become a request from inside the network. A read is *fenced* when

1. it runs inside `fenced()`: the ``run-step`` flow enters it, since a worker's batch parameters
   come from whoever can create flow runs;
2. it runs inside a Prefect flow run that a deployment started, or a flow nested in one
   (`in_deployment_run`): every ``prefect.yaml`` deployment, whatever flow it runs;
3. ``DSPEX_READ_FENCE=all``: a strict setting that fences local callers too.

Everything else is a **local caller**: the ``dspex`` command line (``dspex run spec.yaml
/tmp/x/d.jsonl``, ``dspex show``, ``dspex session turn ... q=@notes.txt``), a Python call
(``run_pipeline(spec, data="/tmp/x/d.jsonl")``, ``Dataset.from_path``), a flow called as a function.
It reads what the person running it can read, as ``open()`` would: the person who typed the path can
already read the file, so a fence there only refuses them their own work. Inside a fence, a location
*this process* wrote (`remember_written`, called by every write of `tasks.payloads.storage`) is
readable too, so ``read_payload(write_payload(rows, base_url=folder))`` always reads back. What is
served without a read (rows resume reuses, a corpus already cached in this process) is checked as a
fresh read would be (`check_step_reads`).

**Where fenced reads may go** (a refusal is `PayloadAccessError`):

- **payloads** (`check_payload_read`): under the payload root (``DSPEX_PAYLOAD_URL``, default
  ``<DSPEX_HOME>/payloads``) or a data root;
- **datasets, corpora, program states, input files** (`check_data_read`): under a data root.
  ``DSPEX_DATA_ROOTS`` lists them (local folders or URL prefixes such as ``s3://bucket/data/`` or
  ``https://host/data/``); by default: the project folder (the current directory), the payload root
  and the data bundled with DSPex. Remote schemes, ``http(s)://`` included, are read only under a
  root that names them.

**How a location is compared.** It is parsed by fsspec's own rules (``fsspec.core.split_protocol``
and ``strip_protocol``), so the check sees the file storage will open: ``file:/etc/shadow`` and
``local:///etc/shadow`` are ``/etc/shadow``, not a file of that name in the project. Local paths are
compared after resolving ``..`` and symlinks. A chained URL (``simplecache::/x``,
``zip://member::file:///a.zip``) is refused: its links are fsspec's wrappers (caches, archives)
whose reads a prefix check cannot follow. A URL has its credentials dropped and its path
percent-decoded (until it no longer changes) before the prefix check; a URL with a dot segment
(``..``, ``.``, ``..;``), a backslash or a control character, encoded or not, is refused outright,
and repeated slashes count as one. A refusal names the location the caller gave and the roots,
never whether the file exists, its size or its checksum.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem

from dspex.exceptions import PayloadAccessError
from dspex.redact import redact_url
from dspex.settings import Settings, get_settings

__all__ = [
    "check_data_read",
    "check_payload_read",
    "check_step_reads",
    "data_roots",
    "fenced",
    "in_deployment_run",
    "is_within",
    "reads_fenced",
    "remember_written",
]

# Data shipped inside DSPex (the demo's questions and corpus): always readable.
_BUNDLED = Path(__file__).resolve().parents[1] / "data"

# Set by `fenced()`; there is deliberately no way to lift a fence from inside it.
_FENCED: ContextVar[bool] = ContextVar("dspex_read_fenced", default=False)


@contextmanager
def fenced() -> Iterator[None]:
    """Fence every read in this block (and in threads and flows started from it).

    The entry points whose values arrive through the Prefect API enter it (``run-step``); see the
    module docstring for the rest.
    """
    token = _FENCED.set(True)
    try:
        yield
    finally:
        _FENCED.reset(token)


def in_deployment_run() -> bool:
    """Whether this code runs in a Prefect flow run that a deployment started, or in a flow nested
    in one (its parameters came through the Prefect API)."""
    context = sys.modules.get("prefect.context")
    if context is None:  # Prefect is not even imported: no flow run here
        return False
    run = context.FlowRunContext.get()
    if run is not None and run.flow_run is not None and run.flow_run.deployment_id is not None:
        return True
    # A nested flow's own run has no deployment; Prefect 3.8 keeps the top-level run's deployment id
    # in this context variable for exactly that case (tests/security pins it with a nested flow).
    inherited = getattr(context, "_deployment_id", None)
    return inherited is not None and inherited.get() is not None


def reads_fenced(settings: Settings | None = None) -> bool:
    """Whether a read here is fenced (see the module docstring).

    Args:
        settings: The settings to use for ``DSPEX_READ_FENCE``; default the current ones.
    """
    if _FENCED.get() or in_deployment_run():
        return True
    mode = settings.read_fence if settings is not None else _cached_settings()[2]
    return mode == "all"


# --- what this process wrote -----------------------------------------------------------------
_WRITTEN_MAX = 100_000  # a long-lived worker writes without end: the oldest are forgotten
_written: OrderedDict[tuple[str, str], None] = OrderedDict()
_written_lock = threading.Lock()


def remember_written(location: str) -> None:
    """Record that this process wrote ``location``, so a fenced read of it is allowed.

    Args:
        location: The path or URL just written (after the write: local paths resolve to the file).
    """
    key = _split(location)
    if not key[1]:
        return
    with _written_lock:
        _written[key] = None
        _written.move_to_end(key)
        while len(_written) > _WRITTEN_MAX:
            _written.popitem(last=False)


def _was_written(key: tuple[str, str]) -> bool:
    with _written_lock:
        return key in _written


# --- parsing -----------------------------------------------------------------------------------
_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")  # control characters and backslashes
_SLASHES = re.compile(r"/{2,}")


def data_roots(settings: Settings | None = None) -> list[str]:
    """The roots datasets, corpora and saved states may be read from in a fenced read.

    Args:
        settings: The settings to use; default `get_settings()`.
    """
    settings = settings or get_settings()
    configured = settings.data_roots
    roots = list(configured) if configured is not None else [os.getcwd(), settings.resolved_payload_url]
    return [*roots, str(_BUNDLED)]


def _split(location: str) -> tuple[str, str]:
    """``("local", real path)``, ``("url", scheme://host/path)``, or ``(kind, "")`` for a location
    that lies inside nothing (a chain, an ambiguous URL)."""
    text = location.strip()
    if "::" in text:
        return "chain", ""  # fsspec's chain separator: never inside anything
    protocol, _ = fsspec.core.split_protocol(text)
    try:
        local = issubclass(fsspec.get_filesystem_class(protocol or "file"), LocalFileSystem)
    except (ValueError, ImportError):  # unknown protocol, or its backend is not installed
        local = False
    if local:
        # fsspec's own reading of the path (file:, local:, ~), then symlinks and .. resolved.
        return "local", os.path.realpath(fsspec.core.strip_protocol(text))
    return "url", _normal_url(text)


def _normal_url(text: str) -> str:
    """``scheme://host[:port]/path`` with the path percent-decoded, or "" when it is ambiguous."""
    if _CONTROL.search(text):
        return ""
    try:
        parts = urlsplit(text)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # a port that is not a number, a malformed IPv6 host
        return ""
    path = parts.path
    for _ in range(8):  # %252e%252e decodes to %2e%2e, then to ..: decode until nothing changes
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    else:
        return ""
    if _CONTROL.search(path):
        return ""
    if any(segment.split(";", 1)[0] in (".", "..") for segment in path.split("/")):
        return ""  # a dot segment: the server may resolve it out of any prefix
    host = (parts.hostname or "").lower()
    return f"{parts.scheme.lower()}://{host}{port}{_SLASHES.sub('/', path)}"


def is_within(location: str, roots: list[str]) -> bool:
    """Whether ``location`` lies under one of ``roots`` (see the module docstring for how).

    Args:
        location: A local path, ``file://`` URL or fsspec URL.
        roots: Local folders or URL prefixes.
    """
    kind, place = _split(location)
    if not place:
        return False
    for root in roots:
        root_kind, root_place = _split(str(root))
        if root_kind != kind or not root_place:
            continue
        if kind == "local":
            if place == root_place or place.startswith(root_place.rstrip(os.sep) + os.sep):
                return True
        elif place == root_place.rstrip("/") or place.startswith(root_place.rstrip("/") + "/"):
            return True
    return False


def _refuse(what: str, location: str, roots: list[str], setting: str) -> PayloadAccessError:
    shown = ", ".join(redact_url(r) for r in roots)
    chained = " (chained fsspec URLs are read only for local callers)" if "::" in location else ""
    return PayloadAccessError(
        f"{what} {redact_url(location)!r} is outside the folders DSPex may read for a run started "
        f"through the Prefect API ({shown}){chained}; to allow it, add its folder or URL prefix to "
        f"{setting}"
    )


# Building the settings costs milliseconds and every payload read is checked: the roots are kept
# while the DSPEX_* environment and the working directory stay the same (and at most _ROOTS_TTL s,
# for a changed .env file).
_ROOTS_TTL = 30.0
_settings_cache: tuple[tuple[object, ...], float, tuple[list[str], list[str], str]] | None = None


def _cached_settings() -> tuple[list[str], list[str], str]:
    """(payload roots, data roots, read fence mode) of the current settings."""
    global _settings_cache
    fingerprint = (os.getcwd(), *sorted((k, v) for k, v in os.environ.items() if k.startswith("DSPEX_")))
    now = time.monotonic()
    cached = _settings_cache
    if cached is not None and cached[0] == fingerprint and now - cached[1] < _ROOTS_TTL:
        return cached[2]
    settings = get_settings()
    data = data_roots(settings)
    value = ([settings.resolved_payload_url, *data], data, settings.read_fence)
    _settings_cache = (fingerprint, now, value)
    return value


def _allowed(location: str, roots: list[str]) -> bool:
    return is_within(location, roots) or _was_written(_split(location))


def check_payload_read(uri: str, settings: Settings | None = None) -> None:
    """In a fenced read, refuse a payload stored outside the payload root and the data roots.

    Args:
        uri: The payload's location.
        settings: The settings to use; default the current ones.

    Raises:
        PayloadAccessError: It is outside (nothing was read or looked up).
    """
    if not reads_fenced(settings):
        return
    roots = (
        _cached_settings()[0] if settings is None else [settings.resolved_payload_url, *data_roots(settings)]
    )
    if not _allowed(uri, roots):
        raise _refuse("payload", uri, roots, "DSPEX_PAYLOAD_URL or DSPEX_DATA_ROOTS")


def check_step_reads(step: Any) -> None:
    """In a fenced read, check a step's own locations: a retrieve step's ``corpus``, a module step's
    saved ``state`` (a path or a `PayloadRef`'s JSON).

    For what is served without a read (rows reused from an earlier run, a corpus a local caller
    already loaded into this process's cache) the fence must hold as it does for a fresh read.

    Raises:
        PayloadAccessError: One of them is outside.
    """
    if not reads_fenced():
        return
    for value, what in (
        (getattr(step, "corpus", None), "corpus"),
        (getattr(step, "state", None), "program state"),
    ):
        if isinstance(value, str) and value.strip().startswith("{"):
            try:
                value = json.loads(value)
            except ValueError:
                continue  # not a ref: its read fails with its own error
        if isinstance(value, dict):
            uri, inline = value.get("uri"), value.get("inline")
            if isinstance(uri, str) and inline is None:  # inline bytes travel in the ref: nothing is read
                check_payload_read(uri)
        elif isinstance(value, str) and value != "demo":
            check_data_read(value, what)


def check_data_read(location: str, what: str = "file", settings: Settings | None = None) -> None:
    """In a fenced read, refuse a dataset, corpus, saved state or input file outside the data roots.

    Args:
        location: The path or URL about to be read.
        what: What it is, for the message (``dataset``, ``corpus``, ``program state``).
        settings: The settings to use; default the current ones.

    Raises:
        PayloadAccessError: It is outside (nothing was read or looked up).
    """
    if not reads_fenced(settings):
        return
    roots = data_roots(settings) if settings is not None else _cached_settings()[1]
    if not _allowed(location, roots):
        raise _refuse(what, location, roots, "DSPEX_DATA_ROOTS")
