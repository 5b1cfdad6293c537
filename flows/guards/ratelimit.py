"""Rate limits per LM endpoint: requests and tokens per minute, shared by every batch in the process.

Pool capacity bounds how many rows run at once; the rate limit bounds throughput. Each LM *call*
(not each row: a ReAct row makes several) takes one request and its estimated tokens from the
endpoint's `EndpointLimiter` before it goes out; the estimate is corrected when the call returns.
The limiter hooks into DSPy as a callback (`LimiterCallback`), so it sees every call a module makes.

Adaptive: a 429 pauses the endpoint for its ``Retry-After`` (every caller waits, not just the one
that was refused) and halves the number of calls allowed in flight; each success adds back a
fraction of one, so concurrency recovers over a few dozen calls. With a request rate configured, the
rate is what paces (issue 20): a 429 slows the rate by a tenth (recovering over ~50 successes) and
the concurrency cut stops at what the current rate needs (rate x the calls' mean latency, with room),
because halving it below that capped a loaded 2-core machine at 59% of the provider's limit: one
jitter-induced 429 left 4 calls in flight where 200 ms calls at 40/s need 8 and more.

Pacing is by reservation: each call takes its place in the request bucket's queue and sleeps until
its own turn, so calls leave evenly spaced and in order, with no herd of pollers under CPU load. The
request bucket's burst is a quarter second's worth (`REQUEST_BURST_SECONDS`): a provider's bucket
that we fill with our own burst has no room left for the bunching a loaded machine adds.

In distributed mode the same limits are shared by every worker through Prefect global concurrency
limits with slot decay (`GlobalRate`, ``prefect.concurrency.sync.rate_limit``), taken in chunks so
the server is asked a few times a second, not once per call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from dspy.utils.callback import BaseCallback

__all__ = [
    "EndpointLimiter",
    "GlobalRate",
    "LimiterCallback",
    "TokenBucket",
    "estimate_tokens",
    "limiter_for",
    "reset_limiters",
]

logger = logging.getLogger("dspex.ratelimit")
#: After a 429, each success adds ``_RECOVERY / limit`` to the concurrency limit: it gains one every
#: ``limit / _RECOVERY`` calls, slowly enough not to run straight back into the provider's limit.
_RECOVERY = 0.25
#: The request bucket's burst, in seconds of its rate (see the module docstring).
REQUEST_BURST_SECONDS = 0.25
#: A 429 multiplies the paced request rate by this; each success adds back ``1 / _RATE_RECOVERY_CALLS``
#: of the cut, so the configured rate is back after about that many successes.
_RATE_BACKOFF = 0.9
_RATE_RECOVERY_CALLS = 50
#: Concurrency after a 429 stays at or above rate x mean latency x this (Little's law, with room).
_CONCURRENCY_ROOM = 1.5
StopFn = Callable[[], bool]


class TokenBucket:
    """A thread-safe token bucket: ``rate`` units per second, bursts up to ``capacity``.

    The level may go negative (a correction charged after the fact); takers then wait it out.
    """

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        self.capacity = max(float(capacity), 1.0)
        self._clock = clock
        self._level = self.capacity
        self._stamp = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    def wait_time(self, amount: float) -> float:
        """Take ``amount`` now if it is there and return 0, else the seconds until it will be."""
        amount = min(amount, self.capacity)
        with self._lock:
            self._refill()
            if self._level >= amount:
                self._level -= amount
                return 0.0
            return (amount - self._level) / self.rate

    def reserve(self, amount: float) -> float:
        """Take ``amount`` now, into debt if need be; return the seconds until it is covered.

        Callers that reserve in turn are served in turn: each waits for its own place, none polls.
        """
        amount = min(amount, self.capacity)
        with self._lock:
            self._refill()
            self._level -= amount
            return max(-self._level / self.rate, 0.0)

    def adjust(self, delta: float) -> None:
        """Give back (positive) or charge (negative) units after the fact."""
        with self._lock:
            self._refill()
            self._level = min(self.capacity, self._level + delta)

    def drain(self) -> None:
        """Spend whatever burst is left (after a 429: no burst once the pause ends)."""
        with self._lock:
            self._refill()
            self._level = min(self._level, 0.0)

    def set_rate(self, rate: float) -> None:
        """Pace at ``rate`` from now on (what is already refilled stays)."""
        with self._lock:
            self._refill()
            self.rate = float(rate)


class GlobalRate:
    """A rate shared by every process through a Prefect global concurrency limit with slot decay.

    Units are taken from the server in chunks of ``chunk`` and spent locally; the limit is created
    (or updated) on first use with ``slot_decay_per_second = per_minute / 60``.

    Args:
        name: The global concurrency limit's name.
        per_minute: The shared rate.
        chunk: Units taken per server call.
    """

    def __init__(self, name: str, per_minute: float, chunk: int) -> None:
        self.name = name
        self.per_minute = per_minute
        self.chunk = max(int(chunk), 1)
        self._credit = 0.0
        self._lock = threading.Lock()
        self._ready = False

    def _ensure(self) -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import (
            GlobalConcurrencyLimitCreate,
            GlobalConcurrencyLimitUpdate,
        )
        from prefect.exceptions import ObjectAlreadyExists

        decay = self.per_minute / 60.0
        limit = self.chunk * 2
        with get_client(sync_client=True) as client:
            try:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=self.name, limit=limit, slot_decay_per_second=decay)
                )
            except ObjectAlreadyExists:
                client.update_global_concurrency_limit(
                    self.name, GlobalConcurrencyLimitUpdate(limit=limit, slot_decay_per_second=decay)
                )
        self._ready = True

    def take(self, amount: float) -> None:
        """Block until ``amount`` units are granted (chunks from the server as needed).

        A refused chunk (423) is asked for again after at most one chunk's worth of decay: the
        server's own Retry-After grows with every refusal it has counted, which starves contending
        workers (measured: two workers sharing 10/s got 1.75/s through ``rate_limit``).
        """
        import httpx
        from prefect.client.orchestration import get_client

        with self._lock:  # one server call at a time per process; the others use its chunk
            if not self._ready:
                self._ensure()
            while self._credit < amount:
                with get_client(sync_client=True) as client:
                    try:
                        client.increment_concurrency_slots(
                            names=[self.name], slots=self.chunk, mode="rate_limit"
                        )
                    except httpx.HTTPStatusError as exc:
                        if exc.response.status_code != 423:
                            raise
                        hinted = float(exc.response.headers.get("Retry-After") or 0.0)
                        time.sleep(max(min(hinted, self.chunk * 60.0 / self.per_minute), 0.01))
                        continue
                self._credit += self.chunk
            self._credit -= amount


def estimate_tokens(inputs: dict[str, Any]) -> int:
    """A rough token count of an LM call's prompt (4 characters a token), before it is sent."""
    messages = inputs.get("messages") or []
    chars = len(str(inputs.get("prompt") or ""))
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else message
        chars += len(str(content or ""))
    return max(chars // 4, 1)


class EndpointLimiter:
    """Requests/minute and tokens/minute for one endpoint, with adaptive concurrency on 429.

    Args:
        endpoint: What it limits (for logs).
        requests_per_minute: Request rate; None: unlimited.
        tokens_per_minute: Token rate (prompt + completion, estimated then corrected); None: unlimited.
        global_requests: Share the request rate with other processes (distributed mode).
        global_tokens: Share the token rate with other processes.
        clock: Monotonic clock.
    """

    def __init__(
        self,
        endpoint: str,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        *,
        global_requests: GlobalRate | None = None,
        global_tokens: GlobalRate | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self._clock = clock
        # A burst of one second's worth: providers meter per second or per minute, so a second's
        # worth at once is within any of their windows, and the run starts at full speed.
        self.requests = (
            TokenBucket(requests_per_minute / 60, requests_per_minute / 60 * REQUEST_BURST_SECONDS, clock)
            if requests_per_minute
            else None
        )
        self._configured_rate = requests_per_minute / 60 if requests_per_minute else None
        self.tokens = (
            TokenBucket(tokens_per_minute / 60, tokens_per_minute / 60, clock) if tokens_per_minute else None
        )
        self._latency_avg: float | None = None  # mean seconds of a call, acquire to release
        self.global_requests = global_requests
        self.global_tokens = global_tokens
        self._cond = threading.Condition()
        self._in_flight = 0
        self._limit = float("inf")
        self._paused_until = 0.0
        self._completion_avg = 64.0
        self.throttled = 0

    @property
    def concurrency_limit(self) -> float:
        """Calls allowed in flight now (infinite until the first 429)."""
        with self._cond:
            return self._limit

    def acquire(self, estimated_tokens: int = 1, stop: StopFn | None = None) -> int:
        """Wait for a slot, a request and the tokens; returns the tokens charged (for `release`)."""
        charge = estimated_tokens + int(self._completion_avg)
        with self._cond:
            while True:
                wait = self._paused_until - self._clock()
                if wait <= 0 and self._in_flight < self._limit:
                    self._in_flight += 1
                    break
                if stop is not None and stop():
                    self._in_flight += 1  # released by the caller's release() like any other call
                    return 0
                self._cond.wait(timeout=min(max(wait, 0.01), 0.25))
        if self.requests is not None:  # our place in the queue: sleep until its turn, no polling
            deadline = self._clock() + self.requests.reserve(1.0)
            while (wait := deadline - self._clock()) > 0:
                if stop is not None and stop():
                    return charge
                time.sleep(min(wait, 0.25))
        if self.tokens is not None:
            while (wait := self.tokens.wait_time(float(charge))) > 0:
                if stop is not None and stop():
                    return charge
                time.sleep(min(wait, 0.25))
        if self.global_requests is not None:
            self.global_requests.take(1)
        if self.global_tokens is not None:
            self.global_tokens.take(charge)
        return charge

    def release(
        self,
        charged: int,
        *,
        throttled: bool = False,
        retry_after: float | None = None,
        actual_tokens: int | None = None,
        seconds: float | None = None,
    ) -> None:
        """A call ended: free its slot; on a 429 pause and back off, else recover a little.

        Args:
            charged: What `acquire` charged.
            throttled: The provider answered 429.
            retry_after: Its ``Retry-After``, seconds.
            actual_tokens: Tokens the call used (corrects the estimate).
            seconds: How long the call took (feeds the mean latency behind the concurrency floor).
        """
        if self.tokens is not None and actual_tokens is not None:
            self.tokens.adjust(charged - actual_tokens)
        with self._cond:
            in_flight = self._in_flight
            self._in_flight = max(self._in_flight - 1, 0)
            if seconds is not None and not throttled:
                self._latency_avg = (
                    seconds if self._latency_avg is None else 0.9 * self._latency_avg + 0.1 * seconds
                )
            rate = self.requests.rate if self.requests is not None else None
            if throttled:
                self.throttled += 1
                floor = 1.0
                if self.requests is not None and rate is not None:
                    rate = max(rate * _RATE_BACKOFF, (self._configured_rate or rate) * 0.05)
                    self.requests.set_rate(rate)
                    self.requests.drain()
                    if self._latency_avg is not None:  # keep what the (slowed) rate needs in flight
                        floor = max(floor, rate * self._latency_avg * _CONCURRENCY_ROOM)
                self._limit = max(floor, min(self._limit, float(in_flight)) / 2)
                pause = retry_after if retry_after is not None else 1.0
                self._paused_until = max(self._paused_until, self._clock() + pause)
                logger.info(
                    "LM endpoint %s answered 429: pausing %.1f s, at most %d calls in flight",
                    self.endpoint,
                    pause,
                    int(self._limit),
                )
            else:
                if self._limit != float("inf"):
                    self._limit += _RECOVERY / self._limit  # additive increase
                configured = self._configured_rate
                if (
                    self.requests is not None
                    and configured is not None
                    and rate is not None
                    and rate < configured
                ):
                    self.requests.set_rate(
                        min(configured, rate + configured * (1 - _RATE_BACKOFF) / _RATE_RECOVERY_CALLS)
                    )
            self._cond.notify_all()

    def note_completion(self, completion_tokens: int) -> None:
        """Feed the running average of completion tokens (part of each call's estimate)."""
        self._completion_avg = 0.9 * self._completion_avg + 0.1 * max(completion_tokens, 0)


class LimiterCallback(BaseCallback):
    """DSPy callback: every LM call waits on the endpoint's limiter before it goes out.

    Args:
        limiter: The endpoint's limiter.
        stop: When true, waiting ends at once (the run is stopping).
    """

    def __init__(self, limiter: EndpointLimiter, stop: StopFn | None = None) -> None:
        self.limiter = limiter
        self.stop = stop
        # call id -> (tokens charged, prompt estimate, when it was let through)
        self._charged: dict[str, tuple[int, int, float]] = {}
        self._lock = threading.Lock()

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        prompt = estimate_tokens(inputs)
        charged = self.limiter.acquire(prompt, self.stop)
        with self._lock:
            self._charged[call_id] = (charged, prompt, time.monotonic())

    def on_lm_end(self, call_id: str, outputs: Any | None, exception: Exception | None = None) -> None:
        from dspy.utils.exceptions import LMRateLimitError

        from tasks.retry import retry_after_seconds

        with self._lock:
            charged, prompt, started = self._charged.pop(call_id, (0, 0, time.monotonic()))
        completion = None
        if exception is None and isinstance(outputs, list):
            completion = sum(len(str(o)) for o in outputs) // 4
            self.limiter.note_completion(completion)
        throttled = isinstance(exception, LMRateLimitError)
        self.limiter.release(
            charged,
            throttled=throttled,
            retry_after=retry_after_seconds(exception) if throttled and exception is not None else None,
            actual_tokens=None if completion is None else prompt + completion,
            seconds=time.monotonic() - started,
        )


_limiters: dict[tuple[str, float | None, float | None, bool], EndpointLimiter] = {}
_limiters_lock = threading.Lock()


def limiter_for(
    endpoint: str,
    requests_per_minute: float | None,
    tokens_per_minute: float | None,
    *,
    shared: bool = False,
    chunk_seconds: float = 0.25,
) -> EndpointLimiter | None:
    """The process-wide limiter of ``endpoint`` at these limits (None when neither is set).

    Args:
        endpoint: The LM endpoint (model + API base).
        requests_per_minute: Request limit.
        tokens_per_minute: Token limit.
        shared: Also share the limits across processes via Prefect global concurrency limits.
        chunk_seconds: In shared mode, how many seconds' worth of the rate one server call takes.
    """
    if not requests_per_minute and not tokens_per_minute:
        return None
    key = (endpoint, requests_per_minute, tokens_per_minute, shared)
    with _limiters_lock:
        found = _limiters.get(key)
        if found is not None:
            return found
        global_requests = global_tokens = None
        if shared:
            import hashlib

            tag = hashlib.sha256(endpoint.encode()).hexdigest()[:12]
            if requests_per_minute:
                chunk = max(int(requests_per_minute / 60 * chunk_seconds), 1)
                global_requests = GlobalRate(f"dspex-lm-rpm-{tag}", requests_per_minute, chunk)
            if tokens_per_minute:
                chunk = max(int(tokens_per_minute / 60 * chunk_seconds), 1)
                global_tokens = GlobalRate(f"dspex-lm-tpm-{tag}", tokens_per_minute, chunk)
        limiter = _limiters[key] = EndpointLimiter(
            endpoint,
            requests_per_minute,
            tokens_per_minute,
            global_requests=global_requests,
            global_tokens=global_tokens,
        )
        return limiter


def reset_limiters() -> None:
    """Forget every limiter (tests)."""
    with _limiters_lock:
        _limiters.clear()
