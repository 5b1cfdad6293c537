"""How is a secret masked in text, given the secret values to look for?

The shapes of a credential that need no configuration to find, and `mask_text`, which masks them
and the secret values it is given. `dspex.redact` builds on it with the values configured here
(`dspex.redact.known_secrets`); `dspex.settings` uses it to show itself without credentials, which is
why this module reads no settings.

Secrets reach text in three shapes:

- **URL userinfo**: ``http://alice:pw@host/v1``, ``s3://KEY:SECRET@bucket/p`` become
  ``http://***@host/v1``, ``s3://***@bucket/p`` (the user name goes too: for object stores it *is*
  the access key);
- **secret query parameters**: ``?api_key=...``, ``&token=...``, ``X-Amz-Signature=...`` and the like
  keep their name and lose their value;
- **given secret values** and ``Authorization: Bearer ...`` headers, wherever they appear.

HTTP clients often print a URL's authority without its scheme (DSPy's transport says ``failed to
connect to alice:pw@127.0.0.1:8000``), so a bare ``user:password@host`` is masked too
(``***@127.0.0.1:8000``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["MASK", "mask_data", "mask_text", "redact_url", "url_secrets"]

#: What a secret is replaced with.
MASK = "***"

# A URL in free text: scheme://, then anything up to whitespace or a quote/bracket.
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
# Query or key=value parameters whose value is a credential.
# The key must *end* with the secret word, so ``max_tokens=5`` or ``author=x`` stay readable.
_SECRET_PARAM = re.compile(
    r"(?i)(?P<key>\b[\w.\-]*?(?:api[_-]?key|apikey|access[_-]?key|secret|secret[_-]?key|token|password|"
    r"passwd|pwd|signature|sig|credential|authorization|session[_-]?key))(?P<sep>=)(?P<value>[^\s&;,'\"<>]+)"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{8,}")
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#@]*)@")
# ``user:password@host`` without a scheme (an authority as clients print it): the colon and the
# ``@`` followed by a host make it a credential; ``git@host`` or ``a@b.c`` have no password part.
_BARE_USERINFO = re.compile(r"(?<![\w.~%+\-:/@])[\w.~%+\-!$&()*;=,]+:[^\s/@:'\"<>`]+@(?=[\w\[])")


def redact_url(url: str) -> str:
    """``url`` with its userinfo and secret query values masked; anything else is left as is.

    Args:
        url: A URL (or any string; one that does not parse has its secret parameters masked).
    """
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", url)
    try:
        parts = urlsplit(text)
    except ValueError:
        return _mask_params(text)
    if parts.query:
        text = urlunsplit(parts._replace(query=_mask_params(parts.query)))
    return text


def _mask_params(text: str) -> str:
    return _SECRET_PARAM.sub(
        lambda m: m.group(0) if m["value"] == MASK else f"{m['key']}{m['sep']}{MASK}", text
    )


def url_secrets(url: str) -> list[str]:
    """The credentials inside one URL's userinfo: ``user:password`` and the password, each raw and
    percent-decoded (clients print either). A user name alone is no secret value (the URL shape
    still masks it inside a URL)."""
    match = _USERINFO.match(url.strip())
    if match is None:
        return []
    userinfo = match["userinfo"]
    _, colon, password = userinfo.partition(":")
    if not colon or not password:
        return []
    return list(dict.fromkeys(v for value in (userinfo, password) for v in (value, unquote(value))))


def mask_text(text: Any, secrets: Iterable[str]) -> str:
    """``text`` (made a string) with ``secrets`` and every URL credential, secret parameter and
    bearer token masked.

    Args:
        text: What will be shown or stored.
        secrets: Secret values to mask wherever they appear (longest first, so ``user:password``
            goes whole before its password alone); empty ones are skipped.

    Returns:
        The masked text; text without secrets comes back unchanged.
    """
    value = text if isinstance(text, str) else str(text)
    for secret in secrets:
        if secret and secret in value:
            value = value.replace(secret, MASK)
    if "://" in value:
        value = _URL.sub(lambda m: redact_url(m.group(0)), value)
    if "@" in value:
        value = _BARE_USERINFO.sub(f"{MASK}@", value)
    if "=" in value:
        value = _mask_params(value)
    lowered = value.lower()
    if "bearer" in lowered or "basic" in lowered:  # a cheap check before the regex
        value = _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", value)
    return value


def mask_data(value: Any, secrets: Iterable[str]) -> Any:
    """``value`` (JSON-like data: dicts, lists, strings) with `mask_text` applied to every string.

    Args:
        value: The data.
        secrets: As for `mask_text`.
    """
    found = list(secrets)

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            return mask_text(item, found)
        if isinstance(item, dict):
            return {key: walk(inner) for key, inner in item.items()}
        if isinstance(item, list | tuple):
            return [walk(inner) for inner in item]
        return item

    return walk(value)
