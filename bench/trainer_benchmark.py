"""Training speed on this machine: KTO samples/s and GRPO seconds per step, SmolLM2-135M + LoRA.

Both run the trainer's own functions (`consumers/trainer/kto.py`, `grpo.py`) on synthetic
arithmetic samples shaped like the demo's (prompt, completion, signed reward, reference).
GRPO is measured three times in one run, same data and configuration: rollouts from the trainer's
vLLM engine (ours, `consumers/trainer/engine.py`) against TRL's transformers `generate` (the peer);
ours (no gradient checkpointing, RFTLOOP_TRAINER_GRADIENT_CHECKPOINTING's default) against
the same vLLM-rollout step with TRL's default of recomputing activations in the backward pass;
and ours (RFTLOOP_TRAINER_PRECISION's default, auto: bf16 mixed precision on a CPU with native
bf16) against the same step in fp32.
KTO has no peer to run beside it here; it is reported, with the configuration.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any

from bench.harness import Context, Result


def _samples(n: int) -> list[Any]:
    from consumers.trainer.data import Sample

    rng = random.Random(0)
    out = []
    for i in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        right = i % 3 == 0
        out.append(
            Sample(
                request_id=f"b{i}",
                event_id=f"e{i}",
                prompt=f"What is {a} plus {b}? Answer with just the number.",
                messages=[],
                completion=str(a + b) if right else str(a + b + rng.randint(1, 9)),
                reward=1.0 if right else -1.0,
                reference=str(a + b),
                topic="llm.rewarded.samples",
                partition=0,
                offset=i,
            )
        )
    return out


def training(ctx: Context) -> list[Result]:
    from consumers.trainer.engine import Engine
    from consumers.trainer.grpo import train_grpo
    from consumers.trainer.kto import train_kto
    from consumers.trainer.steps import describe_precision
    from infra.models import resolve
    from infra.settings import GatewaySettings, LocalStackSettings, TrainerSettings

    base = resolve("smollm2", LocalStackSettings().cache_dir)
    kto_cfg = TrainerSettings(method="kto", max_steps=6, batch_size=8)
    shape: dict[str, Any] = {
        "method": "grpo",
        "max_steps": 4,
        "grpo_prompts": 2,
        "grpo_generations": 4,
        "max_new_tokens": 16,
        "grpo_temperatures": [1.0],
        "grpo_screen_prompts": 0,  # the same prompts for both: no screening
    }
    grpo_cfg = TrainerSettings(**shape, grpo_rollouts="vllm")
    peer_cfg = TrainerSettings(**shape, grpo_rollouts="transformers")
    ckpt_cfg = TrainerSettings(**shape, grpo_rollouts="vllm", gradient_checkpointing=True)
    fp32_cfg = TrainerSettings(**shape, grpo_rollouts="vllm", precision="fp32")
    precision = describe_precision(grpo_cfg.precision)
    with tempfile.TemporaryDirectory(prefix="rftloop-bench-train-") as tmp:
        kto = train_kto(base, _samples(96), Path(tmp) / "kto", kto_cfg).figures
        peer = train_grpo(base, _samples(32), Path(tmp) / "grpo-generate", peer_cfg).figures
        engine = Engine(base, lora_targets=GatewaySettings().lora_targets())  # as the trainer starts it
        try:
            # one step first, not measured: the engine's first LoRA load and warm-up (12 s of a first
            # step here) would otherwise count against whichever run comes first
            warm = TrainerSettings(**{**shape, "max_steps": 1}, grpo_rollouts="vllm")
            train_grpo(base, _samples(8), Path(tmp) / "grpo-warm-up", warm, None, engine)
            grpo = train_grpo(base, _samples(32), Path(tmp) / "grpo-vllm", grpo_cfg, None, engine).figures
            ckpt = train_grpo(base, _samples(32), Path(tmp) / "grpo-ckpt", ckpt_cfg, None, engine).figures
            fp32 = train_grpo(base, _samples(32), Path(tmp) / "grpo-fp32", fp32_cfg, None, engine).figures
        finally:
            engine.close()
    return [
        Result(
            name="trainer.kto_samples_per_s",
            value=kto["samples_per_s"],
            unit="samples/s",
            peer="(report)",
            peer_value=None,
            goal="report",
            method=(
                f"TRL KTOTrainer + peft LoRA r16 (q/k/v/o) on SmolLM2-135M-Instruct, {precision}, CPU (use_cpu), "
                f"{kto_cfg.max_steps} steps x batch {kto_cfg.batch_size} of synthetic arithmetic samples; "
                f"samples trained / wall time of trainer.train() ({kto['train_seconds']:.1f} s)"
            ),
        ),
        Result(
            name="trainer.grpo_step_s",
            value=grpo["step_seconds"],
            unit="s/step",
            peer="same GRPO step, rollouts by TRL's transformers generate",
            peer_value=peer["step_seconds"],
            goal="report (ratio: generate / vLLM)",
            higher_is_better=False,
            method=(
                f"TRL GRPOTrainer + peft LoRA r16 on SmolLM2-135M-Instruct, {precision}, CPU, in one run on the same 32 "
                f"synthetic prompts: {grpo_cfg.grpo_prompts} prompts x {grpo_cfg.grpo_generations} answers x "
                f"<= {grpo_cfg.max_new_tokens} new tokens per step at temperature 1.0, reward = "
                "infra.rewards.correctness, no screening; ours: rollouts from an in-process vLLM engine "
                "(LoRA, the policy's adapter saved and re-loaded each step, TRL rollout_func); peer: TRL's "
                f"own transformers generate. Mean over {grpo_cfg.max_steps} steps of trainer.train() wall time, "
                "ours after one unmeasured step that warms the vLLM engine (the peer has no engine; its "
                "first step ran as fast as the others here) "
                f"(ours {grpo['train_seconds']:.1f} s, peer {peer['train_seconds']:.1f} s); engine start excluded"
            ),
        ),
        Result(
            name="trainer.grpo_step_s_no_checkpointing",
            value=grpo["step_seconds"],
            unit="s/step",
            peer="same GRPO step with TRL's default gradient checkpointing",
            peer_value=ckpt["step_seconds"],
            goal="report (ratio: checkpointing / none)",
            higher_is_better=False,
            method=(
                "the trainer.grpo_step_s run's vLLM-rollout GRPO step (ours: gradient_checkpointing off, "
                "RFTLOOP_TRAINER_GRADIENT_CHECKPOINTING's default) against the same step, same engine, same "
                "prompts, run right after it with TRL's default gradient_checkpointing=True (the engine warmed "
                "by an unmeasured step before both). Mean over "
                f"{grpo_cfg.max_steps} steps of trainer.train() wall time (ours {grpo['train_seconds']:.1f} s, "
                f"peer {ckpt['train_seconds']:.1f} s)"
            ),
        ),
        Result(
            name="trainer.grpo_step_s_precision",
            value=grpo["step_seconds"],
            unit="s/step",
            peer="same GRPO step in fp32",
            peer_value=fp32["step_seconds"],
            goal="report (ratio: fp32 / ours)",
            higher_is_better=False,
            method=(
                f"the trainer.grpo_step_s run's vLLM-rollout GRPO step (ours: {precision}, "
                "RFTLOOP_TRAINER_PRECISION's default) against the same step, same engine, same prompts, "
                "run after it with RFTLOOP_TRAINER_PRECISION=fp32 (the engine warmed by an unmeasured step "
                f"before both). Mean over {grpo_cfg.max_steps} steps of trainer.train() wall time (ours "
                f"{grpo['train_seconds']:.1f} s, peer {fp32['train_seconds']:.1f} s); the rollouts are vLLM's in "
                "both (fp32), so the ratio is the training half's gain diluted by them"
            ),
        ),
    ]
