"""Which versions an erasure touches, and what `retire` rolls back (infra/versions.py, infra/erasure.py)."""

from __future__ import annotations

import pytest

from infra.erasure import ErasureError, forget, retire_events
from infra.settings import ClickHouseSettings, KafkaSettings, RegistrySettings
from infra.versions import BASE, VersionFold
from schemas.events import ModelVersionEvent, OffsetRange, VersionEventKind

pytestmark = pytest.mark.unit
M, T = "m", "llm.samples.rewarded"


def ev(
    kind: VersionEventKind,
    version: str,
    parent: str | None = None,
    lineage: tuple[int, int] | None = None,
    **kw: object,
) -> ModelVersionEvent:
    ranges = (
        [OffsetRange(topic=T, partition=0, first_offset=lineage[0], last_offset=lineage[1], samples=1)]
        if lineage
        else []
    )
    return ModelVersionEvent(
        producer="t",
        kind=kind,
        model=M,
        version=version,
        parent_version=parent,
        lineage=ranges,
        decision="x",
        **kw,
    )


def history() -> VersionFold:
    """a (trained on 0-9) <- b (10-19, continued from a) <- c (20-29, canary); d (30-39, from base) replaced."""
    fold = VersionFold()
    for e in [
        ev(VersionEventKind.published, "d", BASE, (30, 39)),
        ev(VersionEventKind.promoted, "d"),
        ev(VersionEventKind.published, "a", "d", (0, 9)),
        ev(VersionEventKind.promoted, "a"),
        ev(VersionEventKind.published, "b", "a", (10, 19)),
        ev(VersionEventKind.promoted, "b"),
        ev(VersionEventKind.published, "c", "b", (20, 29)),
    ]:
        fold.apply(e)
    return fold


def test_a_sample_taints_the_version_that_trained_on_it_and_every_descendant() -> None:
    state = history().model(M)
    assert state.trained_on({(T, 0, 5)}) == ["a", "b", "c"]  # b and c continued a's adapter
    assert state.trained_on({(T, 0, 15)}) == ["b", "c"]
    assert state.trained_on({(T, 0, 35)}) == ["d", "a", "b", "c"]  # every generation built on d
    assert state.trained_on({(T, 0, 45)}) == []  # after every range: nothing
    assert state.trained_on({(T, 1, 5)}) == [] and state.trained_on({("other", 0, 5)}) == []


def test_retire_rolls_back_what_can_serve_and_the_incumbent_last_to_its_clean_ancestor() -> None:
    fold = history()
    state = fold.model(M)
    tainted = state.trained_on({(T, 0, 15)})
    for v in tainted:
        fold.apply(ev(VersionEventKind.tainted, v, reasons=["erasure e1"]))
    assert state.clean_ancestor("c") == "a" and state.clean_ancestor("a") == "a"
    plan = retire_events(state, M, tainted, "erasure e1")
    assert [(e.kind, e.version) for e in plan] == [
        (VersionEventKind.rolled_back, "c"),
        (VersionEventKind.rolled_back, "b"),
    ]
    assert plan[-1].parent_version == "a"  # b was the incumbent: back to a, the nearest clean one
    for e in plan:
        fold.apply(e)
    assert state.incumbent == "a" and not state.canaries
    assert state.tainted == {"b": ["erasure e1"], "c": ["erasure e1"]}
    assert retire_events(state, M, tainted, "erasure e1") == []  # already retired: nothing twice


def test_a_fully_tainted_lineage_falls_back_to_base_and_replaced_incumbents_are_retired_too() -> None:
    fold = history()
    state = fold.model(M)
    tainted = state.trained_on({(T, 0, 31)})
    for v in tainted:
        fold.apply(ev(VersionEventKind.tainted, v, reasons=["erasure e2"]))
    plan = retire_events(state, M, tainted, "erasure e2")
    # d and a were replaced incumbents, still pinnable by name: retired as well; b (incumbent) last
    assert [e.version for e in plan] == ["d", "a", "c", "b"] and plan[-1].parent_version == BASE
    for e in plan:
        fold.apply(e)
    assert state.incumbent == BASE


def test_forget_without_a_user_is_refused_by_name() -> None:
    with pytest.raises(ErasureError, match="user_id"):
        forget(" ", kafka=KafkaSettings(), registry=RegistrySettings(), clickhouse=ClickHouseSettings())
