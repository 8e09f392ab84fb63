"""The grouped CPU LoRA ops compute what vLLM's own torch ops compute, except for rows without an adapter."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
stock = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")

from infra import lora_cpu  # noqa: E402

SLOTS, RANK, HIDDEN = 4, 16, 96


@pytest.fixture
def weights() -> tuple[object, object]:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(SLOTS, 1, RANK, HIDDEN, generator=g)  # shrink: hidden -> rank
    b = torch.randn(SLOTS, 1, HIDDEN, RANK, generator=g)  # expand: rank -> hidden
    return a, b


@pytest.mark.parametrize(
    "indices",
    [[0] * 40, [2] * 40, [0, 1, 2, 3] * 10, [3, 3, 1, 1, 0] * 8, [1], [0, 3, 1] * 30],
    ids=["one adapter", "another slot", "four interleaved", "runs", "one token", "a prefill of three"],
)
def test_grouped_ops_equal_the_stock_ops_for_rows_with_an_adapter(
    weights: tuple[object, object], indices: list[int]
) -> None:
    a, b = weights
    idx = torch.tensor(indices)
    x = torch.randn(len(indices), HIDDEN)
    ys = [torch.zeros(len(indices), RANK) for _ in range(2)]
    stock.bgmv_shrink(x, a, ys[0], idx, 0.5)
    lora_cpu.bgmv_shrink(x, a, ys[1], idx, 0.5)
    torch.testing.assert_close(ys[1], ys[0])
    for expand in ("bgmv_expand", "bgmv_expand_slice"):
        base = torch.randn(len(indices), HIDDEN + 8)
        outs = [base.clone(), base.clone()]
        for module, out in zip((stock, lora_cpu), outs, strict=True):
            fn = getattr(module, expand)
            if expand == "bgmv_expand":
                fn(ys[0], b, out, idx, True)
            else:
                fn(ys[0], b, out, idx, 4, HIDDEN, True)
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-4)
        assert not torch.equal(outs[1], base)  # the delta was applied


def test_rows_without_an_adapter_get_no_delta_where_the_stock_ops_apply_the_last_slot(
    weights: tuple[object, object],
) -> None:
    a, _ = weights
    idx = torch.tensor([0, -1, 0, -1])
    x = torch.randn(4, HIDDEN)
    ours, theirs = torch.zeros(4, RANK), torch.zeros(4, RANK)
    lora_cpu.bgmv_shrink(x, a, ours, idx, 1.0)
    stock.bgmv_shrink(x, a, theirs, idx, 1.0)
    assert torch.count_nonzero(ours[1::2]) == 0  # base-model rows: no LoRA, as vLLM documents -1
    torch.testing.assert_close(theirs[1::2], x[1::2] @ a[SLOTS - 1, 0].T)  # stock: the last slot's adapter
    torch.testing.assert_close(ours[0::2], theirs[0::2])
    many = torch.tensor([2, -1, 2] * 30)  # past the gather size: one GEMM per slot
    xs = torch.randn(90, HIDDEN)
    got = torch.zeros(90, RANK)
    lora_cpu.bgmv_shrink(xs, a, got, many, 1.0)
    assert torch.count_nonzero(got[1::3]) == 0
    torch.testing.assert_close(got[0::3], xs[0::3] @ a[2, 0].T)
    only_base = torch.zeros(2, RANK)
    lora_cpu.bgmv_shrink(x[:2], a, only_base, torch.tensor([-1, -1]), 1.0)
    assert torch.count_nonzero(only_base) == 0


def test_install_replaces_the_ops_vllm_cpu_calls_and_can_be_turned_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vllm.lora.punica_wrapper import punica_cpu

    monkeypatch.setenv("RFTLOOP_VLLM_GROUPED_LORA", "false")
    assert lora_cpu.install() is False
    monkeypatch.setenv("RFTLOOP_VLLM_GROUPED_LORA", "true")
    for module in (stock, punica_cpu):
        for name in lora_cpu.OPS:
            monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    wrapper = punica_cpu.PunicaWrapperCPU
    for name in ("add_lora_linear", "update_metadata"):
        monkeypatch.setattr(wrapper, name, getattr(wrapper, name))
        monkeypatch.setattr(lora_cpu, f"_stock_{name}", getattr(lora_cpu, f"_stock_{name}"))
    monkeypatch.setattr(lora_cpu, "_installed", False)
    stock_linear = wrapper.add_lora_linear
    assert lora_cpu.install() is True
    assert wrapper.add_lora_linear is lora_cpu.add_lora_linear  # one adapter: a layer in two GEMMs
    assert wrapper.update_metadata is lora_cpu.update_metadata  # the batch's slot, once per mapping
    assert lora_cpu._stock_add_lora_linear is stock_linear  # mixed batches: vLLM's path
    assert punica_cpu.bgmv_shrink is lora_cpu.bgmv_shrink
    assert punica_cpu.sgmv_expand_slice is lora_cpu.sgmv_expand_slice  # prefill
    assert stock.bgmv_expand_slice is lora_cpu.bgmv_expand_slice


def test_prefill_ops_equal_the_stock_ops_for_one_shared_adapter_and_for_mixed_sequences(
    weights: tuple[object, object],
) -> None:
    a, b = weights
    seq_lens = torch.tensor([5, 3, 7])
    starts = torch.tensor([0, 5, 8])
    x = torch.randn(15, HIDDEN)
    for per_seq in ([2, 2, 2], [0, 3, 1]):
        idx = torch.tensor(per_seq)
        meta = (starts, seq_lens, idx, 3, 7, 15)
        ys = [torch.zeros(15, RANK) for _ in range(2)]
        for module, y in zip((stock, lora_cpu), ys, strict=True):
            module.sgmv_shrink(x, a, y, *meta, 0.25)
        torch.testing.assert_close(ys[1], ys[0])
        base = torch.randn(15, HIDDEN)
        outs = [base.clone(), base.clone()]
        for module, out in zip((stock, lora_cpu), outs, strict=True):
            module.sgmv_expand_slice(ys[0], b, out, *meta, 0, HIDDEN, True)
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-4)


def test_an_all_zero_slot_adds_nothing_until_an_adapter_is_written_into_it(
    weights: tuple[object, object],
) -> None:
    _, b = weights
    b = b.clone()
    b[1].zero_()  # slot 1: a module this adapter does not target
    buffer = torch.zeros(64, dtype=torch.long)
    idx = buffer[:8]  # a view of a persistent buffer, as vLLM passes them
    buffer[:8] = 1
    y = torch.randn(8, RANK)
    out = torch.ones(8, HIDDEN)
    lora_cpu.bgmv_expand_slice(y, b, out, buffer[:8], 0, HIDDEN, True)
    assert torch.equal(out, torch.ones(8, HIDDEN))
    b[1].copy_(torch.randn(HIDDEN, RANK).unsqueeze(0))  # vLLM loads an adapter into the slot
    lora_cpu.bgmv_expand_slice(y, b, out, idx, 0, HIDDEN, True)
    torch.testing.assert_close(out, 1 + y @ b[1, 0].T)
    buffer[:8] = 0  # the next step's tokens use another slot: the index memo sees the write
    expected = out + y @ b[0, 0].T
    lora_cpu.bgmv_expand_slice(y, b, out, buffer[:8], 0, HIDDEN, True)
    torch.testing.assert_close(out, expected)


def test_prefill_ops_over_vllms_persistent_buffers_follow_each_steps_rewrite_in_inference_mode(
    weights: tuple[object, object],
) -> None:
    """vLLM slices its index buffers anew per call and rewrites them in place each step, under
    torch.inference_mode; the memoized per-token expansion and its groups must follow every rewrite."""
    a, _ = weights
    per_seq_buf, lens_buf = torch.zeros(8, dtype=torch.long), torch.zeros(8, dtype=torch.long)
    starts = torch.tensor([0, 5, 8])
    x = torch.randn(15, HIDDEN)
    with torch.inference_mode():
        for step in ([0, 3, 1], [3, 0, -1], [1, -1, 1], [0, 3, 1]):  # mixed slots; -1: base rows
            per_seq_buf[:3] = torch.tensor(step)
            lens_buf[:3] = torch.tensor([5, 3, 7] if step != [3, 0, -1] else [2, 6, 7])
            for _ in range(3):  # several layers' calls within one step
                meta = (starts, lens_buf[:3], per_seq_buf[:3], 3, 7, 15)
                ours, expected = torch.zeros(15, RANK), torch.zeros(15, RANK)
                lora_cpu.sgmv_shrink(x, a, ours, *meta, 0.5)
                rows = torch.repeat_interleave(per_seq_buf[:3], lens_buf[:3])
                for t, s in enumerate(rows.tolist()):
                    if s >= 0:
                        expected[t] = 0.5 * x[t] @ a[s, 0].T
                torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_a_layer_on_one_adapter_is_two_gemms_equal_to_vllms_own_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused add_lora_linear (all of a layer's slices, e.g. q/k/v, in two GEMMs) adds what vLLM's
    own PunicaWrapperCPU.add_lora_linear adds, in prefill and decode, follows an adapter written into
    its slot in place, and hands mixed batches to vLLM's path."""
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    monkeypatch.setattr(lora_cpu, "_stock_add_lora_linear", PunicaWrapperCPU.add_lora_linear)
    g = torch.Generator().manual_seed(1)
    slices = (HIDDEN, 32, 32)  # q, k, v of a fused projection
    a = tuple(torch.randn(SLOTS, 1, RANK, HIDDEN, generator=g) for _ in slices)
    b = tuple(torch.randn(SLOTS, 1, n, RANK, generator=g) for n in slices)
    x = torch.randn(12, HIDDEN, generator=g)
    w = PunicaWrapperCPU(64, 8, "cpu")

    def both(tokens: list[int], prefill: bool) -> tuple[object, object]:
        idx = torch.tensor(tokens)
        w._update_prefill_metadata(idx)
        w._token_lora_indices[: len(tokens)] = idx
        w.indices_len[0] = len(tokens)
        w.is_prefill = prefill
        y = torch.randn(len(tokens), sum(slices), generator=g)
        ours, theirs = y.clone(), y.clone()
        lora_cpu.add_lora_linear(w, ours, x[: len(tokens)], a, b, 0.5, slices)
        if all(t < 0 for t in tokens):  # no adapter: vLLM's decode path applies the last slot here
            assert torch.equal(ours, y)
            return ours, ours
        PunicaWrapperCPU.add_lora_linear(w, theirs, x[: len(tokens)], a, b, 0.5, slices)
        assert torch.equal(theirs, y) == (tokens[0] == 3 and not b[0][3].any())  # a delta, but for a zero slot
        return ours, theirs

    for tokens in ([2] * 12, [1], [0] * 5 + [3] * 7, [-1] * 12):
        for prefill in (True, False):
            ours, theirs = both(tokens, prefill)
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    b[1][2].mul_(3)  # a new adapter written into slot 2 in place
    ours, theirs = both([2] * 12, True)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    for t in (*a, *b):
        t[3].zero_()  # an all-zero slot adds nothing
    ours, theirs = both([3] * 4, True)
    torch.testing.assert_close(ours, theirs)


