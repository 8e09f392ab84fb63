"""KTO (TRL KTOTrainer) straight from signed rewards: reward > 0 is desirable, else undesirable."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from consumers.trainer.data import Sample, chat
from consumers.trainer.steps import Trained, common_args, fit, trainable

log = logging.getLogger(__name__)


def train_kto(
    base_path: str, samples: list[Sample], out_dir: Path, cfg: Any, parent: str | None = None
) -> Trained:
    from datasets import Dataset
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
    model, tok, peft = trainable(base_path, cfg, parent)
    args = KTOConfig(
        **common_args(cfg, out_dir),
        per_device_train_batch_size=min(cfg.batch_size, len(rows)),
        beta=cfg.beta,
        desirable_weight=desirable_weight,
        max_length=512,
    )
    trainer = KTOTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok, peft_config=peft
    )
    return fit(trainer, out_dir, len(rows), desirable_weight=desirable_weight)
