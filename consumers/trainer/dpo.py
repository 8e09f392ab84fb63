"""DPO (TRL DPOTrainer) from preference pairs: one prompt, the response users preferred, the other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from consumers.trainer.pairs import Pair
from consumers.trainer.steps import Trained, common_args, fit, trainable


def train_dpo(
    base_path: str, pairs: list[Pair], out_dir: Path, cfg: Any, parent: str | None = None
) -> Trained:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    rows = [
        {
            "prompt": p.messages,
            "chosen": [{"role": "assistant", "content": p.chosen}],
            "rejected": [{"role": "assistant", "content": p.rejected}],
        }
        for p in pairs
    ]
    model, tok, peft = trainable(base_path, cfg, parent)
    args = DPOConfig(
        **common_args(cfg, out_dir),
        per_device_train_batch_size=min(cfg.batch_size, len(rows)),
        beta=cfg.beta,
        max_length=512,
    )
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok, peft_config=peft
    )
    return fit(trainer, out_dir, len(rows))
