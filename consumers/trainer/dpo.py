"""DPO (TRL DPOTrainer) from preference pairs: one prompt, the response users preferred, the other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from consumers.trainer.pairs import Pair
from consumers.trainer.steps import Trained, base_and_tokenizer, common_args, fit, lora


def train_dpo(base_path: str, pairs: list[Pair], out_dir: Path, cfg: Any) -> Trained:
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
    model, tok = base_and_tokenizer(base_path)
    args = DPOConfig(
        **common_args(cfg, out_dir),
        per_device_train_batch_size=min(cfg.batch_size, len(rows)),
        beta=cfg.beta,
        max_length=512,
    )
    peft = lora(cfg)
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok, peft_config=peft
    )
    return fit(trainer, out_dir, len(rows))
