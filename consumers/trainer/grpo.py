"""GRPO (TRL GRPOTrainer): the model answers each collected prompt several times and learns from the
registered reward of each answer relative to its group — reinforcement fine-tuning on checkable tasks.

Prompts come from production traffic (the RewardedSamples that carry a reference); the reward is
`infra.rewards.correctness`, the same scoring the streams' evaluators and the trainer's gate use.
Generation runs in transformers here (CPU); TRL can hand it to vLLM on a GPU host.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from consumers.trainer.data import Sample, chat
from consumers.trainer.steps import Trained, common_args, fit, trainable
from infra import rewards

log = logging.getLogger(__name__)


def _text(completion: Any) -> str:
    """TRL passes conversational completions as message lists, plain ones as strings."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def correctness_reward(completions: list[Any], reference: list[str], **_: Any) -> list[float | None]:
    return [
        rewards.correctness(rewards.EvalInput(prompt="", completion=_text(c), reference=ref))
        for c, ref in zip(completions, reference, strict=True)
    ]


def train_grpo(
    base_path: str, samples: list[Sample], out_dir: Path, cfg: Any, parent: str | None = None
) -> Trained:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    rows = [{"prompt": chat(s), "reference": s.reference} for s in samples if s.reference]
    if not rows:
        raise ValueError("GRPO needs prompts with a reference (a checkable answer); none in this data")
    model, tok, peft = trainable(base_path, cfg, parent, left_pad=True)
    args = GRPOConfig(
        **common_args(cfg, out_dir),
        # one step = grpo_prompts prompts x grpo_generations answers each
        per_device_train_batch_size=cfg.grpo_prompts * cfg.grpo_generations,
        num_generations=cfg.grpo_generations,
        max_completion_length=cfg.max_new_tokens,
        temperature=1.0,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[correctness_reward],
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=peft,
    )
    return fit(trainer, out_dir, len(rows))
