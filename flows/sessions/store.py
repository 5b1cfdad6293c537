"""Where sessions live: one SQL table (SQLAlchemy Core), SQLite in the project or any database URL.

The embedded default is ``<DSPEX_HOME>/sessions.db`` (SQLite, WAL journal); ``DSPEX_SESSION_URL``
points every process (CLI, workers, the ``session-turn`` flow) at a shared database such as
PostgreSQL. Everything stored is JSON text: the program's step spec, its saved state, the history.
Nothing is pickled and no LM is ever stored.

Turns on one session are serialized across threads *and* processes by a lease on the session's row:
``UPDATE ... SET lease_token = :mine WHERE id = :id AND (lease_token IS NULL OR lease_until < :now)``
is a compare-and-swap that exactly one contender wins, on SQLite and PostgreSQL alike. The winner
reads the row, runs its turn, and writes the new history with ``WHERE lease_token = :mine``, bumping
``version``; a holder that died frees the session when its lease runs out. Different sessions never
contend. Within a process a per-session ``threading.Lock`` keeps threads from polling the database.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from dspex.exceptions import (
    SessionBusyError,
    SessionExpiredError,
    SessionNotFoundError,
    SessionStoreError,
)
from dspex.private import private_file, private_home
from dspex.settings import Settings, get_settings

__all__ = ["SessionRecord", "SessionStore", "get_store", "store_url"]

_metadata = sa.MetaData()
sessions_table = sa.Table(
    "dspex_sessions",
    _metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("step", sa.Text, nullable=False),  # the ModuleStep, JSON
    sa.Column("state", sa.Text, nullable=True),  # the program's saved state, JSON
    sa.Column("history", sa.Text, nullable=False),  # list of turn dicts, JSON
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("ttl_seconds", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
    sa.Column("closed", sa.Boolean, nullable=False, default=False),
    sa.Column("lease_token", sa.String(64), nullable=True),
    sa.Column("lease_until", sa.Float, nullable=True),
    sa.Column("worker", sa.String(255), nullable=True),  # who served the last turn (affinity)
    sa.Column("work_queue", sa.String(255), nullable=True),
)


@dataclass
class SessionRecord:
    """One stored session, decoded.

    Attributes:
        id: The session id.
        step: The program's `ModuleStep`, as JSON data.
        state: The program's saved state (``dump_state()``), or None.
        history: One dict per completed turn: the turn's input and output fields.
        version: Bumped by every completed turn.
        ttl_seconds: Lifetime after the last turn.
        created_at: Epoch seconds.
        updated_at: Epoch seconds of the last change.
        expires_at: Epoch seconds after which turns are refused.
        closed: Whether ``close()`` was called.
        worker: The process that served the last turn (``host:pid`` or a worker name).
        work_queue: The Prefect work queue whose worker served it (distributed affinity).
    """

    id: str
    step: dict[str, Any]
    state: dict[str, Any] | None
    history: list[dict[str, Any]]
    version: int
    ttl_seconds: float
    created_at: float
    updated_at: float
    expires_at: float
    closed: bool = False
    worker: str | None = None
    work_queue: str | None = None
    lease_token: str | None = field(default=None, repr=False)

    @property
    def live(self) -> bool:
        """Whether a turn may still run on it."""
        return not self.closed and self.expires_at > time.time()


def store_url(settings: Settings | None = None) -> str:
    """The session database URL: ``DSPEX_SESSION_URL``, else SQLite under ``DSPEX_HOME``."""
    settings = settings or get_settings()
    if settings.session_url:
        return settings.session_url
    home = private_home(settings.home.resolve())
    # Histories hold users' inputs: owner-only from the start (SQLite's -wal and -shm copy the mode).
    return f"sqlite:///{private_file(Path(home, 'sessions.db'))}"


class SessionStore:
    """The session table behind a SQLAlchemy engine; safe to share between threads.

    Args:
        url: A SQLAlchemy database URL.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        sqlite = url.startswith("sqlite")
        self._engine = sa.create_engine(
            url,
            connect_args={"timeout": 60} if sqlite else {},
            pool_pre_ping=not sqlite,
        )
        if sqlite:
            sa.event.listen(self._engine, "connect", _sqlite_pragmas)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        try:
            _metadata.create_all(self._engine)
        except SQLAlchemyError as exc:
            raise SessionStoreError(f"cannot open the session store: {exc}", session_id="*") from exc

    def dispose(self) -> None:
        """Close the engine's connections."""
        self._engine.dispose()

    # --- reads and simple writes -----------------------------------------------------------
    def create(self, record: SessionRecord) -> None:
        """Insert a new session."""
        with self._write(record.id) as conn:
            conn.execute(sessions_table.insert().values(**_row_values(record)))

    def load(self, session_id: str) -> SessionRecord:
        """The stored session (live or not).

        Raises:
            SessionNotFoundError: No such session.
        """
        try:
            with self._engine.connect() as conn:
                row = conn.execute(sessions_table.select().where(sessions_table.c.id == session_id)).first()
        except SQLAlchemyError as exc:
            raise SessionStoreError(f"cannot read: {exc}", session_id=session_id) from exc
        if row is None:
            raise SessionNotFoundError(
                "no such session (never opened, or removed after it expired)", session_id=session_id
            )
        return _decode(row._mapping)

    def list_ids(self, *, live_only: bool = False) -> list[str]:
        """Session ids, oldest first."""
        query = sa.select(sessions_table.c.id).order_by(sessions_table.c.created_at)
        if live_only:
            query = query.where(sessions_table.c.expires_at > time.time(), sessions_table.c.closed.is_(False))
        with self._engine.connect() as conn:
            return [r[0] for r in conn.execute(query)]

    def close(self, session_id: str) -> None:
        """Mark a session closed: no more turns; cleanup removes it with the expired ones."""
        with self._write(session_id) as conn:
            result = conn.execute(
                sessions_table.update()
                .where(sessions_table.c.id == session_id)
                .values(closed=True, expires_at=time.time(), updated_at=time.time())
            )
        if result.rowcount == 0:
            raise SessionNotFoundError("no such session", session_id=session_id)

    def delete_expired(self, now: float | None = None) -> list[str]:
        """Remove sessions whose TTL passed (or that were closed) and nobody holds; their ids."""
        now = time.time() if now is None else now
        expired = sa.and_(
            sa.or_(sessions_table.c.expires_at <= now, sessions_table.c.closed.is_(True)),
            sa.or_(sessions_table.c.lease_token.is_(None), sessions_table.c.lease_until < now),
        )
        with self._write("*") as conn:
            ids = [r[0] for r in conn.execute(sa.select(sessions_table.c.id).where(expired))]
            if ids:
                conn.execute(sessions_table.delete().where(sessions_table.c.id.in_(ids), expired))
        return ids

    # --- turns ------------------------------------------------------------------------------
    @contextmanager
    def hold(self, session_id: str, *, wait_seconds: float, lease_seconds: float) -> Iterator[SessionRecord]:
        """Hold a live session for one turn; yields its record, released on exit.

        Raises:
            SessionNotFoundError: No such session.
            SessionExpiredError: Its TTL passed or it was closed.
            SessionBusyError: Another turn held it longer than ``wait_seconds``.
        """
        local = self._local_lock(session_id)
        if not local.acquire(timeout=wait_seconds):
            raise SessionBusyError(f"another turn held it for over {wait_seconds:g} s", session_id=session_id)
        try:
            token = self._acquire(session_id, wait_seconds, lease_seconds)
            try:
                record = self.load(session_id)
                record.lease_token = token
                yield record
            finally:
                self._release(session_id, token)
        finally:
            local.release()

    def commit_turn(
        self, record: SessionRecord, entry: dict[str, Any], *, worker: str, work_queue: str | None
    ) -> None:
        """Append one turn's entry to the history of a held session, bump its version, extend its TTL.

        Raises:
            SessionBusyError: The lease was lost (the turn outlived ``lease_seconds``); nothing written.
        """
        now = time.time()
        history = [*record.history, entry]
        with self._write(record.id) as conn:
            result = conn.execute(
                sessions_table.update()
                .where(sessions_table.c.id == record.id, sessions_table.c.lease_token == record.lease_token)
                .values(
                    history=json.dumps(history),
                    version=sessions_table.c.version + 1,
                    updated_at=now,
                    expires_at=now + record.ttl_seconds,
                    worker=worker,
                    work_queue=work_queue,
                    lease_token=None,  # released with the write: a waiting turn may go at once
                    lease_until=None,
                )
            )
        if result.rowcount != 1:
            raise SessionBusyError(
                "this turn outlived its lease and another turn took the session; its result was not stored",
                session_id=record.id,
            )
        record.history = history
        record.version += 1
        record.updated_at = now
        record.expires_at = now + record.ttl_seconds

    def _acquire(self, session_id: str, wait_seconds: float, lease_seconds: float) -> str:
        token = uuid.uuid4().hex
        deadline = time.monotonic() + wait_seconds
        delay = 0.005
        while True:
            now = time.time()
            with self._write(session_id) as conn:
                won = conn.execute(
                    sessions_table.update()
                    .where(
                        sessions_table.c.id == session_id,
                        sessions_table.c.closed.is_(False),
                        sessions_table.c.expires_at > now,
                        sa.or_(sessions_table.c.lease_token.is_(None), sessions_table.c.lease_until < now),
                    )
                    .values(lease_token=token, lease_until=now + lease_seconds)
                ).rowcount
            if won == 1:
                return token
            record = self.load(session_id)  # raises SessionNotFoundError
            if not record.live:
                raise SessionExpiredError(
                    "closed"
                    if record.closed
                    else f"expired {now - record.expires_at:.0f} s ago (TTL {record.ttl_seconds:g} s)",
                    session_id=session_id,
                )
            if time.monotonic() >= deadline:
                raise SessionBusyError(
                    f"another turn held it for over {wait_seconds:g} s", session_id=session_id
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def _release(self, session_id: str, token: str) -> None:
        with self._write(session_id) as conn:
            conn.execute(
                sessions_table.update()
                .where(sessions_table.c.id == session_id, sessions_table.c.lease_token == token)
                .values(lease_token=None, lease_until=None)
            )

    @contextmanager
    def _write(self, session_id: str) -> Iterator[sa.Connection]:
        try:
            with self._engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise SessionStoreError(f"cannot write: {exc}", session_id=session_id) from exc

    def _local_lock(self, session_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(session_id, threading.Lock())


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the one writer; busy_timeout makes writers queue, not fail.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()


def _row_values(record: SessionRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "step": json.dumps(record.step, sort_keys=True),
        "state": None if record.state is None else json.dumps(record.state),
        "history": json.dumps(record.history),
        "version": record.version,
        "ttl_seconds": record.ttl_seconds,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "expires_at": record.expires_at,
        "closed": record.closed,
        "worker": record.worker,
        "work_queue": record.work_queue,
    }


def _decode(row: Any) -> SessionRecord:
    try:
        return SessionRecord(
            id=row["id"],
            step=json.loads(row["step"]),
            state=None if row["state"] is None else json.loads(row["state"]),
            history=json.loads(row["history"]),
            version=int(row["version"]),
            ttl_seconds=float(row["ttl_seconds"]),
            created_at=float(row["created_at"]),
            updated_at=float(row["updated_at"]),
            expires_at=float(row["expires_at"]),
            closed=bool(row["closed"]),
            worker=row["worker"],
            work_queue=row["work_queue"],
        )
    except (TypeError, ValueError, KeyError) as exc:
        raise SessionStoreError(f"stored session does not decode: {exc}", session_id=str(row["id"])) from exc


_stores: dict[str, SessionStore] = {}
_stores_lock = threading.Lock()


def get_store(settings: Settings | None = None) -> SessionStore:
    """The process's store for the configured URL (one engine per URL)."""
    url = store_url(settings)
    with _stores_lock:
        store = _stores.get(url)
        if store is None:
            store = _stores[url] = SessionStore(url)
        return store
