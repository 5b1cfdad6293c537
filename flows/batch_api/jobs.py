"""The saved state of a provider batch job (issue 21): rounds, answers, and where they live.

``<payload_url>/lm_batches/<job>/state.json`` holds the rounds (idempotency key, file and batch ids,
provider status, submitted/completed times, checks) and each request's failed attempts;
``answers-<round>.json`` holds a finished round's answers (request key -> the raw answer);
``round-<round>.json``, written once when the round is created, holds its request keys (so a later
run collects a submitted round without replaying the rows to find them) and the replay memo's entries
made by the replay that created it (`tasks.lm.replay_memo`). All are JSON, written atomically (`tasks.payloads.storage`); nothing is pickled and no key is stored. The job
id (`job_id`) is a hash of the step's definition, the LM's identity and the rows' inputs, so any run
over the same rows (a restarted process, a re-check flow run) finds the same job.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dspex.exceptions import PayloadError
from tasks.lm.replay import Answer
from tasks.payloads import storage

__all__ = [
    "BATCH_PREFIX",
    "BatchJob",
    "BatchJobState",
    "LMBatchRecord",
    "RoundState",
    "backoff_seconds",
    "job_id",
    "now_iso",
]

#: Folder (under the payload base URL) holding the batch jobs' state.
BATCH_PREFIX = "lm_batches"


class RoundState(BaseModel):
    """One round of a batch job."""

    model_config = ConfigDict(extra="forbid")

    number: int
    key: str = Field(
        description="Idempotency key, sent as the batch's metadata dspex_key (where it has metadata)."
    )
    status: Literal["preparing", "submitted", "done"] = "preparing"
    requests: int = 0
    prepared_at: str | None = Field(
        default=None,
        description="When the round was recorded as preparing: a provider whose batches carry no metadata "
        "(Anthropic) finds a batch submitted before a crash by this time and the request count.",
    )
    file_id: str | None = None
    batch_id: str | None = None
    provider_status: str | None = None
    submitted_at: str | None = None
    completed_at: str | None = None
    checks: int = 0
    answered: int = 0
    failed: int = 0
    replay_ms: float = Field(
        default=0.0, description="Running the waiting rows' programs to collect the requests."
    )
    io_ms: float = Field(
        default=0.0, description="Writing, uploading and submitting the file, collecting answers."
    )


class BatchJobState(BaseModel):
    """A batch job's saved state (``state.json``)."""

    model_config = ConfigDict(extra="forbid")

    job: str
    step: str
    module: str
    model: str
    rows: int
    rounds: list[RoundState] = Field(default_factory=list)
    failures: dict[str, int] = Field(default_factory=dict, description="Request key -> failed attempts.")


class LMBatchRecord(BaseModel):
    """What batch mode did for one step (in the step record and the duration artifact)."""

    model_config = ConfigDict(extra="forbid")

    job: str
    rounds: int
    requests: int = Field(description="Requests submitted, over all rounds.")
    batch_ids: list[str]
    submitted_at: list[str | None]
    completed_at: list[str | None]
    wait_s: float = Field(description="Seconds from the first submission to the last completion.")
    online_fallbacks: int = 0
    replay_ms: list[float] = Field(
        default_factory=list,
        description="Per round: running the waiting rows' programs from the start (DSPy's formatting of the "
        "round's new calls and parsing of the newly answered ones; calls replayed from the replay memo are "
        "neither formatted nor parsed again).",
    )
    io_ms: list[float] = Field(
        default_factory=list,
        description="Per round: building, uploading and submitting the file; collecting.",
    )
    finish_ms: float = Field(
        default=0.0,
        description="The last pass, after the last round: the rows' programs with every answer at hand "
        "(what gives the rows' outputs).",
    )
    price: str = ""


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def backoff_seconds(checks: int, first: float, most: float) -> float:
    """The wait before check number ``checks + 1``: ``first`` doubling per check, at most ``most``."""
    return float(min(first * (2 ** min(checks, 30)), most))


