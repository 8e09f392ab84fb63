"""Real broker: produce, consume in a group, commit, restart the consumer, resume."""

from __future__ import annotations

from infra.kafka import consumer, produce, producing


def _drain(c, want: int, timeout_s: float = 30.0) -> list[bytes]:  # type: ignore[no-untyped-def]
    import time

    got: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        msg = c.poll(0.5)
        if msg is None or msg.error():
            continue
        got.append(msg.value())
    return got


def test_group_resumes_from_committed_offsets_after_restart(stack, new_topic, unique) -> None:
    topic = new_topic(partitions=3)
    with producing(stack.kafka) as p:
        for i in range(100):
            produce(p, topic, f"k{i % 7}", f"v{i}".encode())

    group = f"g-{unique}"
    c1 = consumer(stack.kafka, group)
    c1.subscribe([topic])
    first = _drain(c1, 60)
    assert len(first) == 60
    c1.commit(asynchronous=False)
    c1.close()

    with producing(stack.kafka) as p:
        for i in range(100, 120):
            produce(p, topic, f"k{i % 7}", f"v{i}".encode())

    c2 = consumer(stack.kafka, group)
    c2.subscribe([topic])
    rest = _drain(c2, 60)
    c2.close()
    # Everything exactly once across the restart: the 60 committed are not re-read.
    assert sorted(first + rest) == sorted(f"v{i}".encode() for i in range(120))


def test_same_key_lands_on_one_partition(stack, new_topic, unique) -> None:
    topic = new_topic(partitions=3)
    with producing(stack.kafka) as p:
        for i in range(30):
            produce(p, topic, "request-42", f"{i}".encode())
    c = consumer(stack.kafka, f"g-{unique}")
    c.subscribe([topic])
    import time

    parts, values = set(), []
    deadline = time.monotonic() + 30
    while len(values) < 30 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is None or m.error():
            continue
        parts.add(m.partition())
        values.append(int(m.value()))
    c.close()
    assert len(parts) == 1
    assert values == list(range(30))  # order kept within the key


def test_a_reader_of_model_versions_starts_on_a_topic_that_does_not_exist_yet(stack, unique) -> None:
    """The trainer reads the version fold before any version was published (a fresh cluster, or a
    test suffix nobody created): an empty fold, base incumbent, not an error or an endless retry."""
    import time

    from infra.versions import read_fold

    t0 = time.monotonic()
    fold = read_fold(stack.kafka, stack.registry, f"-nobody{unique}")
    assert fold.incumbent("m") == "base" and not fold.canaries()
    assert time.monotonic() - t0 < 30


def test_a_fenced_transactional_producer_is_known_as_fenced_whichever_call_fails(
    stack, new_topic, unique
) -> None:
    """Two producers with one transactional id: the newer fences the older. Whatever call of the
    older fails (a produce after the fence says only _FATAL), the stage must see a fence, not a
    fault to repair by replacing the producer, which would fence the newer one in turn."""
    from confluent_kafka import KafkaError, KafkaException

    from infra.kafka import transactional_producer
    from streams.transactional import fenced

    topic = new_topic(partitions=1)
    old = transactional_producer(stack.kafka, f"tx-{unique}")
    old.begin()
    old.produce(topic, b"first", key="k")
    assert old.flush(10) == 0
    newer = transactional_producer(stack.kafka, f"tx-{unique}")  # init_transactions fences the older
    failures: list[KafkaError] = []
    for call in (lambda: old.commit([], None, timeout_s=5), lambda: old.produce(topic, b"late", key="k")):
        try:
            call()
        except KafkaException as exc:
            failures.append(exc.args[0])
    assert len(failures) == 2, f"the fenced producer still works: {failures}"
    assert all(fenced(err, old) for err in failures), failures
    assert not fenced(KafkaError(KafkaError._TIMED_OUT), old)
    newer.begin()  # the newer one was not disturbed
    newer.produce(topic, b"second", key="k")
    newer.commit([], None, timeout_s=10)


def test_a_warm_publisher_keeps_its_producer_and_each_event_is_acknowledged(stack, unique) -> None:
    """The judge publishes its decisions through one warm Publisher (infra/publish.py): a rollback
    does not wait for a producer start and a registry lookup. Each publish returns once the broker
    has the event, through the same producer, and every reader's fold sees the decisions."""
    from dataclasses import replace

    from infra import registry as registry_mod
    from infra.kafka import ensure_topics
    from infra.publish import Publisher
    from infra.versions import read_fold
    from schemas.events import ModelVersionEvent, VersionEventKind
    from schemas.topics import VERSIONS

    suffix = f"-pub{unique}"
    topic = replace(VERSIONS, name=VERSIONS.name + suffix)
    ensure_topics(stack.kafka, only=[topic])
    registry_mod.register(registry_mod.client(stack.registry), topic)
    publisher = Publisher(stack.kafka, stack.registry, suffix)
    publisher.warm(VERSIONS)
    warmed = publisher._producer
    assert warmed is not None
    for kind, decision in [(VersionEventKind.published, "canary"), (VersionEventKind.rolled_back, "worse")]:
        publisher.publish(
            VERSIONS,
            ModelVersionEvent(
                producer="t", kind=kind, model="m", version="v1", parent_version="base", decision=decision
            ),
        )
    assert publisher._producer is warmed and warmed.delivered == 2
    publisher.close()
    fold = read_fold(stack.kafka, stack.registry, suffix)
    assert fold.incumbent("m") == "base" and not fold.canaries()
    assert fold.model("m").ended["v1"] == VersionEventKind.rolled_back
