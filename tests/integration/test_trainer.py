"""`rftloop train --now` on the real pieces: ClickHouse buffer, TRL KTO, the vLLM gate, model.versions;
and `rftloop forget` between two runs (the version trained on the person retired, the next run without them)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from consumers.trainer.data import held_out
from infra import adapters
from infra.clickhouse.client import connect
from infra.clickhouse.migrate import migrate
from infra.clickhouse.tables import event_table
from schemas.events import FeedbackSource, RewardedSample, RewardSource
from schemas.topics import ERASURES, REWARDED, TRAINING, VERSIONS
from tests.integration.streams_support import read_topic

ROOT = Path(__file__).resolve().parents[2]
SERVED = "smollm2-135m-instruct"


@pytest.mark.reliability
def test_train_gate_publish_replay_and_reject(
    stack: Any, ch_database: str, event_topic: Any, unique: str, tmp_path: Path
) -> None:
    versions_topic, versions_serde = event_topic(VERSIONS)
    training_topic, training_serde = event_topic(TRAINING)
    event_topic(ERASURES)
    client = connect(stack.clickhouse, database=ch_database)
    migrate(client, ch_database)
    table = event_table(REWARDED)
    rows = []
    for i in range(48):
        a, b = 10 + i, 20 + i
        good = i % 2 == 0
        sample = RewardedSample(
            producer="t",
            request_id=f"r{i}",
            model=SERVED,
            prompt=f"What is {a} plus {b}?",
            completion=str(a + b) if good else f"{a} plus {b} is a sum of two numbers",
            reward=1.0 if good else -1.0,
            reference=str(a + b),
            reward_sources=[
                RewardSource(source=FeedbackSource.user, kind="thumbs", value=1.0 if good else -1.0)
            ],
            user_id=f"u{i % 8}",
        )
        rows.append(table.row(sample.to_avro(), i % 3, 1000 + i))
    client.insert(table.name, rows, column_names=table.column_names)
    root = tmp_path / "adapters"
    env = {
        **os.environ,
        **stack.env(),
        "RFTLOOP_CLICKHOUSE_DATABASE": ch_database,
        "RFTLOOP_TRAINER_TOPIC_SUFFIX": f"-{unique}",
        "RFTLOOP_TRAINER_ADAPTER_ROOT": str(root),
        "RFTLOOP_TRAINER_METHOD": "kto",
        "RFTLOOP_TRAINER_MAX_STEPS": "2",
        "RFTLOOP_TRAINER_MIN_QUALITY_GAIN": "-1",
        "RFTLOOP_TRAINER_MAX_LATENCY_RATIO": "100",
        "RFTLOOP_TRAINER_MAX_COST_RATIO": "100",
        "RFTLOOP_TRAINER_CANARY_SHARE": "0.3",
    }

    def train(**extra: str) -> tuple[dict[str, Any], str]:
        out = subprocess.run(
            [sys.executable, "-m", "cli.main", "train", "--now", "--model", "tiny"],
            cwd=ROOT,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return json.loads(out.stdout[out.stdout.index("{\n") :]), out.stdout

    def crash(point: str) -> None:
        """A run that dies like kill -9 at `point` (see infra/failpoints.py)."""
        out = subprocess.run(
            [sys.executable, "-m", "cli.main", "train", "--now", "--model", "tiny"],
            cwd=ROOT,
            env={**env, "RFTLOOP_FAILPOINT": point},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 137 and f"failpoint {point}" in out.stderr, out.stderr[-3000:]

    def versions_on_topic() -> list[Any]:
        return [e for e in read_topic(stack.kafka, versions_topic.name, versions_serde, idle_s=1.0)]

    # Killed mid-run (trained, not gated): nothing published, only a temporary directory left.
    crash("trainer.after_train")
    assert [p.name.startswith(".") for p in root.iterdir()] == [True] and not versions_on_topic()
    # Killed between the atomic rename and the event: the adapter is whole, no event yet.
    crash("trainer.after_rename")
    (adapter_dir,) = [p for p in root.iterdir()]  # the stale temporary directory was cleaned up
    assert (adapter_dir / "adapter_config.json").exists() and not versions_on_topic()

    # The restart announces that version (same id, the gate's figures kept), trains nothing twice.
    first, text = train()
    assert first["status"] == "published" and "already exists" in text
    version = first["version"]
    assert version == adapter_dir.name
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary directory left
    assert 0 <= first["figures"]["candidate_accuracy"] <= 1 and first["figures"]["candidate_latency_ms"] > 0
    published = [
        e for e in read_topic(stack.kafka, versions_topic.name, versions_serde) if e.version == version
    ]
    assert len(published) == 1 and published[0].kind == "published"
    event = published[0]
    assert event.adapter_sha256 == adapters.adapter_sha256(root / version)
    assert event.adapter_uri == f"file://{root / version}" and event.parent_version == "base"
    assert sum(r.samples for r in event.lineage) == round(first["figures"]["train_samples"])
    assert {r.partition for r in event.lineage} <= {0, 1, 2} and event.method == "kto"
    assert event.traffic_share == 0.3  # the share it starts on, stated for the gateways and the judge

    again, text = train()  # same data, same config: same version, nothing trained, same event id
    assert again["version"] == version and "already exists" in text
    replays = [
        e for e in read_topic(stack.kafka, versions_topic.name, versions_serde) if e.version == version
    ]
    assert {e.event_id for e in replays} == {event.event_id}

    # u1 asks to be forgotten: the published version trained on u1's samples is marked and retired,
    # and the next run trains on everything but u1's samples
    erased = subprocess.run(
        [sys.executable, "-m", "cli.main", "forget", "--user", "u1", "--reason", "erasure request 1"],
        cwd=ROOT,
        env={**env, "RFTLOOP_PRIVACY_TOPIC_SUFFIX": f"-{unique}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert erased.returncode == 0, erased.stderr
    assert f"versions trained on them (lineage or ancestor): {version}" in erased.stdout
    assert f"rolled back now (policy retire): {version}" in erased.stdout
    assert "deleted      6 row(s) from rewarded_samples" in erased.stdout
    u1_trained = sum(
        1 for i in range(48) if i % 8 == 1 and not held_out(SimpleNamespace(request_id=f"r{i}"), 20)
    )

    rejected, _ = train(RFTLOOP_TRAINER_MIN_QUALITY_GAIN="0.5", RFTLOOP_TRAINER_MAX_STEPS="3")
    assert rejected["status"] == "rejected" and rejected["version"] != version
    assert rejected["figures"]["train_samples"] == first["figures"]["train_samples"] - u1_trained
    assert any(r.startswith("quality:") for r in rejected["reasons"])
    assert not (root / rejected["version"]).exists()
    runs = read_topic(stack.kafka, training_topic.name, training_serde)
    finished = {e.version: e.status for e in runs if e.kind == "finished"}
    assert finished == {version: "published", rejected["version"]: "rejected"}

    # what the sink would write from model.versions: `rftloop versions` shows state, figures and reasons
    vtable = event_table(VERSIONS)
    every = read_topic(stack.kafka, versions_topic.name, versions_serde)
    client.insert(
        vtable.name,
        [vtable.row(e.to_avro(), 0, n) for n, e in enumerate(every)],
        column_names=vtable.column_names,
    )
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "versions", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    listed = {r["version"]: r for r in json.loads(out.stdout)}
    assert listed[version]["state"] == "rolled_back" and listed[version]["method"] == "kto"
    assert "since erased" in " ".join(listed[version]["reasons"])
    assert listed[rejected["version"]]["state"] == "rejected"
    assert listed[version]["acc"] == first["figures"]["candidate_accuracy"]
    table_out = subprocess.run(
        [sys.executable, "-m", "cli.main", "versions"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert table_out.returncode == 0 and version in table_out.stdout


def test_train_refuses_without_enough_data(stack: Any, ch_database: str) -> None:
    migrate(connect(stack.clickhouse, database=ch_database), ch_database)
    env = {**os.environ, **stack.env(), "RFTLOOP_CLICKHOUSE_DATABASE": ch_database}
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "train", "--now", "--model", "tiny"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 3 and "RFTLOOP_TRAINER_MIN_SAMPLES" in out.stderr


@pytest.mark.slow  # GRPO on the run's own engine; make test's GRPO run is the gateway one (test_gateway.py)
def test_trainer_daemon_runs_on_its_new_sample_trigger(
    stack: Any, ch_database: str, event_topic: Any, unique: str, tmp_path: Path
) -> None:
    versions_topic, versions_serde = event_topic(VERSIONS)
    event_topic(TRAINING)
    client = connect(stack.clickhouse, database=ch_database)
    migrate(client, ch_database)
    table = event_table(REWARDED)
    rows = []
    for i in range(30):
        sample = RewardedSample(
            producer="t",
            request_id=f"d{i}",
            model=SERVED,
            prompt=f"What is {i} plus 1?",
            completion=str(i + 1) if i % 2 else "no idea",
            reward=1.0 if i % 2 else -1.0,
            reference=str(i + 1),
            reward_sources=[RewardSource(source=FeedbackSource.user, kind="thumbs", value=1.0)],
        )
        rows.append(table.row(sample.to_avro(), 0, i))
    client.insert(table.name, rows, column_names=table.column_names)
    env = {
        **os.environ,
        **stack.env(),
        "RFTLOOP_CLICKHOUSE_DATABASE": ch_database,
        "RFTLOOP_TRAINER_TOPIC_SUFFIX": f"-{unique}",
        "RFTLOOP_TRAINER_ADAPTER_ROOT": str(tmp_path / "a"),
        "RFTLOOP_TRAINER_MAX_STEPS": "1",
        "RFTLOOP_TRAINER_TRIGGER_NEW_SAMPLES": "25",
        "RFTLOOP_TRAINER_POLL_S": "1",
    }
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "trainer", "--model", "tiny", "--max-runs", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "run triggered: 30 new rewarded samples (trigger at 25)" in out.stdout
    # every sample has a reference: `auto` (the default) chose GRPO, re-generating and scoring answers
    assert "method grpo (auto: 100% of the samples have a reference" in out.stdout
    decided = [e for e in read_topic(stack.kafka, versions_topic.name, versions_serde)]
    assert len(decided) == 1 and decided[0].kind in ("published", "rejected")
    assert decided[0].method == "grpo" and decided[0].hyperparameters["grpo_generations"] == "4"
    # its rollouts came from the run's vLLM engine, at a temperature the screening chose
    assert decided[0].hyperparameters["grpo_rollouts"] == "vllm"
    assert re.search(
        r"GRPO rollouts at temperature (0\.5|0\.8) \(\d+ prompts whose answers differ", out.stdout
    )
    assert (
        decided[0].eval["rollout_temperature"] in (0.5, 0.8) and "informative_share_t0.5" in decided[0].eval
    )
    # TRL's per-step log is in ClickHouse: the group's mean reward and the loss of step 1
    steps = client.query(
        "SELECT metric, value FROM training_steps WHERE version = {v:String} AND step = 1",
        parameters={"v": decided[0].version},
    ).result_rows
    metrics = dict(steps)
    assert {"loss", "reward"} <= set(metrics) and 0.0 <= metrics["reward"] <= 1.0, metrics
    last = json.loads((Path(stack.local.state_dir) / "trainer" / f"last_run-{SERVED}.json").read_text())
    assert last["newest_sample"] > 0 and last["at"] > 0


@pytest.mark.slow
def test_dpo_trains_on_preference_pairs_chosen_automatically(
    stack: Any, ch_database: str, event_topic: Any, unique: str, tmp_path: Path
) -> None:
    """Two answers to one prompt and a preference between them: `auto` picks DPO; unusable pairs
    (different prompts, an opted-out request) are skipped and counted."""
    from infra.clickhouse.tables import event_table as table_of
    from schemas.events import FeedbackKind, FeedbackSubmitted
    from schemas.topics import COMPLETED, FEEDBACK, REQUESTED
    from tests.integration.streams_support import request_events, utc

    versions_topic, versions_serde = event_topic(VERSIONS)
    event_topic(TRAINING)
    client = connect(stack.clickhouse, database=ch_database)
    migrate(client, ch_database)
    tables = {spec.name: table_of(spec) for spec in (REQUESTED, COMPLETED, FEEDBACK, REWARDED)}
    rows: dict[str, list[Any]] = {name: [] for name in tables}

    def add(spec: Any, event: Any) -> None:
        rows[spec.name].append(tables[spec.name].row(event.to_avro(), 0, len(rows[spec.name])))

    now = utc(1_790_000_000)
    for i in range(24):
        a, b = 10 + i, 30 + i
        for rid, text in ((f"p{i}a", str(a + b)), (f"p{i}b", "I cannot count")):
            req, done = request_events(
                rid, version="base", at=now, completion=text, opt_out=(i == 0 and rid.endswith("b"))
            )
            req = req.model_copy(update={"model": SERVED, "prompt": f"What is {a} plus {b}?"})
            add(REQUESTED, req)
            add(COMPLETED, done.model_copy(update={"model": SERVED}))
        add(
            FEEDBACK,
            FeedbackSubmitted(
                producer="t",
                request_id=f"p{i}b",
                occurred_at=now,
                model=SERVED,
                version="base",
                kind=FeedbackKind.preference,
                value=-1.0,
                other_request_id=f"p{i}a",
                source=FeedbackSource.user,
            ),
        )
    # a "pair" over two different questions is not a preference between answers
    req, done = request_events("odd", version="base", at=now)
    add(REQUESTED, req.model_copy(update={"model": SERVED, "prompt": "Something else"}))
    add(COMPLETED, done.model_copy(update={"model": SERVED}))
    add(
        FEEDBACK,
        FeedbackSubmitted(
            producer="t",
            request_id="odd",
            occurred_at=now,
            model=SERVED,
            version="base",
            kind=FeedbackKind.preference,
            value=1.0,
            other_request_id="p1a",
            source=FeedbackSource.user,
        ),
    )
    for i in range(40):  # rewarded samples with references: the gate's held-out set comes from them
        add(
            REWARDED,
            RewardedSample(
                producer="t",
                request_id=f"r{i}",
                model=SERVED,
                prompt=f"What is {i} plus 2?",
                completion=str(i + 2),
                reward=1.0,
                reference=str(i + 2),
                reward_sources=[RewardSource(source=FeedbackSource.user, kind="thumbs", value=1.0)],
            ),
        )
    for name, table in tables.items():
        client.insert(table.name, rows[name], column_names=table.column_names)
    env = {
        **os.environ,
        **stack.env(),
        "RFTLOOP_CLICKHOUSE_DATABASE": ch_database,
        "RFTLOOP_TRAINER_TOPIC_SUFFIX": f"-{unique}",
        "RFTLOOP_TRAINER_ADAPTER_ROOT": str(tmp_path / "a"),
        "RFTLOOP_TRAINER_MAX_STEPS": "2",
        "RFTLOOP_TRAINER_MIN_QUALITY_GAIN": "-1",
        "RFTLOOP_TRAINER_MAX_LATENCY_RATIO": "100",
        "RFTLOOP_TRAINER_MAX_COST_RATIO": "100",
    }
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "train", "--now", "--model", "tiny"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "method dpo (auto:" in out.stdout and "2 preference(s) unusable" in out.stdout
    result = json.loads(out.stdout[out.stdout.index("{\n") :])
    (event,) = [
        e
        for e in read_topic(stack.kafka, versions_topic.name, versions_serde)
        if e.version == result["version"]
    ]
    assert event.method == "dpo" and event.kind == "published"
    # lineage names the preference records trained on (those outside the hold-out)
    assert all(r.topic == "llm.feedback.submitted" for r in event.lineage)
    assert 8 <= sum(r.samples for r in event.lineage) < 23
    metrics = dict(
        client.query(
            "SELECT metric, value FROM training_steps WHERE version = {v:String} AND step = 1",
            parameters={"v": result["version"]},
        ).result_rows
    )
    assert "loss" in metrics and "rewards/margins" in metrics, metrics


def test_a_preference_on_one_choice_of_an_n_gt_1_response_pairs_that_choices_text(
    stack: Any, ch_database: str
) -> None:
    """n = 2: the user preferred choice 1 of request A over request B's answer; the pair's chosen
    text is choice 1's, not choice 0's. A choice the response lacks makes no pair."""
    from consumers.trainer.pairs import load_pairs
    from infra.clickhouse.tables import event_table as table_of
    from schemas.events import CompletionChoice, FeedbackKind, FeedbackSubmitted
    from schemas.topics import COMPLETED, FEEDBACK, REQUESTED
    from tests.integration.streams_support import request_events, utc

    client = connect(stack.clickhouse, database=ch_database)
    migrate(client, ch_database)
    now = utc(1_790_000_000)
    tables = {spec.name: table_of(spec) for spec in (REQUESTED, COMPLETED, FEEDBACK)}
    rows: dict[str, list[Any]] = {name: [] for name in tables}

    def add(spec: Any, event: Any) -> None:
        rows[spec.name].append(tables[spec.name].row(event.to_avro(), 0, len(rows[spec.name])))

    for rid, text in (("A", "I cannot count"), ("B", "maybe 5")):
        req, done = request_events(rid, version="base", at=now, completion=text)
        add(REQUESTED, req.model_copy(update={"model": SERVED, "prompt": "What is 2 plus 3?"}))
        if rid == "A":
            choices = [CompletionChoice(index=0, completion=text), CompletionChoice(index=1, completion="5")]
            done = done.model_copy(update={"choices": choices})
        add(COMPLETED, done.model_copy(update={"model": SERVED}))
    for choice in (1, 2):
        add(
            FEEDBACK,
            FeedbackSubmitted(
                producer="t",
                request_id="A",
                occurred_at=now,
                model=SERVED,
                kind=FeedbackKind.preference,
                value=1.0,
                other_request_id="B",
                source=FeedbackSource.user,
                choice=choice,
            ),
        )
    for name, table in tables.items():
        client.insert(table.name, rows[name], column_names=table.column_names)
    pairs, skipped = load_pairs(client, ch_database, SERVED)
    assert [(p.request_id, p.chosen, p.rejected) for p in pairs] == [("A", "5", "maybe 5")]
    assert skipped == 1  # the preference on choice 2, which A does not have


def test_thumbs_of_both_signs_on_the_choices_of_one_response_pair_those_choices(
    stack: Any, ch_database: str
) -> None:
    """n = 3 on request C: choice 0 up, choice 1 down, choice 2 down then up (the latest thumb
    wins): each up-voted choice is preferred over the down-voted one, with the up vote's event as
    lineage. D's choices were all liked (no pair); E opted out of training (skipped)."""
    from consumers.trainer.pairs import load_pairs
    from infra.clickhouse.tables import event_table as table_of
    from schemas.events import CompletionChoice, FeedbackKind, FeedbackSubmitted
    from schemas.topics import COMPLETED, FEEDBACK, REQUESTED
    from tests.integration.streams_support import request_events, utc

    client = connect(stack.clickhouse, database=ch_database)
    migrate(client, ch_database)
    now = utc(1_790_000_000)
    tables = {spec.name: table_of(spec) for spec in (REQUESTED, COMPLETED, FEEDBACK)}
    rows: dict[str, list[Any]] = {name: [] for name in tables}

    def add(spec: Any, event: Any) -> None:
        rows[spec.name].append(tables[spec.name].row(event.to_avro(), 0, len(rows[spec.name])))

    texts = ["5", "six", "five"]
    for rid in ("C", "D", "E"):
        req, done = request_events(rid, version="base", at=now, completion=texts[0], opt_out=rid == "E")
        add(REQUESTED, req.model_copy(update={"model": SERVED, "prompt": "What is 2 plus 3?"}))
        choices = [CompletionChoice(index=i, completion=text) for i, text in enumerate(texts)]
        add(COMPLETED, done.model_copy(update={"model": SERVED, "choices": choices}))
    votes = {
        "C": [(0, 1.0, 0), (1, -1.0, 0), (2, -1.0, 0), (2, 1.0, 5)],
        "D": [(0, 1.0, 0), (1, 1.0, 0)],
        "E": [(0, 1.0, 0), (1, -1.0, 0)],
    }
    ids: dict[tuple[str, int], str] = {}
    for rid, given in votes.items():
        for choice, value, later_s in given:
            event = FeedbackSubmitted(
                producer="t",
                request_id=rid,
                occurred_at=utc(1_790_000_000 + later_s),
                model=SERVED,
                kind=FeedbackKind.thumbs,
                value=value,
                source=FeedbackSource.user,
                choice=choice,
            )
            ids[(rid, choice)] = str(event.event_id)
            add(FEEDBACK, event)
    for name, table in tables.items():
        client.insert(table.name, rows[name], column_names=table.column_names)
    pairs, skipped = load_pairs(client, ch_database, SERVED)
    got = sorted((p.request_id, p.chosen, p.rejected, p.event_id) for p in pairs)
    assert got == [("C", "5", "six", ids[("C", 0)]), ("C", "five", "six", ids[("C", 2)])]
    assert all(p.messages == [{"role": "user", "content": "What is 2 plus 3?"}] for p in pairs)
    assert skipped == 1  # E: opted out of training


