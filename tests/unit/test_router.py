"""The gateway's routing table: canary shares, ramps, promotion and rollback, from the one fold of
model.versions (pure logic)."""

from __future__ import annotations

import uuid

import pytest

from producers.gateway.router import Router, UnknownVersion
from schemas.events import ModelVersionEvent, VersionEventKind


def event(
    kind: VersionEventKind, version: str, share: float | None = None, parent: str | None = None
) -> ModelVersionEvent:
    return ModelVersionEvent(
        event_id=uuid.uuid4(),
        producer="t",
        kind=kind,
        model="m",
        version=version,
        traffic_share=share,
        parent_version=parent,
        decision=kind.value,
    )


def publish(r: Router, version: str, share: float | None = None, parent: str | None = None) -> None:
    r.apply(event(VersionEventKind.published, version, share, parent))
    r.add(version, f"/a/{version}", len(r.routes))


def test_a_ramp_moves_traffic_from_the_incumbent_and_never_revives_a_decided_version() -> None:
    r = Router(canary_share=0.05)
    publish(r, "v1")
    assert r.weights() == {"base": pytest.approx(0.95), "v1": 0.05}
    r.apply(event(VersionEventKind.ramped, "v1", 0.25))
    assert r.weights() == {"base": pytest.approx(0.75), "v1": 0.25}
    r.apply(event(VersionEventKind.rolled_back, "v1", 0.0))
    r.apply(event(VersionEventKind.ramped, "v1", 0.5))  # a late ramp event after the rollback changes nothing
    assert r.weights() == {"base": 1.0, "v1": 0.0}
    with pytest.raises(UnknownVersion):
        r.apply(event(VersionEventKind.ramped, "v9", 0.5))


def test_a_manual_rollback_of_the_incumbent_serves_its_parent_again() -> None:
    r = Router(canary_share=0.1)
    publish(r, "v1")
    r.apply(event(VersionEventKind.promoted, "v1", 1.0))
    publish(r, "v2", parent="v1")
    r.apply(event(VersionEventKind.promoted, "v2", 1.0))
    assert r.incumbent == "v2" and r.weights() == {"base": 0.0, "v1": 0.0, "v2": 1.0}
    r.apply(event(VersionEventKind.rolled_back, "v2", 0.0))  # the admin API names no parent
    assert r.incumbent == "v1" and r.weights() == {"base": 0.0, "v1": 1.0, "v2": 0.0}
    assert r.fold.incumbent("m") == "v1"  # what the judge and the trainer read from the same fold


def test_a_version_this_gateway_could_not_load_gets_no_traffic_here() -> None:
    r = Router(canary_share=0.2)
    r.apply(event(VersionEventKind.published, "v1"))  # refused: never added
    assert r.weights() == {"base": 1.0}
    with pytest.raises(UnknownVersion):
        r.apply(event(VersionEventKind.promoted, "v1", 1.0))
    assert r.incumbent == "base" and r.weights() == {"base": 1.0}


def test_a_rolled_back_version_is_not_served_even_when_pinned_nor_listed_as_live() -> None:
    r = Router(canary_share=0.1)
    publish(r, "v1")
    publish(r, "v2")
    assert r.choose(pinned="v1").version == "v1" and set(r.live()) == {"base", "v1", "v2"}
    r.apply(event(VersionEventKind.rolled_back, "v1", 0.0))
    with pytest.raises(UnknownVersion):
        r.choose(pinned="v1")
    assert r.ended("v1") == VersionEventKind.rolled_back and set(r.live()) == {"base", "v2"}
    r.apply(event(VersionEventKind.promoted, "v2", 1.0))
    assert r.live() == {"v2": 1.0}
    assert r.choose(pinned="base").version == "base"  # a replaced incumbent may still be pinned


def test_a_shadow_gets_no_traffic_is_not_live_and_is_served_only_to_evaluations() -> None:
    r = Router(canary_share=0.2)
    publish(r, "v1")
    r.add_shadow("eval-1", "/a/eval-1", 1_000_000)
    assert r.known("v1") and r.known("base") and r.known("eval-1") and not r.known("eval-2")
    assert r.weights()["eval-1"] == 0.0 and "eval-1" not in r.live()
    assert {r.choose(f"user-{i}").version for i in range(200)} == {"base", "v1"}
    with pytest.raises(UnknownVersion):
        r.choose(pinned="eval-1")  # users cannot reach it
    assert r.choose(pinned="eval-1", evaluation=True).shadow
    r.apply(event(VersionEventKind.promoted, "v1", 1.0))  # reweighing leaves it at 0
    assert r.weights()["eval-1"] == 0.0 and r.live() == {"v1": 1.0}
    assert r.remove_shadow("v1") is None and "v1" in r.routes  # only shadows are removed so
    assert r.remove_shadow("eval-1") is not None and "eval-1" not in r.routes
