"""What a training method returns, and its per-step log (loss, reward, KL, grad norm ...) in ClickHouse."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

STEPS_TABLE = "training_steps"
# the attention projections: what a new adapter targets (the gateways' RFTLOOP_GATEWAY_LORA_TARGET_MODULES
# must include them, or they refuse it)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class Trained:
    figures: dict[str, float]  # the run's summary (into the version event and TrainingRunEvent)
    steps: list[dict[str, Any]] = field(default_factory=list)  # TRL's log_history, one dict per log


def step_rows(version: str, method: str, steps: list[dict[str, Any]]) -> list[list[Any]]:
    """One row per (step, numeric metric); TRL's final summary entry (train_runtime ...) included."""
    now = datetime.now(UTC)
    rows = []
    for entry in steps:
        step = int(entry.get("step", 0))
        for name, value in entry.items():
            if name != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                rows.append([version, method, step, name, float(value), now])
    return rows


def write_steps(client: Any, db: str, version: str, method: str, steps: list[dict[str, Any]]) -> int:
    rows = step_rows(version, method, steps)
    if rows:
        client.insert(
            f"{db}.{STEPS_TABLE}",
            rows,
            column_names=["version", "method", "step", "metric", "value", "logged_at"],
        )
    return len(rows)


def base_and_tokenizer(base_path: str, left_pad: bool = False) -> tuple[Any, Any]:
    """The serving base model in fp32 and its tokenizer (pad = eos when it has none)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if left_pad:
        tok.padding_side = "left"
    return AutoModelForCausalLM.from_pretrained(base_path, torch_dtype=torch.float32), tok


def common_args(cfg: Any, out_dir: Path) -> dict[str, Any]:
    """TrainingArguments every method shares: steps, learning rate, per-step logs, CPU or CUDA."""
    import torch

    return {
        "output_dir": str(out_dir / "trainer"),
        "max_steps": cfg.max_steps,
        "learning_rate": cfg.learning_rate,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": not torch.cuda.is_available(),
        "bf16": training_precision(cfg.precision)[0],
        # TRL turns it on by default; RFTLOOP_TRAINER_GRADIENT_CHECKPOINTING (off) decides here
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "disable_tqdm": False,
        "seed": 0,
        "data_seed": 0,
    }


def training_precision(precision: str) -> tuple[bool, str]:
    """(bf16 mixed precision?, why) for RFTLOOP_TRAINER_PRECISION. ``auto`` picks bf16 where the
    hardware multiplies bf16 natively: a CUDA GPU that supports it, or an x86 CPU with avx512_bf16
    or amx_bf16 (torch's oneDNN kernels use them). On this machine's CPU (avx512_bf16) a LoRA
    forward and backward of SmolLM2 (16 sequences of 70 tokens) ran 2.2x faster under bf16 autocast
    than in fp32. Other CPUs stay fp32 (without those instructions bf16 gains nothing to pay for
    its rounding; ARM's bf16 was not measured here); RFTLOOP_TRAINER_PRECISION=bf16 forces it."""
    import torch

    if precision != "auto":
        return precision == "bf16", f"RFTLOOP_TRAINER_PRECISION={precision}"
    if torch.cuda.is_available():
        ok = bool(torch.cuda.is_bf16_supported())
        return ok, "auto: the GPU " + ("supports bf16" if ok else "has no bf16")
    caps = torch.cpu.get_capabilities()
    native = [name for name in ("amx_bf16", "avx512_bf16") if caps.get(name)]
    if native:
        return True, f"auto: the CPU has {native[0]}"
    return False, "auto: the CPU has no native bf16 (avx512_bf16, amx_bf16)"


def describe_precision(precision: str) -> str:
    """What a run trains in, and why, in words (the trainer's run line, the benchmark's Methods)."""
    bf16, why = training_precision(precision)
    return f"{'bf16 mixed precision' if bf16 else 'fp32'} ({why})"


def trainable(base_path: str, cfg: Any, parent: str | None, left_pad: bool = False) -> tuple[Any, Any, Any]:
    """(model, tokenizer, peft_config) for a trainer: a fresh LoRA on the base model, or — when
    ``parent`` names the incumbent's adapter directory — that adapter, loaded trainable and
    continued (peft ``is_trainable=True``; the trainer gets no second peft_config). Continued, not
    merged: the result is again one LoRA on the unchanged base, which vLLM hot-loads like any other,
    and the reference policy of KTO/DPO/GRPO stays the base model (the adapter disabled)."""
    model, tok = base_and_tokenizer(base_path, left_pad=left_pad)
    if parent is None:
        return model, tok, lora(cfg)
    from peft import PeftModel

    return PeftModel.from_pretrained(model, parent, is_trainable=True), tok, None


def lora(cfg: Any) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=2 * cfg.lora_rank,
        target_modules=list(LORA_TARGETS),
        task_type="CAUSAL_LM",
    )


def fit(trainer: Any, out_dir: Path, n_rows: int, **extra: float) -> Trained:
    """Train, save the LoRA adapter to `out_dir`, and report the run's figures and per-step log."""
    import time

    t0 = time.monotonic()
    result = trainer.train()
    seconds = time.monotonic() - t0
    trainer.model.save_pretrained(str(out_dir))
    args = trainer.args
    return Trained(
        {
            "train_loss": float(result.training_loss),
            "train_seconds": seconds,
            "train_samples": float(n_rows),
            "samples_per_s": args.max_steps * args.per_device_train_batch_size / seconds,
            "step_seconds": seconds / args.max_steps,
            **extra,
        },
        trainer.state.log_history,
    )
