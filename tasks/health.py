"""Health checks: is everything a DSPex run needs up, right now?

`check_health` runs each check and reports all of them (one failure does not hide the next); both
``dspex health`` (`deployments.cli.health`) and the scheduled ``health`` flow (`flows.health`) run
it. The checks need only the settings, Prefect's client, payloads, the registry and the LM, so they
live here, below both:

=============  =====================================================================================
check          passes when
=============  =====================================================================================
api            the Prefect API at ``PREFECT_API_URL`` answers ``/health``
pool:<name>    the work pool ``general`` / ``optimizer`` / ``gpu`` exists and is not paused
workers:<name> the pool has at least one live worker (heartbeat within 3 intervals, Prefect's rule)
run-step:<n>   the pool's ``run-step/run-step-<pool>`` deployment exists
payloads       a payload written to the payload storage (``DSPEX_PAYLOAD_URL``) reads back intact
registry       the registry's learned-state file is readable (or not written yet)
lm             the configured LM answers one short request (skipped with ``no_lm``)
=============  =====================================================================================

Without ``PREFECT_API_URL`` (the embedded local mode) there is no server to ask: the API, pool,
worker and deployment checks are reported as skipped, not failed. No check ever prints a secret:
LM errors and URLs pass through `dspex.redact.redact`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dspex.redact import redact
from dspex.settings import Settings, get_settings

__all__ = ["POOLS", "HealthCheck", "HealthReport", "check_health"]

POOLS = ("general", "optimizer", "gpu")
RUN_STEP = "run-step/run-step-{pool}"
HEARTBEAT_MISSES = 3  # Prefect's own multiple for marking a worker offline

# Each check imports what it needs as it runs (Prefect's client, pyarrow, DSPy: seconds of imports on
# two cores), for start-up time: importing this module costs only pydantic and the settings.

Status = Literal["ok", "fail", "skip"]


class HealthCheck(BaseModel):
    """One check's outcome."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    status: Status
    detail: str = Field(description="What was found, or what is wrong and what to do.")
    ms: float = Field(description="How long the check took.")


class HealthReport(BaseModel):
    """All checks; ``ok`` when none failed (skipped checks do not fail)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ok: bool
    checks: list[HealthCheck]

    @property
    def failed(self) -> list[HealthCheck]:
        """The checks that failed."""
        return [c for c in self.checks if c.status == "fail"]


class _Fail(Exception):
    """A check's failure with the message to report."""


def _safe(text: str) -> str:
    return redact(text)[:300]


def _run(name: str, fn: Callable[[], str | tuple[Status, str]]) -> HealthCheck:
    start = time.perf_counter()
    try:
        outcome = fn()
        status, detail = outcome if isinstance(outcome, tuple) else ("ok", outcome)
    except _Fail as exc:
        status, detail = "fail", str(exc)
    except Exception as exc:  # a check's unexpected error is its failure, reported, never raised
        status, detail = "fail", f"{type(exc).__name__}: {exc}"
    return HealthCheck(
        name=name, status=status, detail=_safe(detail), ms=round((time.perf_counter() - start) * 1000, 1)
    )


def _live(worker: Any, now: datetime) -> bool:
    last = getattr(worker, "last_heartbeat_time", None)
    if last is None:
        return False
    interval = float(getattr(worker, "heartbeat_interval_seconds", None) or 30)
    return (now - last).total_seconds() <= HEARTBEAT_MISSES * interval


def _prefect_checks(api_url: str) -> list[HealthCheck]:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    checks: list[HealthCheck] = []
    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:

        def api() -> str:
            error = client.api_healthcheck()
            if error is not None:
                raise _Fail(f"Prefect API at {api_url} does not answer: {type(error).__name__}: {error}")
            return f"Prefect API at {api_url} answers"

        checks.append(_run("api", api))
        if checks[-1].status == "fail":
            skipped = "skipped: the API is unreachable"
            for pool in POOLS:
                for kind in ("pool", "workers", "run-step"):
                    checks.append(HealthCheck(name=f"{kind}:{pool}", status="skip", detail=skipped, ms=0.0))
            return checks

        for pool in POOLS:

            def pool_exists(pool: str = pool) -> str:
                try:
                    work_pool = client.read_work_pool(pool)
                except ObjectNotFound:
                    raise _Fail(f"work pool {pool!r} does not exist (run `dspex pools create`)") from None
                if work_pool.is_paused:
                    raise _Fail(f"work pool {pool!r} is paused (resume it in the UI or with prefect)")
                return f"work pool {pool!r} ({work_pool.type}) exists"

            def workers(pool: str = pool) -> str:
                try:
                    records = client.read_workers_for_work_pool(pool)
                except ObjectNotFound:
                    raise _Fail(f"work pool {pool!r} does not exist") from None
                now = datetime.now(UTC)
                live = sorted(w.name for w in records if _live(w, now))
                if not live:
                    seen = f"{len(records)} worker(s) silent" if records else "no worker ever registered"
                    raise _Fail(
                        f"no live worker in pool {pool!r} ({seen}); start one: dspex worker --pool {pool}"
                    )
                return f"{len(live)} live: {', '.join(live[:5])}"

            def run_step(pool: str = pool) -> str:
                name = RUN_STEP.format(pool=pool)
                try:
                    deployment = client.read_deployment_by_name(name)
                except ObjectNotFound:
                    raise _Fail(f"no deployment {name!r} (run `prefect --no-prompt deploy --all`)") from None
                if deployment.work_pool_name and deployment.work_pool_name != pool:
                    raise _Fail(
                        f"deployment {name!r} runs on pool {deployment.work_pool_name!r}, not {pool!r}"
                    )
                return f"deployment {name!r} present"

            checks.append(_run(f"pool:{pool}", pool_exists))
            checks.append(_run(f"workers:{pool}", workers))
            checks.append(_run(f"run-step:{pool}", run_step))
    return checks