@pytest.mark.reliability
def test_one_active_trainer_per_model_and_a_standby_takes_over(
    stack: Any, ch_database: str, unique: str, tmp_path: Path, record_figures: Any
) -> None:
    import signal
    import time

    migrate(connect(stack.clickhouse, database=ch_database), ch_database)
    env = {
        **os.environ,
        **stack.env(),
        "RFTLOOP_CLICKHOUSE_DATABASE": ch_database,
        "RFTLOOP_TRAINER_TOPIC_SUFFIX": f"-{unique}",
        "RFTLOOP_TRAINER_POLL_S": "1",
        "RFTLOOP_LOCAL_STATE_DIR": str(tmp_path / "state"),
    }
    logs = {name: tmp_path / f"{name}.log" for name in ("first", "second")}

    def start(name: str) -> subprocess.Popen[bytes]:
        with open(logs[name], "wb") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "cli.main", "trainer", "--model", "tiny"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_for(name: str, text: str, timeout_s: float = 60) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if text in logs[name].read_text(errors="replace"):
                return time.monotonic() - t0
            time.sleep(0.2)
        raise AssertionError(f"{name}: no {text!r}:\n{logs[name].read_text(errors='replace')[-2000:]}")

    def holds(name: str) -> bool:
        lines = [x for x in logs[name].read_text(errors="replace").splitlines() if "trainer: lease" in x]
        return bool(lines) and "acquired" in lines[-1]

    procs = {"first": start("first")}
    try:
        wait_for("first", "lease acquired")
        procs["second"] = start("second")
        wait_for("second", "trainer: watching")
        time.sleep(6)  # the group has rebalanced with both members (the lease may move when idle)
        holders = [name for name in procs if holds(name)]
        assert len(holders) == 1, {n: logs[n].read_text(errors="replace") for n in procs}
        (holder,) = holders
        (standby,) = [n for n in procs if n != holder]
        logs[standby].write_text("")  # only what happens after the kill counts now
        os.killpg(procs[holder].pid, signal.SIGKILL)
        takeover_s = wait_for(standby, "lease acquired", timeout_s=60)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert takeover_s < 30
    record_figures("active trainer killed, the standby takes the lease", takeover_s=round(takeover_s, 1))
