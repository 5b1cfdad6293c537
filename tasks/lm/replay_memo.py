"""Replaying a row's answered LM calls without formatting them again (issue 21).

Batch mode runs every waiting row's program from the start in each round (`flows.batch_api.mode`), so
the calls answered in earlier rounds are made again. Through DSPy's adapter each one costs a full
prompt format (the system message, a pydantic ``TypeAdapter`` per field value), a request hash, and
a parse. `ReplayMemo` keeps what those calls gave, by a *fingerprint* of the adapter call:

* ``known``: fingerprint -> the request key of the call's first LM request, learned in the round
  that recorded the request. Once the store holds its answer, the next replay does not format the
  request: the adapter's ``format`` hands `ReplayLM` a `tasks.lm.replay.KnownRequest` with that
  key, and the answer goes through DSPy's own ``_process_completion`` and the adapter's own parse
  (and JSON fallback) exactly as before;
* ``outputs``: fingerprint -> the adapter's parsed outputs, once the whole call was answered. A
  later replay of the same call returns a copy of them: no formatting, no LM call, no parsing.

And per signature, the system message, which DSPy's adapters render from the signature alone.

The fingerprint hashes everything the request and its parse depend on: the adapter's class and
options, the signature (its system message and fields), the demos, the inputs, the LM's model,
options and capabilities, and the call's options. Only plain JSON values take part (``str``,
``int``, ``float``, ``bool``, ``None``, ``list``, ``dict`` with ``str`` keys, exact types): a call
with anything else (an image, a history, tools, a pydantic value, a tuple) runs as it does online.
Only DSPy's own ``ChatAdapter``, ``JSONAdapter`` and ``XMLAdapter`` are memoized; a user's own
adapter runs unchanged. A memo hit needs every request the call made answered in the store (an
answer is never replaced, except an online fallback's, which a new process asks again).

Both maps are plain JSON, so a re-check run (a new process) loads them with the job's state: the
rounds after the first do work in proportion to the calls that are new, not to all calls so far.
"""

from __future__ import annotations

import hashlib
import json
import threading
import weakref
from dataclasses import dataclass
from functools import partial
from typing import Any

import dspy

from tasks.lm.replay import CALLS, SKIP_FORMAT, KnownRequest, NeedsAnswer, ReplayLM, ResponseStore

__all__ = ["MemoStats", "ReplayMemo"]

# LM options that reach the client, never the request body (rollout_id does: it keys the request).
_CLIENT_ONLY = frozenset({"api_key", "api_base", "base_url", "timeout", "num_retries", "cache", "headers"})
_SCALARS = frozenset({str, int, float, bool, type(None)})
_MAX_DEPTH = 32
_MAX_SIGNATURES = 4096  # signature classes kept (a program making one per call restarts the cache)


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is plain JSON of exact types (so its JSON form tells it apart from any other)."""
    kind = type(value)
    if kind in _SCALARS:
        return True
    if depth >= _MAX_DEPTH:
        return False
    if kind is list:
        return all(_plain(v, depth + 1) for v in value)
    if kind is dict:
        return all(type(k) is str and _plain(v, depth + 1) for k, v in value.items())
    return False


def _memoizable_adapters() -> frozenset[type]:
    from dspy.adapters import ChatAdapter, JSONAdapter, XMLAdapter

    return frozenset({ChatAdapter, JSONAdapter, XMLAdapter})


@dataclass
class MemoStats:
    """What the memo did in a replay.

    Attributes:
        replayed: Calls answered from ``outputs`` (nothing formatted, asked or parsed).
        unformatted: Calls whose request was not formatted (its key was known), then parsed.
        formatted: Memoizable calls formatted as online (new requests, or first seen here).
        passed: Calls the memo could not key (not plain JSON, another adapter or LM): run as online.
    """

    replayed: int = 0
    unformatted: int = 0
    formatted: int = 0
    passed: int = 0


class _MemoAdapter:
    """Mixed in before one of DSPy's adapters (see `ReplayMemo.adapter`); not an adapter itself."""

    _dspex_memo: ReplayMemo

    def __call__(self, lm: Any, lm_kwargs: dict[str, Any], signature: Any, demos: Any, inputs: Any) -> Any:
        memo = self._dspex_memo
        key = memo.fingerprint(self, lm, lm_kwargs, signature, demos, inputs)
        if key is None:
            memo.stats.passed += 1
            return super().__call__(lm, lm_kwargs, signature, demos, inputs)  # type: ignore[misc]
        replayed = memo.replayed(key)
        if replayed is not None:
            memo.stats.replayed += 1
            return replayed
        known = memo.known_answered(key)
        seen: list[str] = []
        calls = CALLS.set((*CALLS.get(), seen))
        skip = SKIP_FORMAT.set((self, known) if known is not None else None)
        try:
            outputs = super().__call__(lm, lm_kwargs, signature, demos, inputs)  # type: ignore[misc]
        except NeedsAnswer:
            if seen:
                memo.learn(key, seen[0])
            raise
        finally:
            if known is not None and SKIP_FORMAT.get() is None:  # its format was skipped
                memo.stats.unformatted += 1
            else:
                memo.stats.formatted += 1
            SKIP_FORMAT.reset(skip)
            CALLS.reset(calls)
        if seen:
            memo.learn(key, seen[0])
            memo.keep(key, seen, outputs)
        return outputs

    def format(self, signature: Any, demos: Any, inputs: Any) -> Any:
        skip = SKIP_FORMAT.get()
        if skip is not None and skip[0] is self:
            SKIP_FORMAT.set(None)  # this call's first request only (a JSON fallback formats its own)
            return KnownRequest(skip[1])
        return super().format(signature, demos, inputs)  # type: ignore[misc]

    def format_system_message(self, signature: Any) -> str:
        return self._dspex_memo.system_message(self, signature, super().format_system_message)  # type: ignore[misc]


