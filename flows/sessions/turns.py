"""Session flows: ``session-turn`` (a turn from the UI or a worker) and ``cleanup-sessions`` (TTL).

``session-turn`` runs one turn on a stored session (or opens one first) through the same
`flows.sessions.session.run_turn` as the Python fast path, and shows the session's history as a table
artifact (``session-<id>``), so the Prefect UI can drive a conversation turn by turn. Its defaults
run as they are: a new session over ``dspy.Predict`` answering a bundled question.

Affinity in distributed mode: programs stay warm in the process that built them, so a session's next
turn is fastest on the worker that served its last one. A worker started with
``DSPEX_SESSION_AFFINITY_QUEUE=<queue>`` and polling that queue besides ``default``
(``prefect worker start --pool general --work-queue default --work-queue <queue>``) records the
queue on every session it serves; `dispatch_turn` then sends the session's next turn to that queue
while the worker is live (it polled within ``DSPEX_SESSION_AFFINITY_LIVE_SECONDS``), and to the
pool's default queue otherwise, so a dead worker never strands a session: any worker can load it from
the shared store (``DSPEX_SESSION_URL``).

``cleanup-sessions`` removes sessions whose TTL passed or that were closed; ``prefect.yaml`` runs it
on a schedule.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from dspex.settings import get_settings
from flows.engine.params import LMParam, resolve_lm, safe_flow
from flows.engine.spec import ModuleStep

__all__ = [
    "SessionTurnResult",
    "cleanup_sessions",
    "dispatch_turn",
    "history_artifact_key",
    "preferred_queue",
    "session_turn",
]

_DEFAULT_PROGRAM = ModuleStep(module="dspy.ChainOfThought", signature="question, context -> answer")
_DEFAULT_INPUTS = {
    "question": "When was the Eiffel Tower finished?",
    "context": "The Eiffel Tower in Paris was finished in 1889 for the World Fair.",
}


class SessionTurnResult(BaseModel):
    """What one ``session-turn`` run did."""

    model_config = ConfigDict(extra="forbid")

    session_id: str = Field(description="The session (new when the run opened it).")
    outputs: dict[str, Any] = Field(description="The turn's output fields.")
    turns: int = Field(description="Turns in the session's history now.")
    expires_at: str = Field(description="When the session expires unless another turn comes (UTC).")


def history_artifact_key(session_id: str) -> str:
    """The artifact key of a session's history (Prefect keys: lowercase letters, digits, dashes)."""
    return "session-" + "".join(c if c.isalnum() else "-" for c in session_id.lower())[:60]


@safe_flow(
    name="session-turn",
    description="Run one turn of a stateful DSPy session (opens one when no session_id is given); "
    "the session's history is shown as an artifact.",
    validate_parameters=True,
)
def session_turn(
    inputs: dict[str, Any] = _DEFAULT_INPUTS,
    session_id: str | None = None,
    program: ModuleStep = _DEFAULT_PROGRAM,
    ttl_seconds: float | None = None,
    lm: LMParam = None,
) -> SessionTurnResult:
    """Run one turn.

    Args:
        inputs: The turn's input fields (the program's signature inputs, without ``history``).
        session_id: The session to continue; None opens a new one over ``program``.
        program: The module step a new session runs (ignored when continuing one).
        ttl_seconds: A new session's lifetime after its last turn (default: the settings').
        lm: Which LM (an `LMConfig`, or a live DSPy LM from Python); never stored.

    Raises:
        SessionExpiredError: The session expired or was closed.
        SessionNotFoundError: No such session.
        InputValidationError: An input the program needs is missing (before any LM call).
    """
    from prefect.artifacts import create_table_artifact

    from flows.sessions.session import open_session, run_turn

    logger = get_run_logger()
    settings = get_settings()
    live_lm = resolve_lm(lm, settings)
    if session_id is None:
        session_id = open_session(program, ttl_seconds=ttl_seconds, settings=settings).id
        logger.info("opened session %s over %s", session_id, program.module)
    outputs = run_turn(
        session_id, inputs, lm=live_lm, settings=settings, work_queue=settings.session_affinity_queue
    )
    from flows.sessions.store import get_store

    record = get_store(settings).load(session_id)
    create_table_artifact(
        key=history_artifact_key(session_id),
        table=[
            {"turn": n, **{k: _cell(v) for k, v in entry.items()}}
            for n, entry in enumerate(record.history, 1)
        ],
        description=f"Session {session_id}: {len(record.history)} turn(s), program {record.step.get('module')}",
    )
    logger.info("session %s: turn %d done", session_id, len(record.history))
    return SessionTurnResult(
        session_id=session_id,
        outputs=outputs,
        turns=len(record.history),
        expires_at=datetime.fromtimestamp(record.expires_at, tz=UTC).isoformat(),
    )


