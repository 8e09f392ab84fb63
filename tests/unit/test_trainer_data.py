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


def test_screening_alternates_served_right_and_wrong_prompts_keeping_their_order() -> None:
    from consumers.trainer.grpo import screening_order

    def s(i: int, reward: float) -> Sample:
        return Sample(f"r{i}", f"e{i}", "q", [], "a", reward, "1", "t", 0, i)

    # 8 right and 2 wrong (a good model): the 2 wrong ones come first and second-but-one, not last
    data = [s(i, 1.0) for i in range(8)] + [s(8, -1.0), s(9, 0.0)]
    order = screening_order(data)
    assert [x.offset for x in order] == [8, 0, 9, 1, 2, 3, 4, 5, 6, 7]
    assert sorted(x.offset for x in order) == list(range(10))  # nothing lost or repeated
    # a bad model: mostly wrong, the few right ones are screened early
    bad = [s(i, -1.0) for i in range(6)] + [s(6, 0.5)]
    assert [x.offset for x in screening_order(bad)][:4] == [0, 6, 1, 2]
    assert screening_order([]) == []


def test_grpo_takes_the_temperature_with_the_most_informative_prompts_the_lower_on_a_tie() -> None:
    from consumers.trainer.grpo import Screen, choose

    def found(t: float, n: int) -> Screen:
        return Screen(t, [Sample(f"r{i}", f"e{i}", "q", [], "a", 0.0, "1", "t", 0, i) for i in range(n)])

    assert choose([found(0.5, 12), found(0.8, 21)]).temperature == 0.8
    assert choose([found(0.8, 21), found(0.5, 21)]).temperature == 0.5  # a tie: closer to greedy serving
    assert choose([found(0.5, 0), found(0.8, 0)]).temperature == 0.5


def test_a_continued_run_takes_its_own_steps_and_learning_rate() -> None:
    from infra.settings import TrainerSettings

    cfg = TrainerSettings(
        max_steps=12,
        learning_rate=3e-4,
        continued_max_steps=16,
        continued_lr_scale=0.5,
        grpo_temperatures=[0.5, 0.8],
        continued_grpo_temperatures=[0.8],
    )
    continued = cfg.continued()
    assert (continued.max_steps, continued.learning_rate, continued.grpo_temperatures) == (16, 1.5e-4, [0.8])
    # the fresh run's settings are unchanged
    assert (cfg.max_steps, cfg.learning_rate, cfg.grpo_temperatures) == (12, 3e-4, [0.5, 0.8])
    plain = TrainerSettings(max_steps=12, learning_rate=3e-4, grpo_temperatures=[0.5, 0.8]).continued()
    # unset: the same steps and temperatures, scale 1.0
    assert (plain.max_steps, plain.learning_rate, plain.grpo_temperatures) == (12, 3e-4, [0.5, 0.8])


def test_the_length_term_is_free_up_to_the_parents_mean_and_minus_one_at_the_slack() -> None:
    from consumers.trainer.grpo import length_term

    term = length_term(mean_tokens=11.6, slack=0.25)  # free up to 12 tokens, -1 at round(14.5) = 14
    got = term([[0] * n for n in (8, 12, 13, 14, 16)])
    assert got == [0.0, 0.0, -0.5, -1.0, -1.0]
    tight = length_term(mean_tokens=4.0, slack=0.1)  # at least one token between free and -1
    assert tight([[0] * 4, [0] * 5, [0] * 6]) == [0.0, -1.0, -1.0]


def test_the_length_term_needs_the_screening_that_measures_the_parents_length() -> None:
    import pytest
    from pydantic import ValidationError

    from infra.settings import TrainerSettings

    assert TrainerSettings(grpo_length_slack=0.25).grpo_length_weight == 0.5
    for bad in ({"grpo_rollouts": "transformers"}, {"grpo_screen_prompts": 0}):
        with pytest.raises(ValidationError, match="GRPO_LENGTH_SLACK"):
            TrainerSettings(grpo_length_slack=0.25, **bad)
    TrainerSettings(grpo_rollouts="transformers")  # off by default: nothing to measure
