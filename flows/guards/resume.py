"""The batch-result store: one place where every finished batch is kept, so nothing is paid twice.

Local and distributed execution write the same store, under the payload base URL (shared storage
that every worker reaches):

    results/<step_key>/xxh3_128-<checksum>.msgpack  the BatchResult and the key of each of its rows
    results/<step_key>/<content_key>.ref.json       its PayloadRef: created exclusively, last
    results/<step_key>/<writer>.rows.jsonl          rows of a running batch, one line each as it completes
    results/<step_key>/<batch>-<writer>.rows.jsonl  the same, written by the worker running a dispatched batch

Keys:

* ``step_key`` (`step_key`): the step's definition (module, signature, options; not its name,
  batch size or pool, which do not change an answer), the LM's identity (never its key) and the
  program's (its source files, saved state and the DSPy version: an edited program runs again);
* ``row_key`` (`row_key`): the values of the row fields the step reads;
* ``batch_key`` (`batch_key`): ``<step_key>-<hash of its row keys>``; a dispatched batch's result is
  found by it (a re-dispatched batch is never recomputed).

Resume is row-level, so it survives a different batching (learned estimates change batch sizes
between runs): before a step runs, `BatchStore.completed` gathers every row completed under its
``step_key`` by any earlier batch, and only the other rows are dispatched. A row that failed (or
was not attempted) is not reused: a re-run tries it again. The LM's response cache plays no part.
Two rows with the same inputs share one stored answer.

Rows are kept as they complete, not only at batch end (issues 25, 26): while a batch runs, each row
that completes is appended to the batch's row journal (`RowJournal`: one JSON line per row, appended
to a local file at once, or rewritten whole about once a second on object storage, which cannot
append). A process killed mid-batch (SIGKILL, an OOM kill, a lost machine) thus loses at most the rows
in flight; `BatchStore.completed` reads journals as well as batch results, and a journal is removed
once its batch's result is stored. A line cut short by the kill is skipped.

In distributed mode the rows complete on a worker, so the worker journals them (`BatchJournals`):
the orchestrator sends the batch's row-keyed key (``resume_key``) with the batch, the worker
journals each completed row under ``<batch>-<writer>.rows.jsonl`` in the same folder, and a
re-dispatch of that batch (its worker died) reads what earlier attempts journaled and runs only the
other rows. The orchestrator removes the batch's journals once it has stored its result.

Payloads are MessagePack through `tasks.payloads` (no pickle); a corrupt file is reported, never
silently reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import fsspec

from dspex.exceptions import PayloadError
from dspex.settings import get_settings
from tasks.batch import BatchResult
from tasks.modules import program_identity, program_optional_names
from tasks.payloads import PayloadRef, read_payload, storage, write_payload
from tasks.rows import get_field

__all__ = [
    "RESULTS_PREFIX",
    "BatchJournals",
    "BatchStore",
    "ResumeStore",
    "RowJournal",
    "StepResume",
    "batch_key",
    "read_batch_result",
    "result_ref_uri",
    "reuse_note",
    "row_key",
    "step_key",
    "write_batch_result",
]

#: Folder (under the payload base URL) where batch results are kept.
RESULTS_PREFIX = "results"
_SIDE = ".ref.json"
_JOURNAL = ".rows.jsonl"
# On storage that cannot append (object stores), a journal is rewritten at most this often.
_JOURNAL_FLUSH_SECONDS = 1.0

logger = logging.getLogger("dspex.resume")


def _digest(value: Any, size: int = 16) -> str:
    blob = json.dumps(value, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.blake2b(blob, digest_size=size).hexdigest()


def _reads(step: Any) -> list[str]:
    """The row fields a module or retrieve step reads (what its answer depends on)."""
    retrieve = {getattr(step, "retrieve", "")} - {""}
    optional = {getattr(step, "inputs", {}).get(n, n) for n in program_optional_names(step)}
    return sorted(set(getattr(step, "inputs", {}).values()) | set(step.needs()) | retrieve | optional)


def step_key(step: Any, lm_key: str, salt: str = "") -> str:
    """The identity of a step's computation (32 hex characters): what can change its answers.

    It covers the step's spec (module, signature, instructions, options, input/output mapping,
    tools, reward, state location, rate limits; not its name, batch size or pool), the LM
    (``lm_key``: model, API base without credentials, temperature and the other LM options; never
    the API key), and the program's identity (`tasks.modules.program_identity`: the source of a
    user program's modules, a hash of its saved state file, the DSPy version). An edited program
    therefore runs again instead of returning an earlier run's answers (issue 24).

    Args:
        step: A module or retrieve step.
        lm_key: The LM's identity (model, API base, options; never the key).
        salt: Makes the key unique (a run that must not reuse earlier results passes its run id).
    """
    config = step.model_dump(mode="json", exclude={"name", "batch_size", "pool"})
    return _digest([config, lm_key, salt, program_identity(step)])


def row_key(step: Any, row: Mapping[str, Any], reads: list[str] | None = None) -> str:
    """The identity of one row's inputs to ``step`` (the fields it reads).

    Args:
        step: The step.
        row: The row.
        reads: The fields ``step`` reads, when the caller has them (saves recomputing per row).
    """
    fields = reads if reads is not None else _reads(step)
    return _digest([get_field(row, f, None) for f in fields])


def batch_key(step_id: str, row_keys: Iterable[str]) -> str:
    """The key of one batch: its step's key and the hash of its rows' keys."""
    return f"{step_id}-{_digest(list(row_keys))}"


def _check_key(key: str) -> str:
    if not key or not all(c.isalnum() or c in "-_" for c in key) or len(key) > 128:
        raise PayloadError(f"batch key {key!r} must be 1-128 letters, digits, '-' or '_'")
    return key


_GROUPED = re.compile(r"^([0-9a-f]{32})-([0-9a-f]+)$")


def _name(key: str) -> str:
    """The stored name of a batch key: ``<step_key>/<content>`` for keys made by `batch_key`, flat
    (``results/<key>``) for any other key."""
    grouped = _GROUPED.match(_check_key(key))
    return f"{RESULTS_PREFIX}/{grouped[1]}/{grouped[2]}" if grouped else f"{RESULTS_PREFIX}/{key}"


class BatchStore:
    """Batch results by key, and completed rows by step (see the module docstring).

    Args:
        base_url: The payload base URL; default ``settings.resolved_payload_url``.
    """

    def __init__(self, base_url: str | None = None) -> None:
        self.base_url = base_url or get_settings().resolved_payload_url

    def ref_uri(self, key: str) -> str:
        """Where the ref sidecar of ``key``'s result lives."""
        return storage.join(self.base_url, _name(key) + _SIDE)

    def write(self, key: str, result: BatchResult, row_keys: list[str] | None = None) -> PayloadRef:
        """Store ``result`` under ``key`` (with its rows' keys, for resume) and publish its sidecar.

        Args:
            key: The batch key.
            result: The batch's result.
            row_keys: The key of each of the batch's rows, in order (None: the result is found by
                batch key only, and its rows are not offered for resume).

        Raises:
            PayloadError: The storage cannot be written.
        """
        if row_keys is not None and len(row_keys) != len(result.outputs):
            raise PayloadError(f"batch {key}: {len(row_keys)} row keys for {len(result.outputs)} rows")
        document = {"row_keys": row_keys, "result": result.model_dump(mode="json")}
        # Atomic as a unit, even when two dispatches of one batch race (issue 13): the payload is
        # content-addressed (two different results never overwrite each other), and the sidecar, the
        # single pointer, is created exclusively after it; the first result published stays.
        folder = storage.join(self.base_url, _name(key).rsplit("/", 1)[0])
        ref = write_payload(document, folder, "msgpack", inline_max_bytes=0)
        sidecar = self.ref_uri(key)
        if storage.create_exclusive(sidecar, ref.model_dump_json().encode()):
            return ref
        try:
            published, _document = self._load(sidecar)
        except PayloadError as exc:  # a broken pointer (an older layout's race): replace it
            logger.warning("replacing an unreadable batch-result sidecar %s: %s", sidecar, exc)
            storage.write_atomic(sidecar, ref.model_dump_json().encode())
            return ref
        return published

    def _load(self, sidecar_uri: str) -> tuple[PayloadRef, dict[str, Any]]:
        raw = bytes(memoryview(storage.read_bytes(sidecar_uri)))
        try:
            ref = PayloadRef.model_validate(json.loads(raw))
        except ValueError as exc:
            raise PayloadError(f"corrupt batch-result sidecar: {exc}", uri=sidecar_uri) from exc
        document = read_payload(ref)
        if not isinstance(document, dict) or "result" not in document:
            raise PayloadError("batch-result payload is not a stored batch result", uri=ref.uri)
        return ref, document

    def read(self, key: str) -> tuple[PayloadRef, BatchResult] | None:
        """The stored result of ``key``, or None when there is none yet.

        Raises:
            PayloadError: The sidecar or payload exists but cannot be read (corrupt, unreadable).
        """
        uri = self.ref_uri(key)
        if not storage.exists(uri):
            return None
        ref, document = self._load(uri)
        return ref, BatchResult.model_validate(document["result"])

    def completed(self, step_id: str) -> dict[str, dict[str, Any]]:
        """Every row completed under ``step_id`` by any stored batch: row key -> the row's outputs.

        A stored file that cannot be read is logged and skipped (its rows simply run again).
        """
        import fsspec

        folder = storage.join(self.base_url, f"{RESULTS_PREFIX}/{_check_key(step_id)}")
        fs, path = fsspec.core.url_to_fs(folder)
        try:
            listed = sorted(str(p) for p in fs.ls(path, detail=False))
        except FileNotFoundError:
            return {}
        names = [p for p in listed if p.endswith(_SIDE)]
        found: dict[str, dict[str, Any]] = {}
        for name in (p for p in listed if p.endswith(_JOURNAL)):  # rows of batches cut short
            try:
                found.update(_journal_rows(fs, name))
            except OSError as exc:
                logger.warning("skipping an unreadable row journal %s: %s", name, exc)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        for name in names:
            uri = str(name) if protocol in ("file", "local") else f"{protocol}://{name}"
            try:
                _ref, document = self._load(uri)
                result = BatchResult.model_validate(document["result"])
            except (PayloadError, ValueError) as exc:
                logger.warning("skipping an unreadable stored batch result %s: %s", uri, exc)
                continue
            keys = document.get("row_keys") or []
            for rk, output, error in zip(keys, result.outputs, result.errors, strict=False):
                if output is not None and error is None:
                    found[rk] = output
        return found


