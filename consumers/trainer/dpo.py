"""DPO (TRL DPOTrainer) from preference pairs: one prompt, the response users preferred, the other."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

from consumers.trainer.pairs import Pair
from consumers.trainer.steps import Trained, base_and_tokenizer, common_args, lora


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
    t0 = time.monotonic()
    result = trainer.train()
    seconds = time.monotonic() - t0
    cast(Any, trainer.model).save_pretrained(str(out_dir))
    return Trained(
        {
            "train_loss": float(result.training_loss),
            "train_seconds": seconds,
            "train_samples": float(len(rows)),
            "samples_per_s": cfg.max_steps * args.per_device_train_batch_size / seconds,
        },
        trainer.state.log_history,
    )