class BatchJob:
    """A batch job's files (state and answers) under the payload base URL.

    Args:
        base_url: The payload base URL.
        state: The job's state (as loaded, or fresh).
    """

    def __init__(self, base_url: str, state: BatchJobState) -> None:
        self.folder = storage.join(base_url, f"{BATCH_PREFIX}/{state.job}")
        self.state = state
        self._rounds: dict[int, dict[str, Any] | None] = {}

    @classmethod
    def open(cls, base_url: str, fresh: BatchJobState) -> BatchJob:
        job = cls(base_url, fresh)
        uri = storage.join(job.folder, "state.json")
        if storage.exists(uri):
            try:
                job.state = BatchJobState.model_validate_json(bytes(memoryview(storage.read_bytes(uri))))
            except ValueError as exc:
                raise PayloadError(f"corrupt batch job state: {exc}", uri=uri) from exc
        return job

    def save(self) -> None:
        storage.write_atomic(storage.join(self.folder, "state.json"), self.state.model_dump_json().encode())

    def write_answers(self, number: int, answers: dict[str, Answer]) -> None:
        data = json.dumps({k: a.to_json() for k, a in answers.items()}, separators=(",", ":")).encode()
        storage.write_atomic(storage.join(self.folder, f"answers-{number}.json"), data)

    def write_round(self, number: int, requests: list[str], memo: dict[str, Any]) -> None:
        """Keep round ``number``'s request keys and the replay memo entries made with it."""
        data = {"requests": requests, "memo": memo}
        storage.write_atomic(
            storage.join(self.folder, f"round-{number}.json"),
            json.dumps(data, separators=(",", ":")).encode(),
        )
        self._rounds[number] = data

    def round_requests(self, number: int) -> list[str] | None:
        """Round ``number``'s request keys (None: its run kept none, as before round files)."""
        data = self._round(number)
        return None if data is None else list(data["requests"])

    def replay_memo(self) -> tuple[dict[str, str], dict[str, list[Any]]]:
        """The replay memo's entries saved with the rounds (`tasks.lm.replay_memo.ReplayMemo`'s input)."""
        known: dict[str, str] = {}
        outputs: dict[str, list[Any]] = {}
        for r in self.state.rounds:
            data = self._round(r.number)
            if data is not None:
                known.update(data["memo"]["known"])
                outputs.update(data["memo"]["outputs"])
        return known, outputs

    def _round(self, number: int) -> dict[str, Any] | None:
        if number in self._rounds:
            return self._rounds[number]
        uri = storage.join(self.folder, f"round-{number}.json")
        data: dict[str, Any] | None = None
        if storage.exists(uri):
            try:
                raw = json.loads(bytes(memoryview(storage.read_bytes(uri))))
            except (OSError, PayloadError, ValueError) as exc:
                raise PayloadError(f"batch round {number} unreadable: {exc}", uri=uri) from exc
            memo = raw.get("memo") if isinstance(raw, dict) else None
            if not (
                isinstance(memo, dict)
                and isinstance(raw.get("requests"), list)
                and isinstance(memo.get("known"), dict)
                and isinstance(memo.get("outputs"), dict)
            ):
                raise PayloadError(f"batch round {number} is not a round file", uri=uri)
            data = raw
        self._rounds[number] = data
        return data

    def answers(self) -> dict[str, Answer]:
        found: dict[str, Answer] = {}
        for r in self.state.rounds:
            if r.status != "done":
                continue
            uri = storage.join(self.folder, f"answers-{r.number}.json")
            try:
                raw = json.loads(bytes(memoryview(storage.read_bytes(uri))))
            except (OSError, PayloadError, ValueError) as exc:
                raise PayloadError(f"batch answers of round {r.number} unreadable: {exc}", uri=uri) from exc
            found.update({k: Answer.from_json(v) for k, v in raw.items()})
        return found


def job_id(step: Any, rows: list[dict[str, Any]], lm_key: str) -> str:
    """The job of ``step`` over ``rows`` with the LM ``lm_key``: the resume store's own step and row keys."""
    from flows.guards.resume import StepResume

    keys = StepResume(step, lm_key, None)  # the fields the step reads, found once (not per row)
    blob = json.dumps([keys.step_id, keys.row_keys(rows)], separators=(",", ":")).encode()
    return hashlib.blake2b(blob, digest_size=16).hexdigest()
