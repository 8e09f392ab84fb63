"""KTO (TRL KTOTrainer) straight from signed rewards: reward > 0 is desirable, else undesirable."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, cast

from consumers.trainer.data import Sample, chat
from consumers.trainer.steps import Trained

log = logging.getLogger(__name__)


def train_kto(base_path: str, samples: list[Sample], out_dir: Path, cfg: Any) -> Trained:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    rows = [
        {
            "prompt": chat(s),
            "completion": [{"role": "assistant", "content": s.completion}],
            "label": s.reward > 0,
        }
        for s in samples
    ]
    n_good = sum(1 for r in rows if r["label"])
    n_bad = len(rows) - n_good
    if not n_good or not n_bad:
        log.warning("KTO with one kind of label only (%d desirable, %d undesirable)", n_good, n_bad)
    # TRL's guidance: keep desirable_weight * n_desirable / (undesirable_weight * n_undesirable) in
    # [1, 4/3]; production feedback is usually lopsided (here ~20 % right answers).
    desirable_weight = max(1.0, n_bad / n_good) if n_good and n_bad else 1.0
    cuda = torch.cuda.is_available()
    tok = AutoTokenizer.from_pretrained(base_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_path, torch_dtype=torch.float32)
    args = KTOConfig(
        output_dir=str(out_dir / "trainer"),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=min(cfg.batch_size, len(rows)),
        learning_rate=cfg.learning_rate,
        beta=cfg.beta,
        desirable_weight=desirable_weight,
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
    trainer = KTOTrainer(
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
            "desirable_weight": desirable_weight,
        },
        trainer.state.log_history,
    )
