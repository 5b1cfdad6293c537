"""Sessions: a DSPy program that keeps its conversation history across calls and processes.

    from flows.sessions.session import open_session, get_session

    session = open_session({"module": "dspy.Predict", "signature": "question -> answer"}, ttl_seconds=600)
    session.turn(question="Who wrote Hamlet?")          # -> {"answer": ...}
    same = get_session(session.id)                     # in another process, later
    same.turn(question="When was he born?")            # the program sees the first turn

A turn runs the program with the session's ``dspy.History`` (prepended to every predictor's
signature as a ``history`` input), appends the turn's inputs and outputs to the history, and
persists it (`flows.sessions.store`: SQLite in the project, or ``DSPEX_SESSION_URL``). Turns on one
session are serialized across threads and processes; different sessions run concurrently. A failed
turn leaves the history as it was. This is the fast path: no Prefect flow run per turn (the
``session-turn`` flow in `flows.sessions.turns` wraps the same `run_turn` for the UI and workers).

What is stored is JSON only: the program's step spec, its saved state (demos, instructions) and the
history. The LM is never stored; each process brings its own (``lm=`` or the settings' LM).
Built programs stay warm per process, so the worker that served a session's last turn serves the
next one fastest (see `flows.sessions.turns` for affinity in distributed mode).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import dspy

from dspex.exceptions import InputValidationError, PipelineSpecError
from dspex.settings import Settings, get_settings
from flows.engine.spec import ModuleStep
from flows.sessions.store import SessionRecord, SessionStore, get_store

__all__ = ["HISTORY_FIELD", "Session", "get_session", "open_session", "run_turn", "worker_identity"]

#: The input field through which a session's program sees its history.
HISTORY_FIELD = "history"

_warm: dict[str, dspy.Module] = {}
_warm_lock = threading.Lock()


def worker_identity() -> str:
    """This process as the session store records it (``host:pid``)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Session:
    """A handle on one stored session; cheap, and safe to share between threads.

    Attributes:
        id: The session id.
    """

    def __init__(self, session_id: str, *, lm: Any = None, settings: Settings | None = None) -> None:
        self.id = session_id
        self._lm = lm
        self._settings = settings or get_settings()
        self._store = get_store(self._settings)

    def __repr__(self) -> str:
        return f"Session(id={self.id!r})"

    @property
    def record(self) -> SessionRecord:
        """The stored session as it is now (history, version, expiry)."""
        return self._store.load(self.id)

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every completed turn, oldest first: each a dict of its input and output fields."""
        return self.record.history

    def turn(self, **inputs: Any) -> dict[str, Any]:
        """Run one turn: the program over ``inputs`` and the history so far; the history grows by one.

        Returns:
            The turn's output fields (JSON values).

        Raises:
            SessionExpiredError: The session's TTL passed, or it was closed.
            SessionNotFoundError: No such session.
            SessionBusyError: Another turn held the session past ``DSPEX_SESSION_WAIT_SECONDS``.
            InputValidationError: An input field the program needs is missing (before any LM call).
        """
        return run_turn(self.id, inputs, lm=self._lm, settings=self._settings)

    def stream_turn(self, **inputs: Any) -> Iterator[Any]:
        """Run one turn with token streaming (``dspy.streamify``): yields ``dspy.streaming.StreamResponse``
        chunks of the output fields as the LM produces them, then the final ``dspy.Prediction``.

        The session is held while the generator runs; the turn is stored when the prediction arrives.
        Closing the generator early stores nothing and frees the session.

        Raises:
            Same as `turn`.
        """
        return _stream_turn(self.id, inputs, lm=self._lm, settings=self._settings)

    def close(self) -> None:
        """End the session: later turns raise `SessionExpiredError`; cleanup removes it."""
        self._store.close(self.id)


def open_session(
    step_or_program: ModuleStep | Mapping[str, Any] | dspy.Module,
    *,
    ttl_seconds: float | None = None,
    lm: Any = None,
    session_id: str | None = None,
    settings: Settings | None = None,
) -> Session:
    """Open a new session over a program.

    Args:
        step_or_program: A module step (a `ModuleStep` or its JSON, as in a pipeline spec), or a
            ``dspy.Predict`` / ``dspy.ChainOfThought`` with a plain-text signature, or an instance
            of a registered user program (its saved state travels with the session as JSON).
        ttl_seconds: Lifetime after the last turn (default ``DSPEX_SESSION_TTL_SECONDS``).
        lm: The LM this handle's turns use (never stored); default: built from the settings.
        session_id: An id of your own (default: a random one).
        settings: Effective settings (default: from the environment).

    Raises:
        PipelineSpecError: The step is invalid or the program cannot be described as JSON.
    """
    settings = settings or get_settings()
    step, state = _describe(step_or_program)
    _program_for(step, state)  # build now: a bad step fails here, and the program is warm
    now = time.time()
    ttl = float(ttl_seconds if ttl_seconds is not None else settings.session_ttl_seconds)
    if ttl <= 0:
        raise InputValidationError(f"ttl_seconds must be positive, got {ttl_seconds}")
    record = SessionRecord(
        id=session_id or uuid.uuid4().hex,
        step=step.model_dump(mode="json", exclude_defaults=True),
        state=state,
        history=[],
        version=0,
        ttl_seconds=ttl,
        created_at=now,
        updated_at=now,
        expires_at=now + ttl,
    )
    get_store(settings).create(record)
    return Session(record.id, lm=lm, settings=settings)


def get_session(session_id: str, *, lm: Any = None, settings: Settings | None = None) -> Session:
    """A handle on a stored session, from any process that reaches the store.

    Raises:
        SessionNotFoundError: No such session.
        SessionExpiredError: It expired or was closed.
    """
    from dspex.exceptions import SessionExpiredError

    settings = settings or get_settings()
    record = get_store(settings).load(session_id)
    if not record.live:
        raise SessionExpiredError("closed" if record.closed else "expired", session_id=session_id)
    return Session(session_id, lm=lm, settings=settings)


def run_turn(
    session_id: str,
    inputs: Mapping[str, Any],
    *,
    lm: Any = None,
    settings: Settings | None = None,
    work_queue: str | None = None,
) -> dict[str, Any]:
    """One turn on a stored session (what `Session.turn` and the ``session-turn`` flow run).

    Args:
        session_id: The session.
        inputs: The turn's input fields.
        lm: The LM (default: built from the settings).
        settings: Effective settings.
        work_queue: The Prefect work queue serving this turn, recorded for affinity.
    """
    settings = settings or get_settings()
    store = get_store(settings)
    with _held(store, session_id, settings) as record:
        step, program = _ready(record, inputs)
        with dspy.context(lm=_lm(lm, settings)):
            prediction = program(**_call_inputs(step, program, record, inputs))
        outputs = _outputs(prediction)
        store.commit_turn(
            record, {**dict(inputs), **outputs}, worker=worker_identity(), work_queue=work_queue
        )
    return outputs


def _stream_turn(session_id: str, inputs: Mapping[str, Any], *, lm: Any, settings: Settings) -> Iterator[Any]:
    from dspy.streaming import StreamListener

    store = get_store(settings)
    with _held(store, session_id, settings) as record:
        step, program = _ready(record, inputs)
        fields = dict.fromkeys(name for p in program.predictors() for name in p.signature.output_fields)
        listeners = [StreamListener(signature_field_name=name) for name in fields]
        streamed = dspy.streamify(program, stream_listeners=listeners, async_streaming=False)
        prediction = None
        with dspy.context(lm=_lm(lm, settings)):
            # The sync stream copies the context when it starts, so it is iterated inside ours.
            for item in streamed(**_call_inputs(step, program, record, inputs)):
                if isinstance(item, dspy.Prediction):
                    prediction = item
                    break
                yield item
        if prediction is None:
            return
        store.commit_turn(
            record, {**dict(inputs), **_outputs(prediction)}, worker=worker_identity(), work_queue=None
        )
        yield prediction


# --- helpers ---------------------------------------------------------------------------------


def _held(store: SessionStore, session_id: str, settings: Settings) -> Any:
    return store.hold(
        session_id, wait_seconds=settings.session_wait_seconds, lease_seconds=settings.session_lease_seconds
    )


def _lm(lm: Any, settings: Settings) -> Any:
    if lm is not None:
        return lm
    from tasks.lm import build_lm

    return build_lm(settings)


def _ready(record: SessionRecord, inputs: Mapping[str, Any]) -> tuple[ModuleStep, dspy.Module]:
    """The record's step and its warm program; checks the inputs before any LM call."""
    step = ModuleStep.model_validate(record.step)
    if HISTORY_FIELD in inputs:
        raise InputValidationError(
            f"{HISTORY_FIELD!r} is the session's own history; do not pass it as an input",
            [{"field": HISTORY_FIELD, "message": "reserved", "input": None}],
        )
    spec = step.signature_spec()
    if spec is not None:
        missing = [name for name in spec.input_names if name not in inputs and name != HISTORY_FIELD]
        if missing:
            raise InputValidationError(
                f"session {record.id!r}: the turn lacks input(s) {missing}",
                [{"field": name, "message": "missing", "input": None} for name in missing],
            )
    return step, _program_for(step, record.state)


