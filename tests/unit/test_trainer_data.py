"""A generation's data: what arrived since its parent, plus a bounded replay (consumers/trainer/data.py)."""

from __future__ import annotations

from consumers.trainer.data import Sample, described, lineage, since_parent


def _sample(i: int, partition: int = 0) -> Sample:
    return Sample(f"r{i}-{partition}", f"e{i}", "q", [], "a", 1.0, "1", "llm.samples.rewarded", partition, i)


def test_new_samples_are_those_past_the_parents_offsets_and_the_replay_is_bounded() -> None:
    parent_data = [_sample(i) for i in range(10)] + [_sample(i, 1) for i in range(5)]
    parent = lineage(parent_data)
    now = (
        parent_data
        + [_sample(i) for i in range(10, 14)]
        + [_sample(i, 1) for i in range(5, 7)]
        + [_sample(0, 2)]
    )
    new, replayed = since_parent(now, parent, replay=6)
    assert sorted((s.partition, s.offset) for s in new) == [
        (0, 10),
        (0, 11),
        (0, 12),
        (0, 13),
        (1, 5),
        (1, 6),
        (2, 0),
    ]
    assert len(replayed) == 6 and not {s.request_id for s in replayed} & {s.request_id for s in new}
    assert since_parent(now, parent, replay=6)[1] == replayed  # deterministic
    assert described(lineage(new)).startswith("llm.samples.rewarded[0]:10-13 (4)")
