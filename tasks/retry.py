"""The retry budget: the one place that decides how many times a row is tried, and how long to wait.

DSPy's own LM retries (``num_retries``) and Prefect's task retries used to multiply (3 x 4 attempts
per row against a dead endpoint). Now neither retries: `tasks.batch` calls the LM with DSPy's retries
off and asks a `RetryPolicy` after each transient failure whether to try the row again and after
what delay: exponential backoff with full jitter, capped, and never shorter than the provider's
``Retry-After``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

__all__ = ["RetryPolicy", "retry_after_seconds"]


def retry_after_seconds(error: BaseException) -> float | None:
    """The provider's suggested delay (``Retry-After``) carried by an error or its causes, if any.

    DSPy's typed LM errors carry it as ``retry_after``; LiteLLM's keep the HTTP response.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        value = getattr(current, "retry_after", None)
        if isinstance(value, int | float) and value >= 0:
            return float(value)
        response: Any = getattr(current, "response", None)
        headers = getattr(response, "headers", None)
        if headers is not None:
            try:
                return max(float(headers.get("retry-after")), 0.0)
            except (TypeError, ValueError):
                pass
        current = current.__cause__ or current.__context__
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """How many times a row is tried, and the waits between tries.

    Attributes:
        attempts: Tries per row in all (1 = no retry).
        base_delay_s: The first backoff; it doubles each retry.
        max_delay_s: The longest backoff (a ``Retry-After`` may ask for more, up to ``max_retry_after_s``).
        jitter: Full jitter in [0, 1]: the delay is drawn from ``[d * (1 - jitter), d]``.
        max_retry_after_s: The longest provider-suggested wait honoured.
    """

    attempts: int = 3
    base_delay_s: float = 1.0
    max_delay_s: float = 30.0
    jitter: float = 0.5
    max_retry_after_s: float = 120.0

    @classmethod
    def from_settings(cls, settings: Any) -> RetryPolicy:
        """The policy the settings describe (``DSPEX_LM_NUM_RETRIES``, ``DSPEX_TASK_RETRY_DELAY_SECONDS``)."""
        return cls(
            attempts=int(settings.lm_num_retries) + 1,
            base_delay_s=float(settings.task_retry_delay_seconds),
            max_delay_s=float(getattr(settings, "retry_max_delay_seconds", 30.0)),
        )

    def delay(
        self, retry: int, error: BaseException | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before retry number ``retry`` (1 = the first retry).

        Args:
            retry: Which retry this is, from 1.
            error: The error that caused it; its ``Retry-After`` is a floor.
            rng: Random source for the jitter (tests pass a seeded one).
        """
        backoff = min(self.base_delay_s * (2 ** max(retry - 1, 0)), self.max_delay_s)
        draw = (rng or random).random()
        wait = backoff * (1 - self.jitter * draw)
        hinted = retry_after_seconds(error) if error is not None else None
        if hinted is not None:
            wait = max(wait, min(hinted, self.max_retry_after_s))
        return wait
