"""What guards every LM attempt of a batch: the endpoint's circuit breaker and rate limiter, and stop.

`EndpointGuard` implements `tasks.batch.RowGuard` for one batch. The endpoint is the LM's model and
API base (`endpoint_of`), so every batch of every pipeline in the process that calls the same
provider shares one breaker and one limiter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dspex.settings import Settings
from flows.guards.circuit import CircuitBreaker, breaker_for, current_run, is_transport_failure
from flows.guards.ratelimit import EndpointLimiter, LimiterCallback, limiter_for

__all__ = ["EndpointGuard", "endpoint_of", "guard_for"]


def endpoint_of(lm: Any, settings: Settings) -> str:
    """The endpoint an LM calls: ``model@api_base``.

    A plain ``dspy.LM`` (or no LM: the settings' LM) is keyed by what it calls, so two LM objects
    for the same provider share a breaker and a limit. Any other LM object (a test's DummyLM, a
    custom client) is keyed by identity: nothing says two of them reach the same place.
    """
    import dspy

    if lm is None:
        return f"{settings.lm_model}@{settings.lm_api_base or 'default'}"
    if type(lm) is dspy.LM:
        kwargs = getattr(lm, "kwargs", {}) or {}
        base = kwargs.get("api_base") or kwargs.get("base_url") or "default"
        return f"{lm.model}@{base}"
    return f"{type(lm).__name__}#{id(lm)}"


class EndpointGuard:
    """The `tasks.batch.RowGuard` of one batch.

    Args:
        breaker: The endpoint's breaker.
        limiter: The endpoint's limiter (None: no rate limit).
        stop: The run's stop flag.
        probe: Whether this batch is the breaker's half-open probe.
        on_row_failed: Called with each row's final error (the engine stops a run that must not go on).
    """

    def __init__(
        self,
        breaker: CircuitBreaker,
        limiter: EndpointLimiter | None,
        stop: Callable[[], bool],
        *,
        probe: bool = False,
        on_row_failed: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.breaker = breaker
        self.limiter = limiter
        self.stop = stop
        self.probe = probe
        self.on_row_failed = on_row_failed
        self.attempts = 0
        self._callbacks = [LimiterCallback(limiter, stop)] if limiter is not None else []

    def admit(self) -> str | None:
        if self.stop():
            return "the run stopped before this row was tried"
        if not self.breaker.allows_attempt(self.probe):
            return f"circuit open for LM endpoint {self.breaker.name}"
        return None

    def record(self, error: BaseException | None) -> None:
        self.attempts += 1
        if error is None:
            self.breaker.record_success()
        elif is_transport_failure(error) and not _rate_limited(error):
            self.breaker.record_failure()  # 5xx, timeout, connection: the endpoint is in trouble

    def give_up(self, error: BaseException) -> None:
        if _rate_limited(error):
            self.breaker.record_failure()  # a 429 counts only once the row's retries are spent
        if self.on_row_failed is not None:
            self.on_row_failed(error)

    def callbacks(self) -> list[Any]:
        return self._callbacks


def _rate_limited(error: BaseException) -> bool:
    from dspy.utils.exceptions import LMRateLimitError

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, LMRateLimitError):
            return True
        current = current.__cause__ or current.__context__
    return False


def guard_for(
    step: Any,
    lm: Any,
    settings: Settings,
    stop: Callable[[], bool],
    on_row_failed: Callable[[BaseException], None] | None = None,
    shared_limits: bool | None = None,
) -> EndpointGuard | None:
    """The guard of one batch of ``step``, or None when the endpoint's circuit admits no batch now.

    Args:
        step: The module step (its ``requests_per_minute`` / ``tokens_per_minute`` override the settings).
        lm: The LM the batch calls (None: the settings' LM).
        settings: The effective settings.
        stop: The run's stop flag.
        on_row_failed: Called with each row's final error.
        shared_limits: Share the rate limits with other processes through Prefect global concurrency
            limits (default: in distributed mode when ``lm_rate_limit_shared``; a worker passes True).
    """
    endpoint = endpoint_of(lm, settings)
    breaker = breaker_for(endpoint, settings.breaker_failure_threshold, settings.breaker_reset_seconds)
    # A run that did not see the circuit open waits out its cool-down for the probe (issue 20).
    verdict = breaker.admit_batch(run=current_run(), stop=stop)
    if verdict is None:
        return None
    limiter = limiter_for(
        endpoint,
        getattr(step, "requests_per_minute", None) or settings.lm_requests_per_minute,
        getattr(step, "tokens_per_minute", None) or settings.lm_tokens_per_minute,
        shared=settings.lm_rate_limit_shared
        and (settings.mode == "distributed" if shared_limits is None else shared_limits),
    )
    return EndpointGuard(breaker, limiter, stop, probe=verdict == "probe", on_row_failed=on_row_failed)