class RowJournal:
    """The rows of one running batch, kept as each completes (see the module docstring).

    Thread-safe: the pool's threads call `add` as their rows complete. A storage failure is logged
    once and turns the journal off (the batch's result is still stored at its end).

    Args:
        folder: The step's results folder (``<payload url>/results/<step_key>``).
        row_keys: The key of each of the batch's rows, in order.
        prefix: Starts the journal's file name (`BatchJournals`: the batch it belongs to).
    """

    def __init__(self, folder: str, row_keys: list[str], prefix: str = "") -> None:
        self.uri = storage.join(folder, f"{prefix}{uuid.uuid4().hex}{_JOURNAL}")
        self.row_keys = row_keys
        self._local = storage.is_local(self.uri)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._lines: list[bytes] = []
        self._flushed = 0
        self._last_flush = time.monotonic()
        self._closed = False
        self.rows = 0

    def add(self, index: int, outputs: dict[str, Any]) -> None:
        """Keep row ``index``'s outputs (a completed row)."""
        line = json.dumps({"k": self.row_keys[index], "o": outputs}, separators=(",", ":"), default=str)
        data = (line + "\n").encode()
        with self._lock:
            if self._closed:
                return
            try:
                if self._local:
                    if self._fd is None:
                        storage.make_private_dirs(os.path.dirname(self.uri))
                        # Owner-only (0600) like every payload; O_APPEND: one write per row, so a
                        # kill leaves whole lines and at most one cut-off last line.
                        self._fd = os.open(self.uri, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                    os.write(self._fd, data)
                else:
                    self._lines.append(data)
                    if time.monotonic() - self._last_flush >= _JOURNAL_FLUSH_SECONDS:
                        self._flush()
                self.rows += 1
            except (OSError, PayloadError) as exc:
                logger.warning("row journal %s is off (rows are kept at batch end): %s", self.uri, exc)
                self._close_locked(remove=False)

    def _flush(self) -> None:
        if len(self._lines) > self._flushed:
            storage.write_atomic(self.uri, b"".join(self._lines))
            self._flushed = len(self._lines)
        self._last_flush = time.monotonic()

    def close(self, *, remove: bool) -> None:
        """Stop journaling; ``remove``: the batch's result is stored, so the journal is not needed."""
        with self._lock:
            if not self._closed:
                self._close_locked(remove=remove)

    def _close_locked(self, *, remove: bool) -> None:
        self._closed = True
        try:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if remove and self._local:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.uri)
            elif remove and self._flushed:
                fs, path = fsspec.core.url_to_fs(self.uri)
                fs.rm_file(path)
            elif not self._local:
                self._flush()
        except (OSError, PayloadError) as exc:
            logger.warning("could not close row journal %s: %s", self.uri, exc)


