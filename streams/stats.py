"""What a streams worker has done so far (its /stats/ page)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StreamStats:
    joined: int = 0
    samples: int = 0
    evaluations: int = 0  # evaluation requests the join published
    evaluator_scores: int = 0
    evaluator_timeouts: int = 0  # responses dead-lettered with an evaluator past its deadline
    bucketed: int = 0
    duplicates: int = 0
    repeat_votes: int = 0  # a user's further votes on a request already rated
    other_choices: int = 0  # evaluator scores of choices 1.. of n > 1 responses (the judge takes choice 0)
    partials: int = 0
    aborted_batches: int = 0
    windows_closed: int = 0
    dead_letters: int = 0
    expired: int = 0
