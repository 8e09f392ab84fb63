"""One training run, end to end: buffer -> split -> GRPO/KTO/DPO (continuing the incumbent) -> gate on vLLM -> publish or reject.

Crash safety: the adapter is written to a temporary directory and renamed into
``<adapter_root>/<version>`` only when the gate passes, then the event is
published; a version directory that exists is (re-)announced with the same
derived event id rather than trained again, so a run killed between the rename
and the event heals on the next run, and a replayed run (same data, same
config -> same version id) creates nothing new.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consumers.trainer.data import (
    Traceable,
    described,
    held_out,
    lineage,
    load_samples,
    since_parent,
    split,
    version_id,
)
from consumers.trainer.dpo import train_dpo
from consumers.trainer.engine import Engine, Generates
from consumers.trainer.gate import Figures, decide, evaluate
from consumers.trainer.gateway_engine import GatewayEngine
from consumers.trainer.grpo import train_grpo
from consumers.trainer.kto import train_kto
from consumers.trainer.paired import SequentialGate, needed_prompts
from consumers.trainer.pairs import load_pairs
from consumers.trainer.steps import LORA_TARGETS, describe_precision, write_steps
from infra import adapters, failpoints, models
from infra.clickhouse.client import connect
from infra.publish import publish_event
from infra.settings import (
    ClickHouseSettings,
    ConfigError,
    GatewaySettings,
    KafkaSettings,
    RegistrySettings,
    TrainerSettings,
)
from infra.versions import BASE, read_fold
from schemas.events import (
    Event,
    ModelVersionEvent,
    TrainingRunEvent,
    TrainingRunKind,
    TrainingRunStatus,
    VersionEventKind,
)
from schemas.topics import TRAINING, VERSIONS, TopicSpec

PRODUCER = "rftloop-trainer"
NAMESPACE = uuid.UUID("6f1d6c3e-2a8b-4b7e-9a51-1c0de0f1a002")
RUN_RECORD = "rftloop-run.json"  # the gate figures and reasons, written beside the adapter


class NotEnoughData(RuntimeError):
    """Too few rewarded samples (or held-out samples with a reference) for a run."""


@dataclass
class RunResult:
    version: str
    status: str
    reasons: list[str]
    figures: dict[str, float]
    parent: str = BASE
    method: str = ""
    samples: int = 0


def _send(
    kafka: KafkaSettings, registry: RegistrySettings, spec: TopicSpec, suffix: str, event: Event
) -> None:
    publish_event(kafka, registry, spec, event, suffix)


def incumbent_of(kafka: KafkaSettings, registry: RegistrySettings, cfg: TrainerSettings) -> str:
    """The serving incumbent, from the one fold of model.versions (infra/versions.py)."""
    return read_fold(kafka, registry, cfg.topic_suffix).incumbent(cfg.served_name)


def choose_method(train: list[Any], pairs: int, cfg: TrainerSettings) -> tuple[str, str]:
    """The configured method, or for `auto`: DPO when enough preference pairs exist, else GRPO when
    most samples are checkable, else KTO."""
    checkable = sum(1 for s in train if s.reference)
    if cfg.method == "dpo" and pairs < cfg.min_pairs:
        raise NotEnoughData(
            f"{pairs} usable preference pairs; DPO needs {cfg.min_pairs} (RFTLOOP_TRAINER_MIN_PAIRS)"
        )
    if cfg.method != "auto":
        if cfg.method == "grpo" and not checkable:
            raise NotEnoughData(
                "RFTLOOP_TRAINER_METHOD=grpo needs samples with a reference (a checkable answer); "
                "none here: use kto (thumbs / signed rewards) or auto"
            )
        return cfg.method, "configured"
    if pairs >= cfg.min_pairs:
        return "dpo", f"auto: {pairs} preference pairs (two answers to one prompt, one preferred)"
    share = checkable / len(train) if train else 0.0
    if share >= 0.5:
        return "grpo", f"auto: {share:.0%} of the samples have a reference to score answers against"
    return "kto", f"auto: only {share:.0%} of the samples have a reference; learning from the rewards given"


def run_once(
    kafka: KafkaSettings,
    registry: RegistrySettings,
    clickhouse: ClickHouseSettings,
    cfg: TrainerSettings,
    cache_dir: Path,
    say: Callable[[str], None] = print,
) -> RunResult:
    gateways = GatewaySettings()
    serving_rank, serving_targets = gateways.max_lora_rank, gateways.lora_targets()
    if cfg.lora_rank > serving_rank:
        raise ConfigError(
            f"RFTLOOP_TRAINER_LORA_RANK={cfg.lora_rank} is above the gateways' RFTLOOP_GATEWAY_MAX_LORA_RANK="
            f"{serving_rank}: every gateway would refuse the adapter; lower the one or raise the other"
        )
    if serving_targets and set(LORA_TARGETS) - set(serving_targets):
        raise ConfigError(
            f"the trainer's adapters target {', '.join(LORA_TARGETS)}; the gateways' RFTLOOP_GATEWAY_LORA_TARGET_MODULES="
            f"{','.join(serving_targets)} leaves out {', '.join(sorted(set(LORA_TARGETS) - set(serving_targets)))}: "
            "every gateway would refuse the adapter"
        )
    client = connect(clickhouse)
    samples = load_samples(client, clickhouse.database, cfg.served_name)
    if len(samples) < cfg.min_samples:
        raise NotEnoughData(
            f"{len(samples)} rewarded samples for {cfg.served_name}; a run needs "
            f"{cfg.min_samples} (RFTLOOP_TRAINER_MIN_SAMPLES)"
        )
    train, held = split(samples, cfg.holdout_percent)
    fold = read_fold(kafka, registry, cfg.topic_suffix)
    serving = fold.incumbent(cfg.served_name)
    # never continue a tainted adapter (trained on an erased person's data): its clean ancestor
    incumbent = fold.model(cfg.served_name).clean_ancestor(serving)
    if incumbent != serving:
        say(f"trainer: incumbent {serving} is tainted by an erasure; continuing {incumbent} instead")
    parent_event = fold.model(cfg.served_name).published.get(incumbent)
    parent_dir = cfg.adapter_root / incumbent
    parent = str(parent_dir) if incumbent != BASE and (parent_dir / "adapter_config.json").exists() else None
    data_note: dict[str, str] = {}
    if parent_event is not None:
        new, older = since_parent(train, parent_event.lineage, cfg.replay_samples)
        if len(new) < cfg.min_new_samples:
            raise NotEnoughData(
                f"{len(new)} new training samples since {incumbent}'s data; a continued run needs "
                f"{cfg.min_new_samples} (RFTLOOP_TRAINER_MIN_NEW_SAMPLES)"
            )
        train = new + older
        data_note = {
            "data_new": described(lineage(new)),
            "data_replayed": described(lineage(older)),
        }
    # one per request: the gate answers each held-out prompt anew, and the rated choices of an n > 1
    # request share their prompt (counted twice, one prompt would weigh double in the paired test)
    eval_set = list({s.request_id: s for s in held if s.reference}.values())[: cfg.max_eval_samples]
    if len(eval_set) < cfg.min_eval_samples:
        raise NotEnoughData(
            f"{len(eval_set)} held-out samples with a reference; the gate needs "
            f"{cfg.min_eval_samples} (RFTLOOP_TRAINER_MIN_EVAL_SAMPLES)"
        )
    if parent:
        cfg = cfg.continued()
    all_pairs, skipped_pairs = load_pairs(client, clickhouse.database, cfg.served_name)
    train_pairs = [p for p in all_pairs if not held_out(p, cfg.holdout_percent)]
    method, why = choose_method(train, len(train_pairs), cfg)
    data: Sequence[Traceable] = train_pairs if method == "dpo" else train
    config = {
        "method": method,
        "base_model": cfg.base_model,
        "max_steps": cfg.max_steps,
        "batch_size": cfg.batch_size,
        "learning_rate": cfg.learning_rate,
        "lora_rank": cfg.lora_rank,
        "beta": cfg.beta,
        "parent": incumbent,
        "continued_from": "adapter" if parent else "base",
        **(
            {
                "grpo_generations": cfg.grpo_generations,
                "grpo_prompts": cfg.grpo_prompts,
                "grpo_rollouts": cfg.grpo_rollouts,
                "grpo_temperatures": ",".join(f"{t:g}" for t in cfg.grpo_temperatures),
            }
            if method == "grpo"
            else {}
        ),
    }
    version = version_id(data, config)
    root = cfg.adapter_root
    root.mkdir(parents=True, exist_ok=True)
    target = root / version
    say(
        f"trainer: {len(samples)} samples ({len(train)} train, {len(eval_set)} held out with a reference), "
        f"incumbent {incumbent}, candidate {version}"
    )
    say(f"trainer: method {method} ({why})")
    if skipped_pairs:
        say(
            f"trainer: {skipped_pairs} preference(s) unusable (different prompts, failed or opted-out requests)"
        )
    base_path = models.resolve(cfg.base_model, cache_dir)
    run_id = f"run-{version}"
    hyper = {**{k: str(v) for k, v in config.items()}, **data_note}
    if cfg.gateway_url:
        hyper["engine"] = f"gateway {cfg.gateway_url} (shadow versions)"

    def start_engine() -> Generates:
        """The run's own vLLM engine, or the gateway's (RFTLOOP_TRAINER_GATEWAY_URL)."""
        if not cfg.gateway_url:
            say("trainer: starting the run's vLLM engine ...")
            return Engine(base_path, max_lora_rank=serving_rank, lora_targets=serving_targets)
        say(f"trainer: generating on the gateway's engine at {cfg.gateway_url} (shadow versions)")
        # the incumbent is pinned as users get it; a clean ancestor standing in for a tainted
        # incumbent may not be live there, so it is loaded as a shadow like the candidate
        live = {str(parent_dir): incumbent} if parent and incumbent == serving else {}
        return GatewayEngine(
            cfg.gateway_url,
            cfg.gateway_key.get_secret_value(),
            cfg.served_name,
            base_path,
            run=f"eval-{version}",
            versions=live,
        )

    def run_event(kind: TrainingRunKind, **end: Any) -> None:
        _send(
            kafka,
            registry,
            TRAINING,
            cfg.topic_suffix,
            TrainingRunEvent(
                producer=PRODUCER,
                kind=kind,
                run_id=run_id,
                model=cfg.served_name,
                parent_version=incumbent,
                method=method,
                samples=len(data),
                config=hyper,
                **end,
            ),
        )

    def announce(
        kind: VersionEventKind, status: TrainingRunStatus, reasons: list[str], **adapter: str
    ) -> None:
        """The version event (derived id: a replay publishes the same one), then the run's end."""
        _send(
            kafka,
            registry,
            VERSIONS,
            cfg.topic_suffix,
            ModelVersionEvent(
                event_id=uuid.uuid5(NAMESPACE, f"{version}|{kind.value}"),
                producer=PRODUCER,
                kind=kind,
                model=cfg.served_name,
                version=version,
                parent_version=incumbent,
                method=method,
                hyperparameters=hyper,
                lineage=lineage(data),
                eval=figures,
                decision="canary" if kind == VersionEventKind.published else "rejected",
                traffic_share=cfg.canary_share if kind == VersionEventKind.published else None,
                reasons=reasons,
                **adapter,
            ),
        )
        run_event(TrainingRunKind.finished, status=status, version=version, metrics=figures)

    if (target / "adapter_config.json").exists():
        say(f"trainer: {version} already exists (same data and config): announcing it again, not retraining")
        record = json.loads((target / RUN_RECORD).read_text()) if (target / RUN_RECORD).exists() else {}
        figures: dict[str, float] = record.get("figures", {})
        replayed = "replayed run: same data and config as an existing version"
        decision_reasons = [*record.get("reasons", []), replayed]
    else:
        run_event(TrainingRunKind.started)
        for stale in root.glob(f".{version}.tmp*"):  # left by a run that died before its rename
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root / f".{version}.tmp{os.getpid()}"
        unit = {"dpo": "pairs", "grpo": "samples' prompts (screened for reward variance first)"}.get(
            method, "samples"
        )
        say(
            f"trainer: {method.upper()} on {len(data)} {unit}, {cfg.max_steps} steps, "
            f"{describe_precision(cfg.precision)} ..."
        )
        if parent:
            say(
                f"trainer: continuing {incumbent}'s adapter at learning rate {cfg.learning_rate:g} "
                f"({len(train)} samples: {data_note['data_new'] or '-'} new)"
            )
        # GRPO samples its rollouts from the engine the gate then uses; the other methods start it
        # after training (it is not held in memory while they train).
        engine: Generates | None = None
        if method == "grpo" and cfg.grpo_rollouts == "vllm":
            engine = start_engine()  # GRPO rollouts, then the gate
        try:
            if method == "dpo":
                trained = train_dpo(base_path, train_pairs, tmp, cfg, parent)
            elif method == "grpo":
                trained = train_grpo(base_path, train, tmp, cfg, parent, engine)
            else:
                trained = train_kto(base_path, train, tmp, cfg, parent)
            shutil.rmtree(tmp.with_name(tmp.name + ".policy"), ignore_errors=True)
            metrics = trained.figures
            write_steps(client, clickhouse.database, version, method, trained.steps)
            failpoints.reached("trainer.after_train")
            if method == "grpo" and "rollout_temperature" in metrics:
                say(
                    f"trainer: GRPO rollouts at temperature {metrics['rollout_temperature']:g} "
                    f"({metrics['informative_prompts']:.0f} prompts whose answers differ in reward; "
                    f"screened in {metrics.get('screen_seconds', 0):.0f} s), {metrics['step_seconds']:.1f} s per step"
                )
            say(
                f"trainer: trained in {metrics['train_seconds']:.0f} s (loss {metrics['train_loss']:.4f}); gating on vLLM ..."
            )
            engine = engine or start_engine()
            gate_t0 = time.monotonic()
            seq = SequentialGate(len(eval_set), cfg.gate_looks, cfg.min_quality_gain)
            result: dict[str, Figures] = {}
            for k, (lo, hi) in enumerate(seq.slices()):
                part = evaluate(
                    engine,
                    eval_set[lo:hi],
                    {"incumbent": parent, "candidate": str(tmp)},
                    cfg.max_new_tokens,
                    latency_samples=8 if k == 0 else 0,
                    temperature=cfg.eval_temperature,
                    answers_per_prompt=cfg.eval_answers_per_prompt,
                    warm_up=k == 0,
                )
                result = {name: result[name].extend(f) if result else f for name, f in part.items()}
                look = seq.look(result["candidate"].per_prompt, result["incumbent"].per_prompt)
                say(
                    f"trainer: gate look {look.look} of {look.of} on {hi} prompts: gain {look.gain}: {look.verdict}"
                )
                if look.verdict != "continue":
                    break
            gate_s = time.monotonic() - gate_t0
        finally:
            if engine is not None:
                engine.close()
        cand, inc = result["candidate"], result["incumbent"]
        decision, gain = decide(cand, inc, cfg, look.gain)
        needed = needed_prompts(gain.sd, cfg.target_quality_gain, cfg.min_quality_gain)
        say(
            f"trainer: gated in {gate_s:.0f} s; gain {gain}; {needed} prompts would show a {cfg.target_quality_gain:+.2f} gain "
            f"with 80 % power (held out: {len(eval_set)}, scored: {gain.n})"
        )
        figures = {
            **metrics,
            **{f"candidate_{k}": v for k, v in cand.scalars().items()},
            **{f"incumbent_{k}": v for k, v in inc.scalars().items()},
            "gain": gain.estimate,
            "gain_lower": gain.lower,
            "gain_upper": gain.upper,
            "gain_ci_width": gain.width,
            "eval_prompts": float(gain.n),
            "eval_prompts_held_out": float(len(eval_set)),
            "gate_look": float(look.look),
            "gate_looks": float(look.of),
            "gain_level": gain.level,
            "eval_prompts_needed": float(needed),
            "eval_temperature": cfg.eval_temperature,
            "gate_seconds": gate_s,
            "gate_on_gateway": 1.0 if cfg.gateway_url else 0.0,  # shadow versions on the serving engine
        }
        decision_reasons = decision.reasons
        say("trainer: " + "; ".join(decision.reasons))
        if not decision.publish:
            shutil.rmtree(tmp, ignore_errors=True)
            announce(VersionEventKind.rejected, TrainingRunStatus.rejected, decision.reasons)
            return RunResult(version, "rejected", decision.reasons, figures, incumbent, method, len(data))
        # The gate's figures travel with the adapter, so a run that dies after the rename is
        # re-announced with them.
        (tmp / RUN_RECORD).write_text(json.dumps({"figures": figures, "reasons": decision.reasons}))
        os.rename(tmp, target)  # atomic: the version directory appears whole or not at all
        failpoints.reached("trainer.after_rename")
    sha = adapters.adapter_sha256(target)
    announce(
        VersionEventKind.published,
        TrainingRunStatus.published,
        decision_reasons,
        adapter_uri=f"file://{target}",
        adapter_sha256=sha,
    )
    say(f"trainer: published {version} ({target}, sha256 {sha[:12]}…)")
    return RunResult(version, "published", decision_reasons, figures, incumbent, method, len(data))
