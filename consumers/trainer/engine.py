"""The trainer's one vLLM engine: GRPO rollouts, the choice of rollout temperature, and the gate.

A run starts one in-process ``vllm.LLM`` with LoRA enabled and uses it for everything that
generates: the gate (``consumers.trainer.gate``), the screening of prompts before GRPO and the
GRPO rollouts themselves (``consumers.trainer.grpo``). Policy weights reach it as LoRA adapters:
the trainer saves its adapter and the engine loads it under a new LoRA id — the same path a
gateway uses to hot-load a published version. TRL's own ``use_vllm`` colocate mode cannot be used
on vLLM-CPU: it copies the policy's merged weights into the engine with ``load_weights``, but the
CPU backend repacks every linear layer's weight after loading and removes the parameter
(``dispatch_cpu_unquantized_gemm(remove_weight=True)``; TRL fails with ``'Parameter' object has
no attribute 'weight_loader'``). Loading the adapter works the same on CPU and GPU.

Answers to one prompt are separate requests (the prompt repeated), not ``n > 1``: vLLM-CPU 0.32
can kill its engine on ``n > 1`` with a seed.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any, Protocol, cast

from consumers.trainer.data import Sample, chat
from infra import lora_cpu


@dataclass(frozen=True)
class Answer:
    text: str
    prompt_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]  # the sampled tokens' log-probabilities (as the engine sampled them)


def render_prompt(tokenizer: Any, sample: Sample | list[dict[str, str]]) -> str:
    """The base model's chat template applied to a sample's messages (as the gateway applies it)."""
    messages = chat(sample) if isinstance(sample, Sample) else sample
    return cast(
        str, tokenizer.apply_chat_template(cast(Any, messages), tokenize=False, add_generation_prompt=True)
    )


class Generates(Protocol):
    """What the gate and GRPO need of an engine: this module's ``Engine`` (the run's own) or
    ``consumers.trainer.gateway_engine.GatewayEngine`` (a serving gateway's, shadow versions)."""

    def prompt(self, sample: Sample | list[dict[str, str]]) -> str: ...

    def generate(
        self,
        prompts: list[str],
        adapter: str | None,
        max_tokens: int,
        temperature: float,
        *,
        fresh: bool = False,
    ) -> list[Answer]: ...

    def close(self) -> None: ...


class Engine:
    """One vLLM engine for a training run (``max_lora_rank`` = the gateways', so nothing passes the
    gate that a gateway refuses)."""

    def __init__(
        self,
        base_path: str,
        max_lora_rank: int = 16,
        max_model_len: int = 1024,
        lora_targets: list[str] | None = None,
    ) -> None:
        """``lora_targets``: the modules LoRA is applied to (the gateways'; None: all vLLM supports)."""
        # The engine core in this process, not a child: a trainer killed mid-run (kill -9, OOM)
        # leaves no orphaned engine behind holding its memory and its parent's pipes.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{max(0, (os.cpu_count() or 1) - 1)}")
        import torch
        from vllm import LLM

        cpu = not torch.cuda.is_available()
        self.llm = LLM(
            model=base_path,
            dtype="float32" if cpu else "auto",
            enable_lora=True,
            max_lora_rank=cast(Any, max_lora_rank),  # vLLM types it as a Literal of sizes
            lora_target_modules=lora_targets or None,
            max_model_len=max_model_len,
            enforce_eager=cpu,
            gpu_memory_utilization=0.3,
            # grouped LoRA matmuls in the model's worker (infra/lora_cpu.py)
            worker_extension_cls=lora_cpu.worker_extension() if cpu else "",
        )
        self.tokenizer = self.llm.get_tokenizer()
        self._ids = itertools.count(1)
        self._loaded: dict[str, Any] = {}

    def prompt(self, sample: Sample | list[dict[str, str]]) -> str:
        return render_prompt(self.tokenizer, sample)

    def lora(self, path: str | None, fresh: bool = False) -> Any:
        """The LoRARequest for the adapter at ``path`` (None: the base model). ``fresh``: a new id even
        for a path seen before (its files changed: the policy being trained)."""
        from vllm.lora.request import LoRARequest

        if path is None:
            return None
        if fresh or path not in self._loaded:
            n = next(self._ids)
            self._loaded[path] = LoRARequest(f"adapter-{n}", n, path)
        return self._loaded[path]

    def generate(
        self,
        prompts: list[str],
        adapter: str | None,
        max_tokens: int,
        temperature: float,
        *,
        fresh: bool = False,
    ) -> list[Answer]:
        """One answer per prompt (repeat a prompt for several), in one batch."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, logprobs=0)
        outs = self.llm.generate(prompts, params, lora_request=self.lora(adapter, fresh), use_tqdm=False)
        answers = []
        for out in outs:
            o = out.outputs[0]
            steps: list[Any] = list(o.logprobs) if o.logprobs else [None] * len(o.token_ids)
            logprobs = [
                float(step[t].logprob) if step and t in step else 0.0
                for t, step in zip(o.token_ids, steps, strict=True)
            ]
            answers.append(Answer(o.text, list(out.prompt_token_ids or []), list(o.token_ids), logprobs))
        return answers

    def close(self) -> None:
        """Stop the engine (its core process) now rather than at garbage collection."""
        import gc

        core = getattr(self.llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del self.llm
        gc.collect()
