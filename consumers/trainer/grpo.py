"""GRPO (TRL GRPOTrainer): the model answers each collected prompt several times and learns from the
registered reward of each answer relative to its group — reinforcement fine-tuning on checkable tasks.

Prompts come from production traffic (the RewardedSamples that carry a reference); the reward is
`infra.rewards.correctness`, the same scoring the streams' evaluators and the trainer's gate use.
Generation runs in transformers here (CPU); TRL can hand it to vLLM on a GPU host.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, cast

from consumers.trainer.data import Sample, chat
from consumers.trainer.steps import Trained
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


def train_grpo(base_path: str, samples: list[Sample], out_dir: Path, cfg: Any) -> Trained:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    rows = [{"prompt": chat(s), "reference": s.reference} for s in samples if s.reference]
    if not rows:
        raise ValueError("GRPO needs prompts with a reference (a checkable answer); none in this data")
    cuda = torch.cuda.is_available()
    tok = AutoTokenizer.from_pretrained(base_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(base_path, torch_dtype=torch.float32)
    args = GRPOConfig(
        output_dir=str(out_dir / "trainer"),
        max_steps=cfg.max_steps,
        # one step = grpo_prompts prompts x grpo_generations answers each
        per_device_train_batch_size=cfg.grpo_prompts * cfg.grpo_generations,
        num_generations=cfg.grpo_generations,
        max_completion_length=cfg.max_new_tokens,
        temperature=1.0,
        learning_rate=cfg.learning_rate,
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
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[correctness_reward],
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=peft,
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
            "step_seconds": seconds / cfg.max_steps,
            "samples_per_s": cfg.max_steps * args.per_device_train_batch_size / seconds,
        },
        trainer.state.log_history,
    )
