"""The gateway's routing table: canary shares, ramps, promotion and rollback (pure logic)."""

from __future__ import annotations

import pytest

from producers.gateway.router import Router, UnknownVersion


def test_a_ramp_moves_traffic_from_the_incumbent_and_never_revives_a_decided_version() -> None:
    r = Router(canary_share=0.05)
    r.publish("v1", "/a/v1", 1)
    assert r.weights() == {"base": pytest.approx(0.95), "v1": 0.05}
    r.ramp("v1", 0.25)
    assert r.weights() == {"base": pytest.approx(0.75), "v1": 0.25}
    r.rollback("v1")
    r.ramp("v1", 0.5)  # a late ramp event after the rollback changes nothing
    assert r.weights() == {"base": 1.0, "v1": 0.0}
    with pytest.raises(UnknownVersion):
        r.ramp("v9", 0.5)
