"""The backoff schedule and attempt limits of retry policies (`runplane.server.retries`)."""

from __future__ import annotations

import pytest

from runplane.server import retries
from runplane.server.records import MultitaskStrategy, RetryPolicy, Run, RunStatus

SECOND = 1_000_000


@pytest.mark.parametrize(
    ("policy", "waits"),
    [
        # unset: 1 s doubling, up to 100 s
        (RetryPolicy(), [1, 2, 4, 8, 16, 32, 64, 100, 100]),
        (RetryPolicy(initial_backoff=SECOND // 2, backoff_coefficient=3), [0.5, 1.5, 4.5, 13.5]),
        (RetryPolicy(initial_backoff=SECOND, backoff_coefficient=1), [1, 1, 1]),
        (
            RetryPolicy(
                initial_backoff=SECOND, backoff_coefficient=10, maximum_backoff=30 * SECOND
            ),
            [1, 10, 30, 30],
        ),
        # a maximum below the default initial backoff caps it from the first attempt
        (RetryPolicy(maximum_backoff=SECOND // 4), [0.25, 0.25]),
    ],
)
def test_attempt_n_waits_initial_times_coefficient_to_the_n_minus_1_capped(
    policy: RetryPolicy, waits: list[float]
) -> None:
    assert [retries.backoff_us(policy, n) for n in range(1, len(waits) + 1)] == [
        round(wait * SECOND) for wait in waits
    ]


def test_a_huge_attempt_number_waits_the_maximum() -> None:
    policy = RetryPolicy(initial_backoff=SECOND, backoff_coefficient=1e300)
    assert retries.backoff_us(policy, 2**31 - 1) == 100 * SECOND


def _running(attempt: int, policy: RetryPolicy | None) -> Run:
    return Run(
        "r",
        "t",
        "a",
        RunStatus.RUNNING,
        MultitaskStrategy.ENQUEUE,
        created_at=0,
        updated_at=0,
        attempt=attempt,
        worker_id="w",
        lease_expires_at=SECOND,
        retry_policy=policy,
    )


def test_a_failed_attempt_goes_back_in_line_until_the_limit() -> None:
    policy = RetryPolicy(max_attempts=2, initial_backoff=SECOND)
    retried = retries.after_failure(_running(1, policy), 5 * SECOND, "boom", 3)
    assert (retried.status, retried.start_after, retried.error) == (
        RunStatus.PENDING,
        6 * SECOND,
        "boom",
    )
    assert (retried.worker_id, retried.lease_expires_at, retried.updated_at) == (
        "",
        None,
        5 * SECOND,
    )
    ended = retries.after_failure(_running(2, policy), 5 * SECOND, "boom again", 3)
    assert (ended.status, ended.error, ended.ended_at) == (
        RunStatus.ERROR,
        "boom again",
        5 * SECOND,
    )


def test_without_a_policy_or_its_max_attempts_the_server_limit_applies() -> None:
    requeued = retries.after_failure(_running(2, None), 5 * SECOND, "lease expired", 3)
    assert (requeued.status, requeued.start_after) == (RunStatus.PENDING, None)
    assert retries.after_failure(_running(3, None), 0, "x", 3).status is RunStatus.ERROR
    assert retries.allowed_attempts(_running(1, RetryPolicy()), 4) == 4
    assert retries.allowed_attempts(_running(1, RetryPolicy(max_attempts=7)), 4) == 7


def test_a_retry_is_never_due_past_the_last_timestamp() -> None:
    ten_thousand_years = 315_576_000_000 * SECOND
    policy = RetryPolicy(initial_backoff=ten_thousand_years)
    retried = retries.after_failure(_running(1, policy), 5 * SECOND, "later", 3)
    assert retried.start_after == 253_402_300_799_999_999
