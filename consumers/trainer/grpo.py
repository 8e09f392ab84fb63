"""GRPO (TRL GRPOTrainer) with rollouts from vLLM: the model answers each collected prompt several
times and learns from the registered reward of each answer relative to its group — reinforcement
fine-tuning on checkable tasks.

Prompts come from production traffic (the RewardedSamples that carry a reference); the reward is
`infra.rewards.correctness`, the same scoring the streams' evaluators and the trainer's gate use.

Rollouts come from the run's vLLM engine (``consumers.trainer.engine``) through TRL's
``rollout_func``: at each step the policy's adapter is saved and the engine loads it under a new
LoRA id, so every group is sampled from the current policy. ``RFTLOOP_TRAINER_GRPO_ROLLOUTS=
transformers`` uses TRL's own ``generate`` instead (the peer `rftloop bench grpo` measures).

Where rollouts teach: a group whose answers all score the same has zero advantage and no gradient.
Before training, ``screen`` samples ``grpo_generations`` answers from the starting policy to each
of ``grpo_screen_prompts`` training prompts at each temperature in ``grpo_temperatures``, keeps the
temperature with the most prompts whose group has reward variance (``choose``), and GRPO trains on
those prompts only (all prompts when fewer than one step's worth have any).

Which prompts are screened (``screening_order``): as many whose served answer was rewarded as
whose answer was not, alternating. A prompt the serving version got right is likely all-right in a
group once the model is good, one it got wrong likely all-wrong while it is bad; so the rarer kind
is the likelier to have reward variance, and taking the first prompts by hash (mostly the common
kind) screened 20 informative of 32 at ~60 % accuracy.

Answer length (``grpo_length_slack``): correctness alone does not hold an answer's length, and the
gate refuses a candidate whose answers cost more than ``max_latency_ratio`` x its parent's. In the
demo of 2026-12-06 run 9 both continued candidates were significantly better and answered with ~1.2x
the tokens; the gate refused both at 1.27x and 1.29x latency. With the slack set, a second reward
joins correctness: TRL's soft overlong punishment (DAPO, ``trl.rewards``) with no penalty up to the
starting policy's mean answer length at the rollout temperature (measured in the screening) and
-1 at (1 + slack) x that length, weighted ``grpo_length_weight``.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consumers.trainer.data import Sample, chat
from consumers.trainer.engine import Generates
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


@dataclass
class Screen:
    """What the screening measured: per temperature, the share of prompts whose group of answers
    has reward variance, and the mean reward; the chosen temperature and its informative prompts."""

    temperature: float
    informative: list[Sample]
    by_temperature: dict[float, tuple[float, float]] = field(default_factory=dict)  # t -> (share, mean)
    mean_tokens: float = 0.0  # the starting policy's mean answer length at the chosen temperature

    def figures(self) -> dict[str, float]:
        out = {
            "rollout_temperature": self.temperature,
            "informative_prompts": float(len(self.informative)),
            "parent_answer_tokens": self.mean_tokens,
        }
        for t, (share, mean) in self.by_temperature.items():
            out[f"informative_share_t{t:g}"] = share
            out[f"rollout_reward_t{t:g}"] = mean
        return out


def screening_order(samples: list[Sample]) -> list[Sample]:
    """``samples`` (in their deterministic order) re-ordered to alternate between prompts whose served
    answer was rewarded (reward > 0) and the others, the rest of the larger kind at the end."""
    right = [s for s in samples if s.reward > 0]
    wrong = [s for s in samples if s.reward <= 0]
    mixed = [s for pair in zip(wrong, right, strict=False) for s in pair]
    k = min(len(right), len(wrong))
    return mixed + wrong[k:] + right[k:]


def screen(
    engine: Generates,
    samples: list[Sample],
    adapter: str | None,
    temperatures: list[float],
    group: int,
    max_tokens: int,
) -> Screen:
    """Sample a group of answers to every prompt at each temperature; choose the one with the most
    informative groups (``choose``)."""
    prompts = [engine.prompt(s) for s in samples]
    found: list[Screen] = []
    by_t: dict[float, tuple[float, float]] = {}
    for t in sorted(temperatures):
        answers = engine.generate([p for p in prompts for _ in range(group)], adapter, max_tokens, t)
        informative, scores = [], []
        for i, sample in enumerate(samples):
            got = [
                rewards.correctness(
                    rewards.EvalInput(prompt="", completion=a.text, reference=sample.reference)
                )
                for a in answers[i * group : (i + 1) * group]
            ]
            scores += got
            if len(set(got)) > 1:
                informative.append(sample)
        by_t[t] = (len(informative) / len(samples), statistics.fmean(scores))
        found.append(Screen(t, informative, mean_tokens=statistics.fmean(len(a.token_ids) for a in answers)))
    chosen = choose(found)
    chosen.by_temperature = by_t
    return chosen


def choose(found: list[Screen]) -> Screen:
    """The temperature with the most informative prompts (ties: the lower, closer to how users are
    served). Tried on 2026-12-06 and reverted: the lowest temperature with at least half the best
    one's informative prompts. In two demo runs it rolled out at 0.5 where this rule took 0.8, and
    its continued generations went +27.5 and -19.0 points (the second one's rollout entropy fell to
    0.03-0.09 and 6 of its 12 steps had no reward variance), against +9.4 on average over the eight
    continued generations this rule ran on 2026-12-04 and 2026-12-06."""
    return max(sorted(found, key=lambda s: s.temperature), key=lambda s: len(s.informative))


def length_term(mean_tokens: float, slack: float) -> Any:
    """TRL's soft overlong punishment: 0 up to ``mean_tokens`` (rounded up), falling linearly to -1
    at (1 + ``slack``) x ``mean_tokens`` (at least one token further), -1 beyond."""
    from trl.rewards import get_soft_overlong_punishment

    if mean_tokens <= 0 or slack <= 0:
        raise ValueError(f"the length term needs a positive mean length and slack, not {mean_tokens}, {slack}")
    free = math.ceil(mean_tokens)
    limit = max(free + 1, round(mean_tokens * (1 + slack)))
    return get_soft_overlong_punishment(max_completion_len=limit, soft_punish_cache=limit - free)


def vllm_rollouts(engine: Generates, policy_dir: Path, max_tokens: int, temperature: float) -> Any:
    """TRL ``rollout_func``: one answer per prompt it is given (TRL's sampler already repeats each
    prompt ``num_generations`` times), from the current policy's adapter loaded into vLLM."""
    state = {"step": -1, "path": None}

    def rollout(prompts: list[Any], trainer: Any) -> dict[str, list[Any]]:
        if trainer.state.global_step != state["step"]:  # the policy changed: load it anew
            trainer.accelerator.unwrap_model(trainer.model).save_pretrained(str(policy_dir))
            state["step"] = trainer.state.global_step
            fresh = True
        else:
            fresh = False
        texts = [engine.prompt(p) if isinstance(p, list) else str(p) for p in prompts]
        answers = engine.generate(texts, str(policy_dir), max_tokens, temperature, fresh=fresh)
        return {
            "prompt_ids": [a.prompt_ids for a in answers],
            "completion_ids": [a.token_ids for a in answers],
            "logprobs": [a.logprobs for a in answers],
        }

    return rollout


