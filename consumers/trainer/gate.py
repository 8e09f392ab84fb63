"""The gate ("3D optimization"): candidate vs incumbent on the held-out set, on the real engine (vLLM).

Quality = evaluator accuracy against each held-out sample's reference (number_match, else
exact_match), sampled as users are served (``eval_temperature``, 1.0 like the gateway's default;
``eval_answers_per_prompt`` answers to each prompt), both versions on the same prompts, compared
*paired* (``consumers.trainer.paired``): publish only when the gain's 95 % interval lies above
``min_quality_gain``. Latency = wall time per answer, one request at a time on the first few,
adapter loaded, the versions interleaved prompt by prompt; cost = completion tokens per answer; both within their budgets. Otherwise the run
is recorded as rejected with the numbers and reasons. The engine (``consumers.trainer.engine``, the
one the run's GRPO rollouts use) allows LoRA ranks up to the gateway's
``RFTLOOP_GATEWAY_MAX_LORA_RANK``, so nothing passes the gate that a gateway refuses.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from consumers.trainer.data import Sample
from consumers.trainer.engine import Generates
from consumers.trainer.paired import Gain, paired_gain
from infra import rewards


@dataclass
class Figures:
    accuracy: float
    latency_ms: float
    tokens_per_answer: float
    tokens_per_s: float
    n: int
    per_prompt: list[float] = field(default_factory=list)  # share right per held-out prompt

    def extend(self, more: Figures) -> Figures:
        """These figures and those of more held-out prompts (a later look of the sequential gate):
        quality and tokens over all the prompts, latency as timed on the first slice."""
        n = self.n + more.n
        return Figures(
            accuracy=(self.accuracy * self.n + more.accuracy * more.n) / n,
            latency_ms=self.latency_ms,
            tokens_per_answer=(self.tokens_per_answer * self.n + more.tokens_per_answer * more.n) / n,
            tokens_per_s=self.tokens_per_s,
            n=n,
            per_prompt=self.per_prompt + more.per_prompt,
        )

    def scalars(self) -> dict[str, float]:
        """What the version event's ``eval`` carries (per-prompt shares stay out)."""
        return {k: float(v) for k, v in asdict(self).items() if k != "per_prompt"}


@dataclass
class Decision:
    publish: bool
    reasons: list[str] = field(default_factory=list)


def evaluate(
    engine: Generates,
    samples: list[Sample],
    adapters: dict[str, str | None],
    max_new_tokens: int,
    latency_samples: int = 8,
    *,
    temperature: float = 1.0,
    answers_per_prompt: int = 4,
    warm_up: bool = True,
) -> dict[str, Figures]:
    """Figures per name in ``adapters`` (None = the base model) on the run's vLLM engine.
    ``warm_up``: load each adapter anew first (the first slice of the gate; later slices reuse it).
    ``latency_samples`` 0: no latency timed (later slices keep the first one's)."""
    k = answers_per_prompt if temperature > 0 else 1  # greedy answers repeat: one is enough
    prompts = [engine.prompt(s) for s in samples]
    quality: dict[str, tuple[list[float], list[float], list[Any]]] = {}
    for name, path in adapters.items():
        if warm_up:
            engine.generate(prompts[:1], path, max_new_tokens, temperature, fresh=True)  # load + warm up
        # Quality on every held-out prompt (k answers each) in one batch.
        results = engine.generate([p for p in prompts for _ in range(k)], path, max_new_tokens, temperature)
        correct, per_prompt = [], []
        for j, sample in enumerate(samples):
            got = [
                rewards.correctness(
                    rewards.EvalInput(prompt=sample.prompt, completion=r.text, reference=sample.reference)
                )
                for r in results[j * k : (j + 1) * k]
            ]
            correct += got
            per_prompt.append(statistics.fmean(got))
        quality[name] = (correct, per_prompt, results)
    # Latency one request at a time on a few prompts, the versions interleaved prompt by prompt (in
    # turn first), so a burst of other work on the machine lands on both sides alike rather than
    # on whichever was timed during it.
    latencies: dict[str, list[float]] = {name: [] for name in adapters}
    timed_tokens: dict[str, list[int]] = {name: [] for name in adapters}
    names = list(adapters)
    for i, prompt in enumerate(prompts[:latency_samples]):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            t0 = time.perf_counter()
            one = engine.generate([prompt], adapters[name], max_new_tokens, temperature)[0]
            latencies[name].append((time.perf_counter() - t0) * 1000)
            timed_tokens[name].append(len(one.token_ids))
    out: dict[str, Figures] = {}
    for name in adapters:
        correct, per_prompt, results = quality[name]
        total_s = sum(latencies[name]) / 1000
        out[name] = Figures(
            accuracy=statistics.fmean(correct),
            latency_ms=statistics.fmean(latencies[name]) if latencies[name] else 0.0,
            tokens_per_answer=statistics.fmean(len(r.token_ids) for r in results),
            tokens_per_s=sum(timed_tokens[name]) / total_s if total_s else 0.0,
            n=len(samples),
            per_prompt=per_prompt,
        )
    return out


def decide(
    candidate: Figures, incumbent: Figures, cfg: Any, gain: Gain | None = None
) -> tuple[Decision, Gain]:
    """Publish or not. ``gain``: the sequential gate's look that stopped it (``SequentialGate``);
    None: the fixed-size paired test at 95 % on all the prompts."""
    reasons = []
    gain = gain or paired_gain(candidate.per_prompt, incumbent.per_prompt)
    if gain.lower <= cfg.min_quality_gain:
        reasons.append(
            f"quality: accuracy {candidate.accuracy:.3f} vs incumbent {incumbent.accuracy:.3f}, gain {gain}: "
            f"lower bound not above the required {cfg.min_quality_gain:+.3f}"
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
            f"accuracy {incumbent.accuracy:.3f} -> {candidate.accuracy:.3f}, gain {gain}, "
            f"latency {latency_ratio:.2f}x, tokens/answer {cost_ratio:.2f}x: within budgets"
        )
        return Decision(True, reasons), gain
    return Decision(False, reasons), gain
