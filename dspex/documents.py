"""One bounded loader for every YAML or JSON document a user or the UI hands DSPex.

Specs, variables, ``prefect.yaml`` and spec files given to ``dspex run`` / ``dspex estimate`` are
parsed here, never with a bare ``yaml.safe_load`` / ``json.loads``. Three limits hold, each a
setting, and a document past one is refused with `SpecLimitError` naming it:

* **bytes** (``DSPEX_SPEC_MAX_BYTES``): checked before parsing.
* **depth** (``DSPEX_SPEC_MAX_DEPTH``): nesting of mappings and lists. YAML and JSON parsers (and
  pydantic after them) recurse once per level, so 100k nested brackets would end in an untyped
  ``RecursionError``; the depth is measured first, without recursion.
* **nodes** (``DSPEX_SPEC_MAX_NODES``): values once YAML aliases are expanded. PyYAML builds an
  aliased node once and shares it, so the nine-aliases-per-level "billion laughs" document costs
  nothing to *load*, then gigabytes in whatever walks it (validation, ``model_dump``, JSON). YAML is
  therefore checked on its event stream (the parser is iterative and builds nothing), with the
  expanded size of every anchor remembered, so such a document is refused in milliseconds after
  reading a few hundred bytes, and the process's memory stays flat.

Aliases themselves stay allowed (``prefect.yaml`` uses anchors, and so may a spec); only what they
expand to is bounded. `check_bounds` applies the depth and node limits to a value that was already
parsed elsewhere (a flow parameter from the Prefect API or UI, a dict from Python).
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import yaml

from dspex.exceptions import SpecLimitError
from dspex.settings import Settings, get_settings

__all__ = ["MIN_DEPTH", "MIN_NODES", "check_bounds", "load_document"]


def _floor(field: str) -> int:
    """The ``ge`` bound of a settings field: the lowest value it may be set to."""
    return int(next(m.ge for m in Settings.model_fields[field].metadata if getattr(m, "ge", None)))


#: The lowest ``spec_max_depth`` / ``spec_max_nodes`` may be set to (the settings' own bounds).
MIN_DEPTH = _floor("spec_max_depth")
MIN_NODES = _floor("spec_max_nodes")

Format = Literal["yaml", "json"]

# A JSON string (escapes included): brackets inside one do not nest anything.
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_BRACKET = re.compile(r"[\[\]{}]")
# libyaml's loader when PyYAML was built with it (much faster); the pure-Python one otherwise.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_document(
    text: str | bytes, *, source: str, fmt: Format = "yaml", settings: Settings | None = None
) -> Any:
    """Parse a YAML or JSON document within the byte, depth and node limits.

    Args:
        text: The document.
        source: What it is, for messages (``"spec file 'x.yaml'"``).
        fmt: ``"yaml"`` or ``"json"``.
        settings: The limits (default: the environment's).

    Returns:
        The parsed value.

    Raises:
        SpecLimitError: A limit was passed; the message names the source, the limit and its setting.
        yaml.YAMLError: Not valid YAML (callers word this their own way).
        json.JSONDecodeError: Not valid JSON.
    """
    limits = settings or get_settings()
    size = len(text.encode("utf-8")) if isinstance(text, str) else len(text)
    if size > limits.spec_max_bytes:
        raise _limit(source, f"is {size} bytes, more than {limits.spec_max_bytes}", "spec_max_bytes", limits)
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if fmt == "json":
        _check_json_depth(text, source, limits)
        value = json.loads(text)
        check_bounds(value, source=source, settings=limits)
        return value
    try:
        _check_yaml_events(text, source, limits, _Loader)
    except yaml.MarkedYAMLError as exc:
        # libyaml scans ahead of the events it hands out, so past its own nesting limit (1,000,
        # above any our setting allows) it fails before we count our limit's level: that is ours.
        # Any other syntax error is left to the real parse below, to be worded by the caller.
        if "nesting depth" in str(exc.problem):
            raise _depth_error(source, limits) from None
    return yaml.load(text, Loader=_Loader)  # noqa: S506  (a safe loader: CSafeLoader or SafeLoader)


def check_bounds(value: Any, *, source: str, settings: Settings | None = None) -> None:
    """Refuse an already-parsed value deeper or larger than the limits (iteratively, early exit).

    Shared sub-objects count every time they are reached, as they would in a walk that expands them.
    A value within the floors the limits cannot go below (`MIN_DEPTH`, `MIN_NODES`) passes without
    reading the settings, which costs more than walking a spec: pydantic runs this on every
    validation of a spec.

    Raises:
        SpecLimitError: The value is deeper than ``spec_max_depth`` or has more than ``spec_max_nodes``.
    """
    if settings is None and _exceeds(value, MIN_DEPTH, MIN_NODES) is None:
        return
    limits = settings or get_settings()
    passed = _exceeds(value, limits.spec_max_depth, limits.spec_max_nodes)
    if passed == "depth":
        raise _depth_error(source, limits)
    if passed == "nodes":
        raise _nodes_error(source, limits)


def _exceeds(value: Any, max_depth: int, max_nodes: int) -> Literal["depth", "nodes"] | None:
    nodes = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            return "nodes"
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > max_depth:
            return "depth"
        stack.extend((child, depth + 1) for child in children)
    return None


def _check_json_depth(text: str, source: str, limits: Settings) -> None:
    depth = 0
    for match in _JSON_BRACKET.finditer(_JSON_STRING.sub("", text)):
        depth += 1 if match.group() in "[{" else -1
        if depth > limits.spec_max_depth:
            raise _depth_error(source, limits)


def _check_yaml_events(text: str, source: str, limits: Settings, loader: Any) -> None:
    """Depth and expanded node count from the parser's events: nothing is built."""
    expanded = 0  # values so far, every alias counted as the size of what it names
    anchors: dict[str, tuple[int, int]] = {}  # anchor -> (expanded size, height below it)
    # One entry per open mapping/list: its anchor, `expanded` at its start, the deepest level in it.
    open_nodes: list[tuple[str | None, int, int]] = []
    for event in yaml.parse(text, Loader=loader):
        depth = len(open_nodes)
        if isinstance(event, yaml.CollectionStartEvent):
            expanded += 1
            open_nodes.append((event.anchor, expanded, depth + 1))
            if depth + 1 > limits.spec_max_depth:
                raise _depth_error(source, limits)
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, start, deepest = open_nodes.pop()
            if anchor is not None:
                anchors[anchor] = (expanded - start + 1, deepest - depth)
            if open_nodes:
                parent = open_nodes[-1]
                open_nodes[-1] = (parent[0], parent[1], max(parent[2], deepest))
        elif isinstance(event, yaml.ScalarEvent):
            expanded += 1
            if event.anchor is not None:
                anchors[event.anchor] = (1, 0)
        elif isinstance(event, yaml.AliasEvent):
            size, height = anchors.get(event.anchor or "", (1, 0))
            expanded += size
            if depth + height > limits.spec_max_depth:
                raise _depth_error(source, limits)
            if open_nodes:
                parent = open_nodes[-1]
                open_nodes[-1] = (parent[0], parent[1], max(parent[2], depth + height))
        if expanded > limits.spec_max_nodes:
            raise _nodes_error(source, limits)


def _limit(source: str, what: str, name: str, limits: Settings) -> SpecLimitError:
    value = int(getattr(limits, name))
    return SpecLimitError(
        f"{source} {what} (limit DSPEX_{name.upper()}={value}; raise it if the document is yours)",
        limit=name,
        value=value,
    )


def _depth_error(source: str, limits: Settings) -> SpecLimitError:
    return _limit(
        source,
        f"is nested more than {limits.spec_max_depth} levels deep",
        "spec_max_depth",
        limits,
    )


def _nodes_error(source: str, limits: Settings) -> SpecLimitError:
    return _limit(
        source,
        f"holds more than {limits.spec_max_nodes} values once YAML aliases are expanded",
        "spec_max_nodes",
        limits,
    )