def train_grpo(
    base_path: str,
    samples: list[Sample],
    out_dir: Path,
    cfg: Any,
    parent: str | None = None,
    engine: Generates | None = None,
) -> Trained:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    checkable = [s for s in samples if s.reference]
    if not checkable:
        raise ValueError("GRPO needs prompts with a reference (a checkable answer); none in this data")
    extra: dict[str, float] = {}
    temperature = cfg.grpo_temperatures[0]
    chosen = checkable
    mean_tokens = 0.0
    if engine is not None and cfg.grpo_rollouts == "vllm" and cfg.grpo_screen_prompts:
        t0 = time.monotonic()
        found = screen(
            engine,
            screening_order(checkable)[: cfg.grpo_screen_prompts],
            parent,
            cfg.grpo_temperatures,
            cfg.grpo_generations,
            cfg.max_new_tokens,
        )
        temperature = found.temperature
        mean_tokens = found.mean_tokens
        extra = {**found.figures(), "screen_seconds": time.monotonic() - t0}
        if len(found.informative) >= cfg.grpo_prompts:
            chosen = found.informative
        log.info("GRPO screening: %s", extra)
    reward_funcs: list[Any] = [correctness_reward]
    weights = [1.0]
    if cfg.grpo_length_slack > 0:
        if mean_tokens <= 0:
            raise ValueError(
                "RFTLOOP_TRAINER_GRPO_LENGTH_SLACK needs the screening's length measurement "
                "(vLLM rollouts and RFTLOOP_TRAINER_GRPO_SCREEN_PROMPTS > 0)"
            )
        reward_funcs.append(length_term(mean_tokens, cfg.grpo_length_slack))
        weights.append(cfg.grpo_length_weight)
    rows = [{"prompt": chat(s), "reference": s.reference} for s in chosen]
    model, tok, peft = trainable(base_path, cfg, parent, left_pad=True)
    args = GRPOConfig(
        **common_args(cfg, out_dir),
        # one step = grpo_prompts prompts x grpo_generations answers each
        per_device_train_batch_size=cfg.grpo_prompts * cfg.grpo_generations,
        num_generations=cfg.grpo_generations,
        max_completion_length=cfg.max_new_tokens,
        temperature=temperature,
        reward_weights=weights,
    )
    rollout = None
    if cfg.grpo_rollouts == "vllm":
        if engine is None:
            raise ValueError("RFTLOOP_TRAINER_GRPO_ROLLOUTS=vllm needs the run's vLLM engine")
        rollout = vllm_rollouts(
            engine, out_dir.with_name(out_dir.name + ".policy"), cfg.max_new_tokens, temperature
        )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=peft,
        rollout_func=rollout,
    )
    return fit(trainer, out_dir, len(rows), **extra)
