"""One redaction function for everything DSPex shows: settings, row errors, logs, artifacts, states.

Secrets reach text in three shapes, and `redact` masks all three:

- **URL userinfo**: ``http://alice:pw@host/v1``, ``s3://KEY:SECRET@bucket/p`` become
  ``http://***@host/v1``, ``s3://***@bucket/p`` (the user name goes too: for object stores it *is*
  the access key);
- **secret query parameters**: ``?api_key=...``, ``&token=...``, ``X-Amz-Signature=...`` and the like
  keep their name and lose their value;
- **known secret values**: the LM API key from the settings or from the variable they name, the
  password (and ``user:password``) inside every configured URL (`known_secrets`), and
  ``Authorization: Bearer ...`` headers, wherever they appear.

HTTP clients often print a URL's authority without its scheme (DSPy's transport says ``failed to
connect to alice:pw@127.0.0.1:8000``), so a bare ``user:password@host`` is masked too
(``***@127.0.0.1:8000``), and a configured password is masked even when it appears alone.

The shapes are found by `dspex.masking`, which reads no settings (so that `dspex.settings` can show
itself masked); this module adds the values configured here (`known_secrets`) and the log hook.

`redact` is idempotent and cheap on text without ``://``, ``=`` or a known secret (a few regex
scans), so it can run on every log record (`install_log_redaction`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable
from typing import Any

from dspex.masking import MASK, mask_data, mask_text, redact_url, url_secrets
from dspex.settings import URL_SETTINGS, get_settings

__all__ = [
    "MASK",
    "install_log_redaction",
    "known_secrets",
    "redact",
    "redact_data",
    "redact_exception",
    "redact_url",
    "url_secrets",
]


# Building the settings costs milliseconds, and `redact` runs on every log record: the secrets are
# re-read when the variables that name them change, and at least every _SECRETS_TTL seconds (.env).
_SECRETS_TTL = 30.0
_secrets_cache: tuple[tuple[str | None, ...], float, list[str]] | None = None

#: Variables outside DSPex's settings whose value is a URL that may carry a password.
_URL_VARIABLES = (
    "PREFECT_API_URL",
    "PREFECT_API_DATABASE_CONNECTION_URL",
    "PREFECT_SERVER_DATABASE_CONNECTION_URL",
    "PREFECT_UI_API_URL",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)
#: Variables whose whole value is a secret (``PREFECT_API_AUTH_STRING`` is ``user:password``).
_SECRET_VARIABLES = (
    "PREFECT_API_KEY",
    "PREFECT_API_AUTH_STRING",
    "PREFECT_SERVER_API_AUTH_STRING",
    "PREFECT_API_DATABASE_PASSWORD",
    "PREFECT_SERVER_DATABASE_PASSWORD",
)


_WATCHED = (
    "DSPEX_LM_API_KEY_ENV",
    "DSPEX_LM_API_KEY",
    "OPENAI_API_KEY",
    *(f"DSPEX_{name.upper()}" for name in URL_SETTINGS),
    *_URL_VARIABLES,
    *_SECRET_VARIABLES,
)


def _watched() -> tuple[Any, ...]:
    """The values of the variables the secrets come from: when they change, the cache is stale.

    This runs on every log record, so it reads CPython's raw environment mapping when there is one
    (a dict lookup each, ~25x cheaper than ``os.environ.get``, which encodes and decodes).
    """
    raw = getattr(os.environ, "_data", None)
    encode = getattr(os.environ, "encodekey", None)
    if isinstance(raw, dict) and encode is not None:
        values = tuple(raw.get(key) for key in _encoded_watched(encode))
        named = raw.get(values[0]) if values[0] else None  # the variable DSPEX_LM_API_KEY_ENV names
        return (*values, named)
    env_name = os.environ.get("DSPEX_LM_API_KEY_ENV")
    return (*(os.environ.get(name) for name in _WATCHED), os.environ.get(env_name) if env_name else None)


_encoded: tuple[Any, ...] | None = None


def _encoded_watched(encode: Any) -> tuple[Any, ...]:
    global _encoded
    if _encoded is None:
        _encoded = tuple(encode(name) for name in _WATCHED)
    return _encoded


def known_secrets() -> list[str]:
    """The secret values configured here, which `redact` masks wherever they appear.

    They are: the LM API key (setting or the variable it names); the password and
    ``user:password`` inside each configured URL (``DSPEX_LM_API_BASE``, ``DSPEX_PAYLOAD_URL``,
    ``DSPEX_SESSION_URL``, ``DSPEX_DATA_ROOTS``, ``PREFECT_API_URL``, Prefect's database URL,
    proxies); Prefect's API key, auth strings and database password.

    Values shorter than 6 characters are left out: masking them would mangle ordinary words (a
    short password is still masked inside a URL or ``user:password@host``).
    """
    global _secrets_cache
    fingerprint = _watched()
    now = time.monotonic()
    cached = _secrets_cache
    if cached is not None and cached[0] == fingerprint and now - cached[1] < _SECRETS_TTL:
        return cached[2]
    found: list[str] = []
    urls: list[str] = [os.environ.get(name, "") for name in _URL_VARIABLES]
    try:
        found.extend(get_settings().secret_values())
    except Exception:  # broken settings must not stop an error from being shown
        found.append(os.environ.get("OPENAI_API_KEY", ""))
        urls.extend(os.environ.get(f"DSPEX_{name.upper()}", "") for name in URL_SETTINGS)
    for name in _SECRET_VARIABLES:
        value = os.environ.get(name, "")
        found.extend([value, value.partition(":")[2]])
    for url in urls:
        found.extend(url_secrets(url))
    # Longest first, so ``user:password`` is masked whole before its password alone.
    secrets = sorted((s for s in dict.fromkeys(found) if len(s) >= 6), key=len, reverse=True)
    _secrets_cache = (fingerprint, now, secrets)
    return secrets


def redact(text: Any, secrets: Iterable[str] | None = None) -> str:
    """``text`` (made a string) with every URL credential, secret parameter and known secret masked.

    Args:
        text: What will be shown or stored (an error message, a log line, a setting).
        secrets: Secret values to mask besides `known_secrets` (which is used when None).

    Returns:
        The masked text; text without secrets comes back unchanged.
    """
    return mask_text(text, known_secrets() if secrets is None else secrets)


def redact_data(value: Any) -> Any:
    """``value`` (JSON-like data: dicts, lists, strings) with `redact` applied to every string in it.

    For what is stored as data rather than text: flow-run parameters, event payloads.
    """
    return mask_data(value, known_secrets())


def redact_exception(error: BaseException) -> BaseException:
    """Mask the string arguments of ``error`` and of the exceptions it was raised from, in place.

    For an exception about to be shown as it is (an unexpected error's traceback on the console):
    its message is rebuilt from ``args``, which may quote a URL with its password.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        with contextlib.suppress(AttributeError, TypeError):  # a class that fixes its args
            current.args = tuple(redact(a) if isinstance(a, str) else a for a in current.args)
        current = current.__cause__ or current.__context__
    return error


class _RedactingFactory:
    """A log record factory that masks secrets in the message and traceback as records are made,
    so every handler (console, file, Prefect's API handler) only ever sees the masked text."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = self.inner(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is logging's to report, not ours
            return record
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, ()
        if record.exc_info and record.exc_info[1] is not None:
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(formatted)
        return record


def install_log_redaction() -> None:
    """Mask secrets in every log record this process makes (idempotent)."""
    current = logging.getLogRecordFactory()
    if not isinstance(current, _RedactingFactory):
        logging.setLogRecordFactory(_RedactingFactory(current))