def _payloads(settings: Settings) -> str:
    from tasks.payloads import read_payload, write_payload

    token = uuid.uuid4().hex
    base = settings.resolved_payload_url
    try:
        ref = write_payload([{"dspex_health": token}], base, name=f"dspex-health-{token}", inline_max_bytes=0)
    except Exception as exc:
        raise _Fail(f"cannot write to payload storage {base}: {type(exc).__name__}: {exc}") from exc
    try:
        back = read_payload(ref)
    except Exception as exc:
        raise _Fail(f"wrote {ref.uri} but cannot read it back: {type(exc).__name__}: {exc}") from exc
    finally:
        _remove(ref.uri)
    if back != [{"dspex_health": token}]:
        raise _Fail(f"payload {ref.uri} read back different content")
    return f"{base} writable and readable"


def _remove(uri: str) -> None:
    import contextlib

    import fsspec

    with contextlib.suppress(Exception):  # a leftover health file is harmless
        fs, path = fsspec.core.url_to_fs(uri)
        fs.rm(path)


def _registry(settings: Settings) -> str | tuple[Status, str]:
    from registry.persistence import read_registry_file

    path = settings.resolved_registry_path
    if not path.exists():
        return "ok", f"{path} not written yet (static estimates until a run learns)"
    try:
        data = read_registry_file(path)
    except Exception as exc:
        raise _Fail(f"registry file {path} is unreadable: {type(exc).__name__}: {exc}") from exc
    return f"{path} readable ({len(data.model_dump())} sections)"


def _lm(settings: Settings, lm: Any) -> str:
    import dspy

    from tasks.lm import build_lm, describe_lm

    chosen = lm if lm is not None else build_lm(settings)
    label = describe_lm(chosen).get("label", "LM")
    try:
        with dspy.context(lm=chosen):
            answer = dspy.Predict("question -> answer")(question="Reply with OK.")
    except Exception as exc:
        raise _Fail(f"{label} did not answer: {type(exc).__name__}: {exc}") from exc
    return f"{label} answered ({len(str(answer.answer))} chars)"


def check_health(
    *, settings: Settings | None = None, no_lm: bool = False, lm: Any = None, api_url: str | None = None
) -> HealthReport:
    """Run every health check and report them all.

    Args:
        settings: Effective settings (default: from the environment).
        no_lm: Skip the LM call.
        lm: The LM to try (default: built from the settings).
        api_url: The Prefect API to check (default: ``PREFECT_API_URL``; none: those checks skip).
    """
    settings = settings or get_settings()
    if api_url is None:
        from prefect.settings import PREFECT_API_URL

        api_url = PREFECT_API_URL.value() or None
    checks: list[HealthCheck] = []
    if api_url:
        checks.extend(_prefect_checks(api_url))
    else:
        checks.append(
            HealthCheck(
                name="api",
                status="skip",
                detail="no PREFECT_API_URL: local mode on the embedded server (pools, workers and "
                "deployments are not checked)",
                ms=0.0,
            )
        )
    checks.append(_run("payloads", lambda: _payloads(settings)))
    checks.append(_run("registry", lambda: _registry(settings)))
    if no_lm:
        checks.append(HealthCheck(name="lm", status="skip", detail="skipped (--no-lm)", ms=0.0))
    else:
        checks.append(_run("lm", lambda: _lm(settings, lm)))
    return HealthReport(ok=not any(c.status == "fail" for c in checks), checks=checks)
