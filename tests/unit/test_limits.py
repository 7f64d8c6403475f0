"""The per-caller limits' arithmetic, on a clock the test moves."""

from __future__ import annotations

import pytest

from runplane.server.config import Rate
from runplane.server.errors import RateLimited, TooManyWatches
from runplane.server.limits import RateLimiter, WatchCounter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("100", Rate(100, 100)),
        ("0.5", Rate(0.5, 1)),
        ("10:50", Rate(10, 50)),
        ("2.5:1", Rate(2.5, 1)),
    ],
)
def test_rates_parse(text: str, rate: Rate) -> None:
    assert Rate.parse(text) == rate


@pytest.mark.parametrize("text", ["", "fast", "0", "-1", "10:0", "10:", ":5", "1e3"])
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        Rate.parse(text)


def test_a_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(Rate(per_second=2, burst=3), clock)
    for _ in range(3):
        limiter.take("p")
    with pytest.raises(RateLimited) as raised:
        limiter.take("p")
    assert raised.value.retry_delay == pytest.approx(0.5)
    clock.now += 0.25
    with pytest.raises(RateLimited) as raised:
        limiter.take("p")
    assert raised.value.retry_delay == pytest.approx(0.25)
    clock.now += 0.25
    limiter.take("p")
    clock.now += 10  # refills up to the burst, not beyond
    for _ in range(3):
        limiter.take("p")
    with pytest.raises(RateLimited):
        limiter.take("p")


def test_each_principal_has_its_own_allowance() -> None:
    limiter = RateLimiter(Rate(per_second=1, burst=1), Clock())
    limiter.take("a")
    limiter.take("b")
    with pytest.raises(RateLimited):
        limiter.take("a")


def test_idle_buckets_are_forgotten_once_full() -> None:
    clock = Clock()
    limiter = RateLimiter(Rate(per_second=1, burst=2), clock)
    limiter.MAX_IDLE_BUCKETS = 3
    for name in ("a", "b", "c"):
        limiter.take(name)
    clock.now += 5  # every bucket refilled
    limiter.take("d")
    assert set(limiter._buckets) == {"d"}
    limiter.take("d")
    with pytest.raises(RateLimited):
        limiter.take("d")  # d's own bucket was kept


def test_watches_are_counted_per_principal() -> None:
    watches = WatchCounter(limit=2)
    watches.open("a")
    watches.open("a")
    watches.open("b")
    with pytest.raises(TooManyWatches) as raised:
        watches.open("a")
    assert raised.value.details == {"limit": "2"}
    watches.close("a")
    watches.open("a")
    with pytest.raises(TooManyWatches):
        watches.open("a")
    watches.close("a")
    watches.close("a")
    assert watches._open == {"b": 1}