def _call_inputs(
    step: ModuleStep, program: dspy.Module, record: SessionRecord, inputs: Mapping[str, Any]
) -> dict[str, Any]:
    kwargs = dict(inputs)
    if _takes_history(program):
        kwargs[HISTORY_FIELD] = dspy.History(messages=list(record.history))
    return kwargs


def _takes_history(program: dspy.Module) -> bool:
    return any(HISTORY_FIELD in p.signature.input_fields for p in program.predictors())


def _outputs(prediction: Any) -> dict[str, Any]:
    from tasks.rows import to_jsonable

    return {key: to_jsonable(prediction.get(key)) for key in prediction}


def _program_for(step: ModuleStep, state: dict[str, Any] | None) -> dspy.Module:
    """The session program for a step and state, built once per process (the warm program)."""
    key = hashlib.sha256(
        json.dumps([step.model_dump(mode="json"), state], sort_keys=True, default=str).encode()
    ).hexdigest()
    with _warm_lock:
        program = _warm.get(key)
    if program is not None:
        return program
    from tasks.modules import build_module

    program = build_module(step).deepcopy()  # the pipeline's cached module stays as it was
    if state:
        try:
            program.load_state(state)  # before the history field is added: state is positional
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PipelineSpecError(
                f"saved state does not fit {step.module}: {type(exc).__name__}: {exc}", step=step.name
            ) from exc
    if ":" not in step.module:  # DSPy's own modules see the history through their signatures
        for predictor in program.predictors():
            if HISTORY_FIELD not in predictor.signature.input_fields:
                predictor.signature = predictor.signature.prepend(
                    HISTORY_FIELD, dspy.InputField(), type_=dspy.History
                )
    with _warm_lock:
        return _warm.setdefault(key, program)


