"""When and how long the clients wait before retrying a failed call.

Only calls that are safe to repeat are retried (reads, and creates carrying a
request_id), and only on codes that say the call never took effect, or took
effect in a way a repeat cannot duplicate. Every attempt and every pause stays
within the caller's deadline.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import grpc

from runplane.client._errors import from_grpc_error


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter (AWS architecture blog style).

    Attempt n waits a random time in [0, min(max_backoff, initial_backoff * multiplier**(n-1))].
    """

    max_attempts: int = 5
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    multiplier: float = 2.0
    retryable_codes: frozenset[grpc.StatusCode] = field(
        default=frozenset({grpc.StatusCode.UNAVAILABLE})
    )

    def start(self, deadline: float) -> Attempts:
        """Track one logical call that must finish within `deadline` seconds from now."""
        return Attempts(self, time.monotonic() + deadline)


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(max_attempts=1)


class Attempts:
    """The attempts of one logical call: its remaining time, and the pause before the next.

    Both clients drive it the same way, sleeping with their own `sleep`:

        attempts = policy.start(deadline)
        while True:
            try:
                return stub.Method(request, timeout=attempts.remaining())
            except grpc.RpcError as error:
                sleep(attempts.backoff_or_raise(error))
    """

    def __init__(self, policy: RetryPolicy, expires_at: float) -> None:
        self._policy = policy
        self._expires_at = expires_at
        self._made = 1

    def remaining(self) -> float:
        """Seconds left before the caller's deadline, never negative."""
        return max(0.0, self._expires_at - time.monotonic())

    def backoff_or_raise(self, error: grpc.RpcError) -> float:
        """The pause before retrying after `error`; raises it, mapped, if giving up."""
        mapped = from_grpc_error(error)
        ceiling = min(
            self._policy.max_backoff,
            self._policy.initial_backoff * self._policy.multiplier ** (self._made - 1),
        )
        pause = random.uniform(0.0, ceiling)
        if (
            mapped.code not in self._policy.retryable_codes
            or self._made >= self._policy.max_attempts
            or pause >= self.remaining()
        ):
            raise mapped from error
        self._made += 1
        return pause