def test_the_batchs_slot_is_worked_out_once_per_mapping_and_follows_every_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through vLLM's own update_metadata (LoRA ids -> slots): the fused layer uses the slot of the
    mapping in force, a base-only batch gets nothing, a mixed one vLLM's path."""
    from vllm.lora.layers.utils import LoRAMapping
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    monkeypatch.setattr(lora_cpu, "_stock_add_lora_linear", PunicaWrapperCPU.add_lora_linear)
    monkeypatch.setattr(lora_cpu, "_stock_update_metadata", PunicaWrapperCPU.update_metadata)
    g = torch.Generator().manual_seed(2)
    slices = (HIDDEN, 32, 32)
    a = tuple(torch.randn(SLOTS, 1, RANK, HIDDEN, generator=g) for _ in slices)
    b = tuple(torch.randn(SLOTS, 1, n, RANK, generator=g) for n in slices)
    x = torch.randn(6, HIDDEN, generator=g)
    w = PunicaWrapperCPU(64, 8, "cpu")
    ids = [None, 7, 9, None]  # LoRA id 7 in slot 1, 9 in slot 2
    for tokens, slot in (((7,) * 6, 1), ((9,) * 6, 2), ((0,) * 6, -1), ((7, 7, 9, 9, 0, 0), None)):
        for prefill in (True, False):
            lora_cpu.update_metadata(w, LoRAMapping(tokens, tokens, is_prefill=prefill), ids, SLOTS, 32000)
            assert w._rftloop_slot == slot
            y = torch.randn(6, sum(slices), generator=g)
            ours, theirs = y.clone(), y.clone()
            lora_cpu.add_lora_linear(w, ours, x, a, b, 0.5, slices)
            if slot == -1:
                assert torch.equal(ours, y)  # base requests only: no LoRA
                continue
            PunicaWrapperCPU.add_lora_linear(w, theirs, x, a, b, 0.5, slices)
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
            assert not torch.equal(ours, y)