def _base(adapter: Any) -> Any:
    """The DSPy adapter class under a memo adapter (its MRO: memo class, `_MemoAdapter`, base, ...)."""
    base: Any = type(adapter).__mro__[2]
    return base


_classes: dict[type, type] = {}
_classes_lock = threading.Lock()


def _memo_class(base: type) -> type:
    """``base`` with `_MemoAdapter` mixed in, under ``base``'s own name (row errors name the adapter)."""
    with _classes_lock:
        cls = _classes.get(base)
        if cls is None:
            cls = type(
                base.__name__,
                (_MemoAdapter, base),
                {"__module__": base.__module__, "__qualname__": base.__qualname__},
            )
            # DSPy's Adapter.__init_subclass__ wrapped format and parse in callbacks once more (they
            # are wrapped on ``base`` already): unwrapped, a format or parse fires its callbacks once.
            for name in ("format", "parse"):
                if name in vars(cls):
                    delattr(cls, name)
            _classes[base] = cls
        return cls


class ReplayMemo:
    """The replay memo of one batch job (see the module docstring).

    Args:
        store: The job's answers (the memo answers only from requests answered there).
        known: Loaded fingerprint -> request key entries.
        outputs: Loaded fingerprint -> ``[request keys, outputs as JSON]`` entries.
    """

    def __init__(
        self,
        store: ResponseStore,
        known: dict[str, str] | None = None,
        outputs: dict[str, list[Any]] | None = None,
    ) -> None:
        self.store = store
        self.known: dict[str, str] = dict(known or {})
        self.outputs: dict[str, tuple[tuple[str, ...], str]] = {
            k: (tuple(v[0]), str(v[1])) for k, v in (outputs or {}).items()
        }
        self.stats = MemoStats()
        self._new_known: dict[str, str] = {}
        self._new_outputs: dict[str, tuple[tuple[str, ...], str]] = {}
        # id(signature class) -> (a weak reference to it, its entries): classes a program makes per
        # call are not kept alive; a reused id is told apart by its reference.
        self._signatures: dict[int, tuple[Any, dict[tuple[type, str], Any]]] = {}
        self._capabilities: dict[int, tuple[Any, tuple[str, str], str]] = {}
        self._adapter_tokens: dict[int, tuple[Any, str | None]] = {}

    def adapter(self, current: Any) -> Any:
        """The adapter a replay runs with: ``current`` (DSPy's ``settings.adapter``; None: its
        default ``ChatAdapter``) with the memo, or ``current`` itself when it is not one of DSPy's
        own adapters."""
        from dspy.adapters import ChatAdapter

        base = ChatAdapter if current is None else type(current)
        if base not in _memoizable_adapters():
            return current
        cls = _memo_class(base)
        if current is None:
            adapter = cls()
        else:
            adapter = object.__new__(cls)
            adapter.__dict__.update(vars(current))
        adapter._dspex_memo = self
        return adapter

    def take_new(self) -> dict[str, Any]:
        """The entries made since the last call (JSON-able), to save with the round they belong to."""
        known, self._new_known = self._new_known, {}
        outputs, self._new_outputs = self._new_outputs, {}
        return {"known": known, "outputs": {k: [list(keys), text] for k, (keys, text) in outputs.items()}}

    # -- the adapter's side ---------------------------------------------------------------------

    def system_message(self, adapter: Any, signature: Any, render: Any) -> str:
        """The system message of ``signature`` under ``adapter``'s class, rendered once."""
        entry = self._signature_entry(adapter, signature, render)
        if entry[0] is None:
            return str(render(signature))  # it raised: again, so the error is the online call's own
        return str(entry[1])

    def fingerprint(
        self, adapter: Any, lm: Any, lm_kwargs: Any, signature: Any, demos: Any, inputs: Any
    ) -> str | None:
        """The call's fingerprint, or None when the memo cannot key it."""
        if not isinstance(lm, ReplayLM) or lm.store is not self.store:
            return None
        adapter_token = self._adapter_token(adapter)
        if adapter_token is None:
            return None
        render = partial(_base(adapter).format_system_message, adapter)  # DSPy's own
        digest = self._signature_entry(adapter, signature, render)[0]
        if digest is None:
            return None
        demo_values = []
        for demo in demos or []:
            if isinstance(demo, dspy.Example):
                demo = dict(demo.items(include_dspy=True))
            if type(demo) is not dict:
                return None
            demo_values.append(demo)
        options = {k: v for k, v in lm.kwargs.items() if k not in _CLIENT_ONLY}
        if not (
            type(inputs) is dict
            and _plain(inputs)
            and _plain(demo_values)
            and type(lm_kwargs) is dict
            and _plain(lm_kwargs)
            and _plain(options)
        ):
            return None
        # Not sort_keys: the order of a dict value's keys is part of its prompt.
        blob = json.dumps([options, lm_kwargs, demo_values, inputs])
        static = f"{adapter_token}|{digest}|{self._lm_token(lm)}|"
        return hashlib.blake2b((static + blob).encode(), digest_size=20).hexdigest()

    def replayed(self, key: str) -> list[Any] | None:
        """A copy of the call's parsed outputs, when it was answered and parsed before."""
        entry = self.outputs.get(key)
        if entry is None:
            return None
        for request in entry[0]:
            answer = self.store.get(request)
            if answer is None or answer.response is None or answer.online:
                return None
        value: list[Any] = json.loads(entry[1])
        return value

    def known_answered(self, key: str) -> str | None:
        """The call's first request key, when the store holds its answer (not one to ask online)."""
        request = self.known.get(key)
        if request is None:
            return None
        answer = self.store.get(request)
        return request if answer is not None and not answer.online else None

    def learn(self, key: str, request: str) -> None:
        """The call's first request is ``request``."""
        if self.known.get(key) != request:
            self.known[key] = request
            self._new_known[key] = request

    def keep(self, key: str, requests: list[str], outputs: Any) -> None:
        """The call was answered (by ``requests``) and parsed into ``outputs``."""
        if key in self.outputs or not _plain(outputs):
            return
        entry = (tuple(requests), json.dumps(outputs, separators=(",", ":")))
        self.outputs[key] = entry
        self._new_outputs[key] = entry

    # -- tokens, each computed once -------------------------------------------------------------

    def _signature_entry(self, adapter: Any, signature: Any, render: Any) -> tuple[str | None, Any]:
        """(digest of the signature as rendered, its system message or the error rendering raised)."""
        base = _base(adapter)
        held = self._signatures.get(id(signature))
        if held is None or held[0]() is not signature:
            try:
                held = (weakref.ref(signature), {})
            except TypeError:  # not weak-referenceable: not a signature class
                return None, None
            if len(self._signatures) >= _MAX_SIGNATURES:
                self._signatures.clear()
            self._signatures[id(signature)] = held
        per_class = held[1]
        slot = (base, str(getattr(signature, "instructions", "")))
        entry = per_class.get(slot)
        if entry is None:
            try:
                message = render(signature)
                fields = [(name, repr(info)) for name, info in signature.model_fields.items()]
                blob = json.dumps([getattr(signature, "__name__", ""), slot[1], message, fields])
                entry = (hashlib.blake2b(blob.encode(), digest_size=20).hexdigest(), message)
            except Exception as exc:  # the call renders (and raises) as online
                entry = (None, exc)
            per_class[slot] = entry
        return entry

    def _adapter_token(self, adapter: Any) -> str | None:
        cached = self._adapter_tokens.get(id(adapter))
        if cached is not None and cached[0] is adapter:
            return cached[1]
        base = _base(adapter)
        options: dict[str, Any] | None = {}
        for name, value in sorted(vars(adapter).items()):
            if name in ("callbacks", "_dspex_memo"):
                continue
            if isinstance(value, list | tuple) and all(isinstance(v, type) for v in value):
                value = [f"{v.__module__}.{v.__qualname__}" for v in value]
            if not _plain(value):
                options = None
                break
            options[name] = value  # type: ignore[index]
        token = None if options is None else json.dumps([f"{base.__module__}.{base.__qualname__}", options])
        self._adapter_tokens[id(adapter)] = (adapter, token)
        return token

    def _lm_token(self, lm: ReplayLM) -> str:
        """The LM's model, type and capabilities (what the adapter reads of it), as JSON."""
        inner, model, kind = lm.inner, str(lm.model), str(lm.model_type)
        cached = self._capabilities.get(id(inner))
        if cached is None or cached[0] is not inner or cached[1] != (model, kind):
            flags: list[Any] = [model, kind]
            for name in ("supports_function_calling", "supports_response_schema", "supports_reasoning"):
                try:
                    flags.append(bool(getattr(lm, name)))
                except Exception:  # an LM without the flag: the adapter reads it the same way
                    flags.append(None)
            try:
                flags.append(sorted(str(p) for p in lm.supported_params))  # JSONAdapter reads it
            except Exception:
                flags.append(None)
            cached = (inner, (model, kind), json.dumps(flags))
            self._capabilities[id(inner)] = cached
        return str(cached[2])
