"""The registry file: a JSON document holding what the registry learned and what users registered.

The core catalogue and discovery are rebuilt on every start, so the file holds only what they cannot
give back: modules registered at run time, observed durations and usage statistics.

Writes are atomic (a temporary file in the same folder, flushed and fsynced, then ``os.replace``), so a
crash leaves either the old file or the new one, never half of one. A file that does not parse or
validate is never silently replaced: it is copied to ``<name>.corrupt-<timestamp>`` and a
`RegistryPersistenceError` names both files. No pickle: the file is plain JSON, validated on read.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dspex.exceptions import RegistryPersistenceError
from dspex.private import make_private_dirs
from registry.models import ModuleInfo, PoolType
from registry.sizing import SizeBucket

__all__ = [
    "FILE_FORMAT",
    "FILE_VERSION",
    "ObservationRecord",
    "RegistryFile",
    "TokenRecord",
    "UsageRecord",
    "read_registry_file",
    "write_registry_file",
]

FILE_FORMAT = "dspex-registry"
FILE_VERSION = 1

_RECORD = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
_Duration = Annotated[float, Field(ge=0)]


class ObservationRecord(BaseModel):
    """The recent observed durations of one (module, pool, input-size bucket)."""

    model_config = _RECORD

    module: str
    pool: PoolType
    bucket: SizeBucket
    samples_ms: list[_Duration]


class UsageRecord(BaseModel):
    """The usage counters of one module."""

    model_config = _RECORD

    module: str
    calls: int = Field(ge=0)
    failures: int = Field(ge=0)
    durations_ms: list[_Duration]

    @model_validator(mode="after")
    def _failures_within_calls(self) -> UsageRecord:
        if self.failures > self.calls:
            raise ValueError(f"failures ({self.failures}) exceed calls ({self.calls})")
        return self


class TokenRecord(BaseModel):
    """The recent per-row token and cost samples of one module on one LM model."""

    model_config = _RECORD

    module: str
    model: str
    prompt_tokens: list[_Duration]
    completion_tokens: list[_Duration]
    cost_usd: list[_Duration | None]

    @model_validator(mode="after")
    def _same_lengths(self) -> TokenRecord:
        if not len(self.prompt_tokens) == len(self.completion_tokens) == len(self.cost_usd):
            raise ValueError("prompt_tokens, completion_tokens and cost_usd must have the same length")
        return self


class RegistryFile(BaseModel):
    """The whole registry file.

    Attributes:
        format: Always ``dspex-registry``, so an unrelated JSON file is recognised as such.
        version: The layout version.
        saved_at: When it was written (UTC, ISO 8601).
        modules: Modules registered at run time (user modules, updated catalogue entries).
        observations: Observed durations.
        usage: Usage counters.
        tokens: Learned tokens and cost per row, by module and LM model.
    """

    model_config = _RECORD

    format: Literal["dspex-registry"] = "dspex-registry"
    version: Literal[1] = 1
    saved_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    modules: list[ModuleInfo] = Field(default_factory=list)
    observations: list[ObservationRecord] = Field(default_factory=list)
    usage: list[UsageRecord] = Field(default_factory=list)
    tokens: list[TokenRecord] = Field(default_factory=list)


def write_registry_file(path: Path, data: RegistryFile) -> None:
    """Write the registry file atomically.

    Args:
        path: The file to (re)place; its folder is created when missing.
        data: What to write.

    Raises:
        RegistryPersistenceError: The folder or file cannot be written.
    """
    text = data.model_dump_json(indent=1)
    temp_name: str | None = None
    try:
        make_private_dirs(path.parent)  # NamedTemporaryFile makes the file itself 0600
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
        ) as handle:
            temp_name = handle.name
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
        temp_name = None
    except OSError as error:
        raise RegistryPersistenceError(f"cannot write registry file {path}: {error}") from error
    finally:
        if temp_name is not None:
            # The rename never happened: do not leave the temporary file behind.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_name)


def _keep_backup(path: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    backup = path.with_name(f"{path.name}.corrupt-{stamp}")
    shutil.copy2(path, backup)
    return backup


def read_registry_file(path: Path) -> RegistryFile:
    """Read and validate the registry file.

    Args:
        path: The file.

    Raises:
        RegistryPersistenceError: The file is missing or unreadable, or it is corrupt (then a backup
            copy is kept and named in the message; the file itself is left in place).
    """
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise RegistryPersistenceError(f"cannot read registry file {path}: {error}") from error
    try:
        return RegistryFile.model_validate_json(raw)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<document>"
        summary = f"{error.error_count()} problem(s), first at {where}: {first['msg']}"
        try:
            backup = _keep_backup(path)
        except OSError as copy_error:
            raise RegistryPersistenceError(
                f"registry file {path} is corrupt ({summary}) and no backup could be made ({copy_error}); "
                "fix or move it before starting again"
            ) from error
        raise RegistryPersistenceError(
            f"registry file {path} is corrupt ({summary}); a copy was kept at {backup}; "
            "fix or delete the file to start with a fresh registry"
        ) from error