def _describe(
    program: ModuleStep | Mapping[str, Any] | dspy.Module,
) -> tuple[ModuleStep, dict[str, Any] | None]:
    """A JSON description of the program: its step, and its saved state when it is a live module."""
    if isinstance(program, ModuleStep):
        return program, None
    if isinstance(program, Mapping):
        try:
            return ModuleStep.model_validate(dict(program)), None
        except ValueError as exc:
            raise PipelineSpecError(f"not a valid module step: {exc}") from exc
    if not isinstance(program, dspy.Module):
        raise PipelineSpecError(
            f"open_session takes a module step or a DSPy module, not {type(program).__name__}"
        )
    state = program.dump_state()
    if type(program) in (dspy.Predict, dspy.ChainOfThought):
        predictor = program if isinstance(program, dspy.Predict) else program.predict
        signature = predictor.signature
        if isinstance(program, dspy.ChainOfThought) and "reasoning" in signature.output_fields:
            signature = signature.delete("reasoning")
        annotations = [f.annotation for f in signature.fields.values()]
        if any(a is not str for a in annotations):
            raise PipelineSpecError(
                "open_session: pass a typed signature as a module step "
                "({'module': 'dspy.Predict', 'signature': 'q: int -> a: float'}); a live module's types "
                "cannot be described as JSON"
            )
        name = f"dspy.{type(program).__name__}"
        step = ModuleStep(module=name, signature=signature.signature, instructions=signature.instructions)
        return step, state
    path = f"{type(program).__module__}:{type(program).__qualname__}"
    import registry
    from dspex.exceptions import UnknownModuleError

    try:
        registry.get_module(path)
    except UnknownModuleError as exc:
        raise PipelineSpecError(
            f"open_session: {path} is not a registered program; register it "
            "(registry.register_user_module) so another process can rebuild it"
        ) from exc
    return ModuleStep(module=path), state
