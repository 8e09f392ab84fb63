"""Training speed on this machine: KTO samples/s and GRPO seconds per step, SmolLM2-135M + LoRA.

Both run the trainer's own functions (`consumers/trainer/kto.py`, `grpo.py`) on synthetic
arithmetic samples shaped like the demo's (prompt, completion, signed reward, reference).
There is no peer to run beside them here; they are reported, with the configuration.
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
    from consumers.trainer.grpo import train_grpo
    from consumers.trainer.kto import train_kto
    from infra.models import resolve
    from infra.settings import LocalStackSettings, TrainerSettings

    base = resolve("smollm2", LocalStackSettings().cache_dir)
    kto_cfg = TrainerSettings(method="kto", max_steps=6, batch_size=8)
    grpo_cfg = TrainerSettings(
        method="grpo", max_steps=3, grpo_prompts=2, grpo_generations=4, max_new_tokens=16
    )
    with tempfile.TemporaryDirectory(prefix="rftloop-bench-train-") as tmp:
        kto = train_kto(base, _samples(96), Path(tmp) / "kto", kto_cfg).figures
        grpo = train_grpo(base, _samples(32), Path(tmp) / "grpo", grpo_cfg).figures
    return [
        Result(
            name="trainer.kto_samples_per_s",
            value=kto["samples_per_s"],
            unit="samples/s",
            peer="(report)",
            peer_value=None,
            goal="report",
            method=(
                "TRL KTOTrainer + peft LoRA r16 (q/k/v/o) on SmolLM2-135M-Instruct fp32, CPU (use_cpu), "
                f"{kto_cfg.max_steps} steps x batch {kto_cfg.batch_size} of synthetic arithmetic samples; "
                f"samples trained / wall time of trainer.train() ({kto['train_seconds']:.1f} s)"
            ),
        ),
        Result(
            name="trainer.grpo_step_s",
            value=grpo["step_seconds"],
            unit="s/step",
            peer="(report)",
            peer_value=None,
            goal="report",
            higher_is_better=False,
            method=(
                "TRL GRPOTrainer + peft LoRA r16 on SmolLM2-135M-Instruct fp32, CPU, generation by "
                f"transformers (no vLLM on CPU here): {grpo_cfg.grpo_prompts} prompts x "
                f"{grpo_cfg.grpo_generations} answers x {grpo_cfg.max_new_tokens} new tokens per step, "
                f"reward = infra.rewards.correctness; mean of {grpo_cfg.max_steps} steps "
                f"({grpo['train_seconds']:.1f} s)"
            ),
        ),
    ]