def _journal_rows(fs: Any, path: str) -> list[tuple[str, dict[str, Any]]]:
    """The (row key, outputs) lines of a row journal; a line cut off by a kill is skipped."""
    found = []
    for line in bytes(fs.cat_file(path)).splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("k"), str) and isinstance(entry.get("o"), dict):
            found.append((entry["k"], entry["o"]))
    return found


class BatchJournals:
    """The row journals of one dispatched batch, written by the worker that runs it (issue 26).

    The orchestrator makes one per dispatched module batch (`ResumeStore.worker_rows`) and sends
    its `key` with the batch; the worker makes its own from that key. Each attempt at the batch
    journals its rows in its own file, ``<payload url>/results/<step_key>/<batch>-<writer>.rows.jsonl``
    (``<batch>``: the content part of the key), so

    * a re-dispatched batch (its worker died) reads what earlier attempts kept (`read`) and runs
      only the other rows;
    * a later run finds them like any journal (`BatchStore.completed`);
    * the orchestrator removes them (`close`) once it has stored the batch's result.

    A storage failure is logged and never fails the batch: its rows then simply run again.

    Args:
        key: The batch's row-keyed key (``<step_key>-<hash of its row keys>``, `StepResume.batch_key`).
        base_url: The payload base URL (default: the settings').

    Raises:
        PayloadError: ``key`` is not such a key.
    """

    def __init__(self, key: str, base_url: str | None = None) -> None:
        grouped = _GROUPED.match(_check_key(key))
        if grouped is None:
            raise PayloadError(f"resume key {key!r} is not <step key>-<hash of row keys>")
        self.key = key
        self.step_id = grouped[1]
        self._prefix = f"{grouped[2]}-"
        base = base_url or get_settings().resolved_payload_url
        self.folder = storage.join(base, f"{RESULTS_PREFIX}/{self.step_id}")
        self._removed = False

    def row_keys(self, step: Any, rows: list[dict[str, Any]]) -> list[str] | None:
        """The key of each of ``rows``, or None when they do not make up this batch (this process
        keys them differently from the orchestrator's: an older or newer program or DSPex)."""
        reads = _reads(step)
        keys = [row_key(step, row, reads) for row in rows]
        return keys if batch_key(self.step_id, keys) == self.key else None

    def _paths(self) -> tuple[Any, list[str]]:
        fs, path = fsspec.core.url_to_fs(self.folder)
        try:
            listed = fs.ls(path, detail=False)
        except FileNotFoundError:
            return fs, []
        names = (str(p) for p in listed)
        return fs, sorted(
            n for n in names if n.rsplit("/", 1)[-1].startswith(self._prefix) and n.endswith(_JOURNAL)
        )

    def read(self) -> dict[str, dict[str, Any]]:
        """Rows earlier attempts at this batch journaled: row key -> outputs (what cannot be read
        is logged and skipped: those rows run again)."""
        found: dict[str, dict[str, Any]] = {}
        try:
            fs, paths = self._paths()
        except (OSError, ValueError) as exc:
            logger.warning("could not list the row journals of batch %s: %s", self.key[:24], exc)
            return found
        for name in paths:
            try:
                found.update(_journal_rows(fs, name))
            except OSError as exc:
                logger.warning("skipping an unreadable row journal %s: %s", name, exc)
        return found

    def writer(self, row_keys: list[str]) -> RowJournal:
        """A journal for this attempt's rows (``row_keys``: the key of each row it runs, in order)."""
        return RowJournal(self.folder, row_keys, prefix=self._prefix)

    def close(self, *, remove: bool) -> None:
        """``remove``: the batch's result is stored, so every journal of this batch is removed."""
        if not remove or self._removed:
            return
        self._removed = True
        try:
            fs, paths = self._paths()
            for name in paths:
                with contextlib.suppress(FileNotFoundError):
                    fs.rm_file(name)
        except (OSError, ValueError) as exc:
            logger.warning("could not remove the row journals of batch %s: %s", self.key[:24], exc)


