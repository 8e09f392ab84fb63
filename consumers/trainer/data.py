"""Training data from the durable buffer (ClickHouse, written by the sink), split deterministically.

One row per rated choice of a request (its latest RewardedSample; one per request for n = 1), and
the split keeps a request's choices on one side; opted-out requests never became samples, and an erased person's samples are left out even when
a copy came back (``infra/erasure.py``). Each sample keeps where it came
from (topic, partition, offset) for the version's lineage.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from clickhouse_connect.driver.client import Client

from infra.erasure import not_erased
from schemas.events import OffsetRange

SAMPLES = (
    """
SELECT request_id,
       argMax(event_id, occurred_at) AS event_id,
       argMax(prompt, occurred_at) AS prompt,
       argMax(messages, occurred_at) AS messages,
       argMax(completion, occurred_at) AS completion,
       argMax(reward, occurred_at) AS reward,
       argMax(reference, occurred_at) AS reference,
       argMax(_topic, occurred_at) AS topic,
       argMax(_partition, occurred_at) AS partition,
       argMax(_offset, occurred_at) AS offset
FROM {db}.rewarded_samples FINAL
WHERE model = {model:String} AND """
    + not_erased("{db}")
    + """
GROUP BY request_id, choice
ORDER BY request_id, choice
"""
)


@dataclass(frozen=True)
class Sample:
    request_id: str
    event_id: str
    prompt: str
    messages: list[dict[str, str]]
    completion: str
    reward: float
    reference: str | None
    topic: str
    partition: int
    offset: int


def load_samples(client: Client, db: str, model: str) -> list[Sample]:
    result = client.query(SAMPLES.replace("{db}", db), parameters={"model": model})
    out = []
    for row in result.named_results():
        messages = json.loads(row["messages"]) if row["messages"] else []
        out.append(
            Sample(
                row["request_id"],
                str(row["event_id"]),
                row["prompt"],
                messages,
                row["completion"],
                float(row["reward"]),
                row["reference"],
                row["topic"],
                int(row["partition"]),
                int(row["offset"]),
            )
        )
    return out


def since_parent(
    samples: list[Sample], parent: Sequence[OffsetRange], replay: int
) -> tuple[list[Sample], list[Sample]]:
    """(new, replayed): the samples past the parent's data on each partition (its lineage's last
    offsets), and at most ``replay`` of the older ones, chosen by request hash (deterministic), so a
    generation learns from what arrived since its parent without forgetting what came before.

    Samples answered by versions that were later rolled back are kept on purpose: their rewards
    judge the answers themselves (a broken adapter's garbage is a well-labelled undesirable answer
    for KTO; GRPO only takes their prompts and answers them anew)."""
    last = {(r.topic, r.partition): r.last_offset for r in parent}
    new = [s for s in samples if s.offset > last.get((s.topic, s.partition), -1)]
    fresh = {s.request_id for s in new}
    older = sorted(
        (s for s in samples if s.request_id not in fresh),
        key=lambda s: hashlib.sha256(s.request_id.encode()).digest(),
    )
    return new, older[:replay]


def described(ranges: Sequence[OffsetRange]) -> str:
    """Offset ranges as text for a version's hyperparameters (``topic[p]:first-last (n)``)."""
    return ", ".join(
        f"{r.topic}[{r.partition}]:{r.first_offset}-{r.last_offset} ({r.samples})" for r in ranges
    )


def held_out(sample: Sample | Any, percent: int) -> bool:
    """Deterministic: the same request is always on the same side of the split."""
    h = int.from_bytes(hashlib.sha256(sample.request_id.encode()).digest()[:4], "big")
    return h % 100 < percent


def split(samples: list[Sample], percent: int) -> tuple[list[Sample], list[Sample]]:
    train = [s for s in samples if not held_out(s, percent)]
    evaluate = [s for s in samples if held_out(s, percent)]
    return train, evaluate


class Traceable(Protocol):
    """Anything trained on that came from a Kafka record (a Sample, a preference Pair)."""

    @property
    def event_id(self) -> str: ...
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


def lineage(samples: Sequence[Traceable]) -> list[OffsetRange]:
    by_tp: dict[tuple[str, int], list[int]] = defaultdict(list)
    for s in samples:
        by_tp[(s.topic, s.partition)].append(s.offset)
    return [
        OffsetRange(topic=t, partition=p, first_offset=min(o), last_offset=max(o), samples=len(o))
        for (t, p), o in sorted(by_tp.items())
    ]


def version_id(samples: Sequence[Traceable], config: dict[str, Any]) -> str:
    """Same data and config -> same version id, so a replayed run does not make a second version."""
    digest = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.event_id):
        digest.update(s.event_id.encode() + b"\0")
    digest.update(json.dumps(config, sort_keys=True).encode())
    return "v" + digest.hexdigest()[:10]


def chat(sample: Sample) -> list[dict[str, str]]:
    """The conversation the model answered (messages when the request had them, else the prompt)."""
    return sample.messages or [{"role": "user", "content": sample.prompt}]
