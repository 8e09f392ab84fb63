"""DPO (TRL DPOTrainer) from preference pairs: one prompt, the response users preferred, the other."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

from consumers.trainer.pairs import Pair
from consumers.trainer.steps import Trained


def train_dpo(base_path: str, pairs: list[Pair], out_dir: Path, cfg: Any) -> Trained:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    rows = [
        {
            "prompt": p.messages,
            "chosen": [{"role": "assistant", "content": p.chosen}],
            "rejected": [{"role": "assistant", "content": p.rejected}],
        }
        for p in pairs
    ]
    cuda = torch.cuda.is_available()
    tok = AutoTokenizer.from_pretrained(base_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_path, torch_dtype=torch.float32)
    args = DPOConfig(
        output_dir=str(out_dir / "trainer"),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=min(cfg.batch_size, len(rows)),
        learning_rate=cfg.learning_rate,
        beta=cfg.beta,
        max_length=512,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not cuda,
        bf16=False,
        disable_tqdm=False,
        seed=0,
        data_seed=0,
    )
    peft = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=2 * cfg.lora_rank,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM",
    )
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