def reuse_note(reused_rows: int) -> str:
    """What a run's summary line adds when rows were reused: that they did not run, and how to run
    them again (issue 26.2: a default run after an earlier one "did nothing"); '' when none were."""
    if not reused_rows:
        return ""
    return (
        f"; {reused_rows} row(s) reused from earlier runs, not run again (to run them: "
        "`dspex run --no-resume`, the `resume` parameter set to false for deployments, or DSPEX_RESUME=false)"
    )


def result_ref_uri(key: str, base_url: str | None = None) -> str:
    """Where the ref sidecar of ``key``'s result lives (see `BatchStore.ref_uri`)."""
    return BatchStore(base_url).ref_uri(key)


def write_batch_result(
    result: BatchResult, key: str, base_url: str | None = None, row_keys: list[str] | None = None
) -> PayloadRef:
    """Store ``result`` under ``key`` (see `BatchStore.write`)."""
    return BatchStore(base_url).write(key, result, row_keys)


def read_batch_result(key: str, base_url: str | None = None) -> tuple[PayloadRef, BatchResult] | None:
    """The stored result of ``key``, or None (see `BatchStore.read`)."""
    return BatchStore(base_url).read(key)


class StepResume:
    """Resume for one step of one run: which rows earlier runs completed, and keys for new batches.

    Args:
        step: The module or retrieve step.
        lm_key: The LM's identity.
        store: Where results are kept; None turns reuse off (keys are still made, salted).
        salt: Non-empty when this run must not reuse anything (``resume=False``): its keys are unique.
    """

    def __init__(self, step: Any, lm_key: str, store: BatchStore | None, salt: str = "") -> None:
        self.step = step
        self.store = store
        self.reads = _reads(step)
        self.step_id = step_key(step, lm_key, salt)
        self.done: dict[str, dict[str, Any]] = store.completed(self.step_id) if store and not salt else {}

    def row_keys(self, rows: list[dict[str, Any]]) -> list[str]:
        """The key of each row."""
        return [row_key(self.step, row, self.reads) for row in rows]

    def split(
        self, rows: list[dict[str, Any]], active: list[int]
    ) -> tuple[dict[int, dict[str, Any]], list[int]]:
        """Rows an earlier run completed (index -> outputs) and the indices still to run."""
        if not self.done:
            return {}, list(active)
        reused: dict[int, dict[str, Any]] = {}
        remaining: list[int] = []
        for i in active:
            found = self.done.get(row_key(self.step, rows[i], self.reads))
            if found is None:
                remaining.append(i)
            else:
                reused[i] = found
        return reused, remaining

    def batch_key(self, rows: list[dict[str, Any]]) -> tuple[str, list[str]]:
        """The batch key of ``rows`` and their row keys."""
        keys = self.row_keys(rows)
        return batch_key(self.step_id, keys), keys

    def save(self, key: str, result: BatchResult, row_keys: list[str]) -> bool:
        """Keep a finished batch's result for later runs (a storage failure is logged, not raised:
        the run's own output does not depend on it). True when it was kept."""
        if self.store is None:
            return False
        try:
            self.store.write(key, result, row_keys)
        except PayloadError as exc:
            logger.warning("could not keep batch %s for resume: %s", key[:24], exc)
            return False
        return True

    def journal(self, rows: list[dict[str, Any]]) -> RowJournal | None:
        """A journal that keeps ``rows``' results as each completes (None: nothing is kept)."""
        if self.store is None:
            return None
        folder = storage.join(self.store.base_url, f"{RESULTS_PREFIX}/{self.step_id}")
        return RowJournal(folder, self.row_keys(rows))

    def worker_journals(self, rows: list[dict[str, Any]]) -> BatchJournals | None:
        """The journals a worker keeps ``rows``' results in as each completes (None: nothing kept)."""
        if self.store is None:
            return None
        key, _row_keys = self.batch_key(rows)
        return BatchJournals(key, self.store.base_url)


