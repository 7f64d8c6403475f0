"""Retry policies: what becomes of a run whose attempt failed.

An attempt fails when its worker completes the run with ERROR and `retryable`, or when
its lease expires. While attempts remain, the run goes back in line, PENDING: with a
retry policy, not before the end of its backoff (`start_after`); without one (an
expired lease only), at once. Once the run was claimed as often as it may be, it is
ERROR. Either way it stays its thread's head (`ThreadHeads.follow`), so a thread's
runs still run in creation order.
"""

from __future__ import annotations

import dataclasses

from runplane.server.records import RetryPolicy, Run, RunStatus

DEFAULT_INITIAL_BACKOFF_US = 1_000_000
DEFAULT_BACKOFF_COEFFICIENT = 2.0
DEFAULT_MAXIMUM_BACKOFF_FACTOR = 100
"""An unset maximum_backoff is this many times initial_backoff."""

_LATEST_US = 253_402_300_799_999_999
"""The last instant a Timestamp can say (9999-12-31T23:59:59.999999Z)."""


def backoff_us(policy: RetryPolicy, attempt: int) -> int:
    """The wait after attempt `attempt` (1 for the first claim) failed, in microseconds:
    min(initial_backoff * backoff_coefficient^(attempt-1), maximum_backoff), with the
    documented defaults for what the policy leaves unset."""
    initial = policy.initial_backoff or DEFAULT_INITIAL_BACKOFF_US
    coefficient = policy.backoff_coefficient or DEFAULT_BACKOFF_COEFFICIENT
    maximum = policy.maximum_backoff or initial * DEFAULT_MAXIMUM_BACKOFF_FACTOR
    try:
        wait = initial * coefficient ** max(attempt - 1, 0)
    except OverflowError:  # a coefficient^n past any float: the maximum long since
        return maximum
    return int(min(wait, maximum))


def allowed_attempts(run: Run, server_max_attempts: int) -> int:
    """Claims the run may have in all: its policy's max_attempts, or the server's."""
    policy = run.retry_policy
    if policy is not None and policy.max_attempts:
        return policy.max_attempts
    return server_max_attempts


def after_failure(run: Run, now: int, error: str, server_max_attempts: int) -> Run:
    """The run after its attempt `run.attempt` failed with `error`: PENDING again, due at
    the end of its backoff, while attempts remain; ERROR with `error` once none do."""
    if run.attempt >= allowed_attempts(run, server_max_attempts):
        return run.ended(RunStatus.ERROR, now, error=error)
    policy = run.retry_policy
    start_after = (
        run.start_after
        if policy is None
        else min(now + backoff_us(policy, run.attempt), _LATEST_US)
    )
    return dataclasses.replace(
        run,
        status=RunStatus.PENDING,
        error=error,
        worker_id="",
        lease_expires_at=None,
        start_after=start_after,
        updated_at=now,
    )
