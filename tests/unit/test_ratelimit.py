"""The gateway's per-key token buckets (pure logic, a fake clock)."""

from __future__ import annotations

import pytest

from producers.gateway.ratelimit import RateLimiter


def test_burst_then_the_sustained_rate_per_key() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)  # empty: next token in 1/rate
    assert limiter.take("b") == 0.0  # another key has its own bucket
    now[0] = 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    now[0] = 100.0
    assert [limiter.take("a") for _ in range(4)][:3] == [0.0, 0.0, 0.0]  # refills up to the burst only


def test_zero_disables_it() -> None:
    limiter = RateLimiter(rate=0, burst=10)
    assert not limiter.enabled and all(limiter.take("k") == 0.0 for _ in range(1000))
