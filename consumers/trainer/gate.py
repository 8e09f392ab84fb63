"""The gate ("3D optimization"): candidate vs incumbent on the held-out set, on the real engine (vLLM).

Quality = evaluator accuracy against each held-out sample's reference
(number_match, else exact_match) over the held-out set in one batch; latency = wall
time per answer, one request at a time on the first few, adapter loaded; cost = completion tokens per answer. Publish only if
quality improves by at least the margin and latency and cost stay within their
budgets; otherwise the run is recorded as rejected with the numbers and reasons.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, cast

from consumers.trainer.data import Sample, chat
from infra import rewards


@dataclass
class Figures:
    accuracy: float
    latency_ms: float
    tokens_per_answer: float
    tokens_per_s: float
    n: int


@dataclass
class Decision:
    publish: bool
    reasons: list[str] = field(default_factory=list)


def evaluate(
    base_path: str,
    samples: list[Sample],
    adapters: dict[str, str | None],
    max_new_tokens: int,
    latency_samples: int = 8,
) -> dict[str, Figures]:
    """Figures per name in ``adapters`` (None = the base model) with one vLLM engine and LoRA."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{max(0, (os.cpu_count() or 1) - 1)}")
    import torch
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    cpu = not torch.cuda.is_available()
    llm = LLM(
        model=base_path,
        dtype="float32" if cpu else "auto",
        enable_lora=True,
        max_lora_rank=64,
        max_model_len=1024,
        enforce_eager=cpu,
    )
    tok = llm.get_tokenizer()
    params = SamplingParams(max_tokens=max_new_tokens, temperature=0)
    prompts = [
        cast(str, tok.apply_chat_template(cast(Any, chat(s)), tokenize=False, add_generation_prompt=True))
        for s in samples
    ]
    out: dict[str, Figures] = {}
    for lora_id, (name, path) in enumerate(adapters.items(), start=1):
        lora = LoRARequest(name, lora_id, path) if path else None
        llm.generate(prompts[:1], params, lora_request=lora, use_tqdm=False)  # load + warm up
        # Quality on every held-out prompt in one batch; latency one request at a time on a few.
        results = [r.outputs[0] for r in llm.generate(prompts, params, lora_request=lora, use_tqdm=False)]
        correct = []
        for sample, result in zip(samples, results, strict=True):
            item = rewards.EvalInput(prompt=sample.prompt, completion=result.text, reference=sample.reference)
            correct.append(rewards.correctness(item))
        latencies, timed_tokens = [], []
        for prompt in prompts[:latency_samples]:
            t0 = time.perf_counter()
            one = llm.generate([prompt], params, lora_request=lora, use_tqdm=False)[0].outputs[0]
            latencies.append((time.perf_counter() - t0) * 1000)
            timed_tokens.append(len(one.token_ids))
        total_s = sum(latencies) / 1000
        out[name] = Figures(
            accuracy=statistics.fmean(correct),
            latency_ms=statistics.fmean(latencies),
            tokens_per_answer=statistics.fmean(len(r.token_ids) for r in results),
            tokens_per_s=sum(timed_tokens) / total_s if total_s else 0.0,
            n=len(samples),
        )
    del llm
    return out


def decide(candidate: Figures, incumbent: Figures, cfg: Any) -> Decision:
    reasons = []
    gain = candidate.accuracy - incumbent.accuracy
    if gain < cfg.min_quality_gain:
        reasons.append(
            f"quality: accuracy {candidate.accuracy:.3f} vs incumbent {incumbent.accuracy:.3f} "
            f"(gain {gain:+.3f} < required {cfg.min_quality_gain:+.3f})"
        )
    latency_ratio = candidate.latency_ms / incumbent.latency_ms if incumbent.latency_ms else 1.0
    if latency_ratio > cfg.max_latency_ratio:
        reasons.append(
            f"latency: {candidate.latency_ms:.0f} ms vs {incumbent.latency_ms:.0f} ms "
            f"({latency_ratio:.2f}x > budget {cfg.max_latency_ratio:.2f}x)"
        )
    cost_ratio = (
        candidate.tokens_per_answer / incumbent.tokens_per_answer if incumbent.tokens_per_answer else 1.0
    )
    if cost_ratio > cfg.max_cost_ratio:
        reasons.append(
            f"cost: {candidate.tokens_per_answer:.1f} tokens/answer vs {incumbent.tokens_per_answer:.1f} "
            f"({cost_ratio:.2f}x > budget {cfg.max_cost_ratio:.2f}x)"
        )
    if not reasons:
        reasons.append(
            f"accuracy {incumbent.accuracy:.3f} -> {candidate.accuracy:.3f}, latency {latency_ratio:.2f}x, "
            f"tokens/answer {cost_ratio:.2f}x: within budgets"
        )
        return Decision(True, reasons)
    return Decision(False, reasons)