class ResumeStore:
    """The executors' `flows.engine.executors.base.ResultStore`: row-level reuse across runs.

    ``lookup`` answers a batch whose every row an earlier run completed; ``store`` keeps each fresh
    result; `split` lets the engine take the completed rows out *before* it cuts a step into batches,
    so a re-run with different batch sizes still reuses every completed row.

    Args:
        lm_key: The LM's identity (part of every step key).
        base_url: The payload base URL (default: the settings').
        reuse: False: nothing earlier is reused; results are still kept, under step keys salted
            with ``salt``, which no other run shares.
        salt: A run-unique string (the flow run id) used when ``reuse`` is False.

    Attributes:
        run_id: ``salt`` as given: the engine salts its dispatch keys with it, so the transport
            results of ``run-step`` (``results/<engine batch key>``) make a re-dispatch idempotent
            within this run but are never mistaken for a later run's batch (a batch that failed
            in an outage must run again); reuse across runs goes through the row keys only.
    """

    def __init__(
        self, lm_key: str, base_url: str | None = None, *, reuse: bool = True, salt: str = ""
    ) -> None:
        self.lm_key = lm_key
        self.batches = BatchStore(base_url)
        self.salt = "" if reuse else (salt or "no-reuse")
        self.run_id = salt
        self._steps: dict[str, StepResume] = {}
        self.reused_rows = 0

    def for_step(self, step: Any) -> StepResume:
        """The step's resume state (loaded once per run and step)."""
        key = step_key(step, self.lm_key, self.salt)
        found = self._steps.get(key)
        if found is None:
            found = self._steps[key] = StepResume(step, self.lm_key, self.batches, self.salt)
        return found

    def split(
        self, step: Any, rows: list[dict[str, Any]], active: list[int]
    ) -> tuple[dict[int, dict[str, Any]], list[int]]:
        """Rows of ``active`` completed by an earlier run (index -> outputs) and the rest."""
        reused, remaining = self.for_step(step).split(rows, active)
        self.reused_rows += len(reused)
        return reused, remaining

    def lookup(self, request: Any) -> BatchResult | None:
        """A result for ``request`` when an earlier run completed every one of its rows."""
        resume = self.for_step(request.step)
        if not resume.done:
            return None
        outputs = [resume.done.get(k) for k in resume.row_keys(request.rows)]
        if any(o is None for o in outputs):
            return None
        n = len(outputs)
        return BatchResult(outputs=outputs, errors=[None] * n, latencies_ms=[0.0] * n, wall_ms=0.0, reused=n)

    def row_sink(self, request: Any) -> RowJournal | None:
        """A journal for ``request``'s rows as they complete (module steps; `store` closes it)."""
        if request.step.kind != "module":
            return None  # a retrieve batch is one encode call: its rows complete together
        return self.for_step(request.step).journal(request.rows)

    def worker_rows(self, request: Any) -> BatchJournals | None:
        """The journals the worker running ``request`` keeps its rows in (module steps; distributed
        mode: `flows.engine.executors.remote.RemoteExecutor` sends their key; `store` removes them)."""
        if request.step.kind != "module":
            return None
        return self.for_step(request.step).worker_journals(request.rows)

    def store(self, request: Any, result: BatchResult) -> None:
        """Keep a fresh result (its completed rows become reusable by later runs); the batch's row
        journal (``request.rows_sink``) is removed once the result is kept."""
        sink = getattr(request, "rows_sink", None)
        saved = self._store(request, result, journaled=isinstance(sink, BatchJournals))
        if sink is not None:
            sink.close(remove=saved)

    def _store(self, request: Any, result: BatchResult, journaled: bool = False) -> bool:
        """Keep ``result``; True when its rows are kept (or there is nothing to keep), so the
        batch's journals may go. ``journaled``: a worker journaled the batch (`BatchJournals`)."""
        if not any(o is not None and e is None for o, e in zip(result.outputs, result.errors, strict=False)):
            # Nothing completed (an outage, a stop): nothing to reuse, and the first result stored
            # under a key stays, so storing this one would shadow a later run's good result. A
            # worker's journals stay: what attempts that crashed journaled is kept only there.
            return not journaled
        resume = self.for_step(request.step)
        key, row_keys = resume.batch_key(request.rows)
        if result.reused == len(result.outputs) and (not journaled or self._kept(resume, key)):
            # Nothing new; but a worker may have taken every row from its batch's journals (an
            # earlier attempt ran them all, then died): those are kept nowhere else until this is.
            return True
        return resume.save(key, result, row_keys)

    @staticmethod
    def _kept(resume: StepResume, key: str) -> bool:
        try:
            return resume.store is not None and storage.exists(resume.store.ref_uri(key))
        except PayloadError:
            return False