def _cell(value: Any) -> Any:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= 500 else text[:497] + "..."


@safe_flow(
    name="cleanup-sessions",
    description="Remove sessions whose TTL passed or that were closed.",
    validate_parameters=True,
)
def cleanup_sessions() -> list[str]:
    """Remove expired and closed sessions (never one a turn is holding).

    Returns:
        The removed session ids.
    """
    from flows.sessions.store import get_store

    removed = get_store().delete_expired()
    get_run_logger().info("removed %d expired or closed session(s)", len(removed))
    return removed


async def preferred_queue(
    session_id: str, pool: str, *, affinity_live_seconds: float | None = None
) -> str | None:
    """The work queue a session's next turn should go to: its last worker's queue while it polls.

    Args:
        session_id: The session.
        pool: The work pool serving ``session-turn``.
        affinity_live_seconds: How recently the queue must have been polled to count as live
            (default ``DSPEX_SESSION_AFFINITY_LIVE_SECONDS``, 60 s).

    Returns:
        The queue name, or None for the pool's default queue (no affinity, or the worker is gone).
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from flows.sessions.store import get_store

    settings = get_settings()
    if affinity_live_seconds is None:
        affinity_live_seconds = settings.session_affinity_live_seconds
    record = get_store(settings).load(session_id)
    if not record.work_queue or not record.live:
        return None
    async with get_client() as client:
        try:
            queue = await client.read_work_queue_by_name(record.work_queue, work_pool_name=pool)
        except ObjectNotFound:
            return None
    polled = queue.last_polled
    if polled is None:
        return None
    age = (datetime.now(UTC) - polled).total_seconds()
    return record.work_queue if age <= affinity_live_seconds else None


def dispatch_turn(
    session_id: str,
    inputs: dict[str, Any],
    *,
    deployment: str = "session-turn/session-turn",
    pool: str = "general",
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Run a turn through the ``session-turn`` deployment (distributed mode), preferring the worker
    that holds the session's warm program; returns the turn's outputs from the shared store.

    Raises:
        DispatchError: The flow run did not complete.
    """
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment
    from prefect.utilities.asyncutils import run_coro_as_sync

    from dspex.exceptions import DispatchError
    from flows.sessions.store import get_store

    settings = get_settings()
    queue = run_coro_as_sync(preferred_queue(session_id, pool))
    before = get_store(settings).load(session_id).version
    run: FlowRun = run_deployment(  # type: ignore[assignment]  # sync call: a FlowRun
        deployment,
        parameters={"inputs": inputs, "session_id": session_id},
        work_queue_name=queue,
        timeout=timeout_s if timeout_s is not None else settings.dispatch_timeout_seconds,
        poll_interval=settings.dispatch_poll_seconds,
    )
    record = get_store(settings).load(session_id)
    if run.state is None or not run.state.is_completed() or record.version <= before:
        state = run.state.name if run.state is not None else "unknown"
        raise DispatchError(f"session {session_id!r}: the session-turn run {run.id} ended {state}")
    last: dict[str, Any] = record.history[-1]
    return {k: v for k, v in last.items() if k not in inputs}
