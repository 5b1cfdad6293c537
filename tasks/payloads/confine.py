"""Where DSPex may read: payloads from the payload root, datasets, corpora and saved states from the
data roots, and nowhere else.

A `PayloadRef`, a dataset path or a step's ``state`` can come from a Prefect UI form or a run's
parameters, and a worker reads with its own rights; without a fence, ``file:///etc/shadow`` would
answer with the file's size and checksum (an oracle), a dataset path would read any file, and an
``http://`` URL would become a request from inside the network. So every read passes one check:

- **payloads** (`check_payload_read`): under the payload root (``DSPEX_PAYLOAD_URL``, default
  ``<DSPEX_HOME>/payloads``) or a data root;
- **datasets, corpora, program states** (`check_data_read`): under a data root.
  ``DSPEX_DATA_ROOTS`` lists them (local folders or URL prefixes such as ``s3://bucket/data/`` or
  ``https://host/data/``); by default: the project folder (the current directory), the payload root
  and the data bundled with DSPex. Remote schemes, ``http(s)://`` included, are read only under a
  root that names them.

Local locations are compared after resolving ``..`` and symlinks; URLs after dropping credentials, and
a URL with a ``..`` segment is refused outright. A refusal (`PayloadAccessError`) names the location
the caller gave and the roots, never whether the file exists, its size or its checksum.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import urlsplit

from dspex.exceptions import PayloadAccessError
from dspex.redact import redact_url
from dspex.settings import Settings, get_settings

__all__ = ["check_data_read", "check_payload_read", "data_roots", "is_within"]

# Data shipped inside DSPex (the demo's questions and corpus): always readable.
_BUNDLED = Path(__file__).resolve().parents[1] / "data"


def data_roots(settings: Settings | None = None) -> list[str]:
    """The roots datasets, corpora and saved states may be read from.

    Args:
        settings: The settings to use; default `get_settings()`.
    """
    settings = settings or get_settings()
    configured = settings.data_roots
    roots = list(configured) if configured is not None else [os.getcwd(), settings.resolved_payload_url]
    return [*roots, str(_BUNDLED)]


def _split(location: str) -> tuple[str, str]:
    """``("local", real path)`` or ``("url", scheme://host/path without credentials)``."""
    text = location.strip()
    if "://" in text:
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme == "file":
            return "local", os.path.realpath(parts.path or "/")
        if ".." in parts.path.split("/"):
            return "url", ""  # never inside anything
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return "url", f"{scheme}://{host.lower()}{port}{parts.path}"
    return "local", os.path.realpath(os.path.expanduser(text))


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
    return PayloadAccessError(
        f"{what} {redact_url(location)!r} is outside the folders DSPex may read ({shown}); "
        f"to allow it, add its folder or URL prefix to {setting}"
    )


# Building the settings costs milliseconds and every payload read is checked: the roots are kept
# while the DSPEX_* environment and the working directory stay the same (and at most _ROOTS_TTL s,
# for a changed .env file).
_ROOTS_TTL = 30.0
_roots_cache: tuple[tuple[object, ...], float, list[str], list[str]] | None = None


def _cached_roots() -> tuple[list[str], list[str]]:
    """(payload roots, data roots) of the current settings."""
    global _roots_cache
    fingerprint = (os.getcwd(), *sorted((k, v) for k, v in os.environ.items() if k.startswith("DSPEX_")))
    now = time.monotonic()
    cached = _roots_cache
    if cached is not None and cached[0] == fingerprint and now - cached[1] < _ROOTS_TTL:
        return cached[2], cached[3]
    settings = get_settings()
    data = data_roots(settings)
    payload = [settings.resolved_payload_url, *data]
    _roots_cache = (fingerprint, now, payload, data)
    return payload, data


def check_payload_read(uri: str, settings: Settings | None = None) -> None:
    """Refuse to read a payload stored outside the payload root and the data roots.

    Raises:
        PayloadAccessError: It is outside (nothing was read or looked up).
    """
    roots = _cached_roots()[0] if settings is None else [settings.resolved_payload_url, *data_roots(settings)]
    if not is_within(uri, roots):
        raise _refuse("payload", uri, roots, "DSPEX_PAYLOAD_URL or DSPEX_DATA_ROOTS")


def check_data_read(location: str, what: str = "file", settings: Settings | None = None) -> None:
    """Refuse to read a dataset, corpus or saved state outside the data roots.

    Args:
        location: The path or URL about to be read.
        what: What it is, for the message (``dataset``, ``corpus``, ``program state``).
        settings: The settings to use; default `get_settings()`.

    Raises:
        PayloadAccessError: It is outside (nothing was read or looked up).
    """
    roots = data_roots(settings) if settings is not None else _cached_roots()[1]
    if not is_within(location, roots):
        raise _refuse(what, location, roots, "DSPEX_DATA_ROOTS")
