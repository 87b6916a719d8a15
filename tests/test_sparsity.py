"""Weight sparsity (exact counts, minimum fan, which tensors) and the L0 / LR schedules."""

from __future__ import annotations

import math

import pytest
import torch

from sparsecircuits.model.config import ModelConfig
from sparsecircuits.model.gpt import GPT
from sparsecircuits.train.schedules import l0_fraction, lr_multiplier, quirk_fraction, sharkfin_lr
from sparsecircuits.train.sparsity import (
    WeightSparsifier,
    is_sparsified,
    kept_count,
    param_group,
    sparse_tensors,
    topk_mask,
)

SMALL = dict(vocab_size=64, n_layer=2, d_model=16, n_head=2, d_head=8, d_mlp=64, n_ctx=16, afrac=0.5)


def small_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(**{**SMALL, **kw}))


def perturb(model: GPT) -> None:
    """Give every parameter (biases too) distinct nonzero values, as after a few optimizer steps."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)


def fan_counts(name: str, w: torch.Tensor) -> torch.Tensor | None:
    """Nonzeros per neuron/channel of a min-fan matrix (rows of c_attn/c_fc, columns of c_proj)."""
    nz = w != 0
    if name.endswith(("attn.c_attn.weight", "mlp.c_fc.weight")):
        return nz.sum(1)
    if name.endswith(("attn.c_proj.weight", "mlp.c_proj.weight")):
        return nz.sum(0)
    return None


# ---- which tensors -------------------------------------------------------------------------------


def test_sparsified_and_dense_parameters():
    model = small_gpt(sink=True, bigram_table=True, pos_emb="concat", d_pos_emb=4, final_logits_bias=True)
    sparse = {t.name for t in sparse_tensors(model)}
    names = {n for n, _ in model.named_parameters()}
    dense = names - sparse
    for n in dense:
        assert any(s in n for s in ("ln_", "wpe", "sink_logit", "bigram_table")), n
    for must in (
        "transformer.wte.weight",
        "lm_head.weight",
        "final_logits_bias",
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.0.attn.c_attn.bias",
        "transformer.h.1.mlp.c_proj.bias",
    ):
        assert must in sparse
    assert {
        "transformer.wpe.weight",
        "bigram_table",
        "transformer.ln_f.weight",
        "transformer.h.0.attn.attn_imp.sink_logit",
        "transformer.h.0.ln_p1.weight",
    } <= dense
    assert param_group("transformer.wte.weight") == "quirk" and param_group("lm_head.weight") == "quirk"
    assert param_group("transformer.h.0.mlp.c_fc.bias") == "quirk"
    assert param_group("transformer.h.0.mlp.c_fc.weight") == "main"
    with pytest.raises(ValueError):
        is_sparsified("transformer.h.0.mystery")


# ---- exact counts ------------------------------------------------------------------------------


def test_kept_count_rounding():
    assert kept_count(0.25, 10) == 3  # 2.5 rounds half up
    assert kept_count(1e-9, 1000) == 1  # at least one
    assert kept_count(1.0, 7) == 7


@pytest.mark.parametrize("k", [1, 5, 50, 51, 99])
def test_topk_mask_exact_with_ties(k):
    w = torch.zeros(10, 10)
    w[0, :3] = 1.0  # a few distinct values, everything else tied at zero
    mask = topk_mask(w, k)
    assert int(mask.sum()) == k
    if k >= 3:
        assert mask[0, :3].all()


def test_topk_mask_keeps_largest():
    w = torch.randn(32, 16)
    mask = topk_mask(w, 40)
    kept, dropped = w.abs()[mask], w.abs()[~mask]
    assert kept.min() >= dropped.max()


@pytest.mark.parametrize("frac", [0.9, 0.5, 0.25, 0.1, 0.02])
def test_every_tensor_exact_count_and_min_fan(frac):
    model = small_gpt()
    perturb(model)
    sp = WeightSparsifier(model, min_fan=4)
    sp.apply(frac)
    for t in sp.tensors:
        w = t.param.detach()
        k = kept_count(frac, w.numel())
        assert int(torch.count_nonzero(w)) == k, t.name
        counts = fan_counts(t.name, w)
        if counts is not None:
            units = counts.numel()
            fan_len = w.shape[1] if t.name.endswith(("c_attn.weight", "c_fc.weight")) else w.shape[0]
            j = min(4, fan_len, k // units)
            assert int(counts.min()) >= j, (t.name, frac)


def test_min_fan_protects_each_neurons_largest_weights():
    torch.manual_seed(1)
    w = torch.randn(8, 32)
    w[0] *= 1e-3  # a neuron whose weights are all tiny: global top-k alone would kill it
    mask = topk_mask(w, 64, min_fan=4, fan_dim=1)
    assert int(mask.sum()) == 64
    assert int(mask[0].sum()) == 4
    top4 = w[0].abs().topk(4).indices
    assert mask[0, top4].all()
    assert int(topk_mask(w, 64, min_fan=0, fan_dim=1)[0].sum()) == 0


def test_min_fan_column_orientation_and_small_budget():
    torch.manual_seed(2)
    w = torch.randn(32, 8)  # c_proj-like: neurons are columns
    w[:, 3] *= 1e-3
    assert int(topk_mask(w, 40, min_fan=4, fan_dim=0)[:, 3].sum()) == 4
    # Budget 20 < 4 * 8 protected: j shrinks to 20 // 8 = 2 per neuron and the count stays exact.
    mask = topk_mask(w, 20, min_fan=4, fan_dim=0)
    assert int(mask.sum()) == 20 and int(mask.sum(0).min()) == 2
    # Budget below the number of neurons: plain top-k.
    mask = topk_mask(w, 5, min_fan=4, fan_dim=0)
    assert torch.equal(mask, topk_mask(w, 5))


def test_paper_quirk_groups_get_their_own_fraction():
    model = small_gpt()
    perturb(model)
    sp = WeightSparsifier(model)
    sp.apply(0.25, quirk_frac=1.0)
    for t in sp.tensors:
        nz = int(torch.count_nonzero(t.param))
        assert nz == (t.param.numel() if t.group == "quirk" else kept_count(0.25, t.param.numel())), t.name


def test_zeroed_weights_can_come_back():
    """Gradients and Adam moments stay dense, so the mask is recomputed from scratch every step."""
    model = small_gpt()
    perturb(model)
    sp = WeightSparsifier(model)
    sp.apply(0.25)
    w = model.transformer.h[0].mlp.c_fc.weight
    zero = (w == 0).nonzero()[0]
    with torch.no_grad():
        w[tuple(zero)] = 10.0
    sp.apply(0.25)
    assert w[tuple(zero)] == 10.0


# ---- schedules ------------------------------------------------------------------------------------


def test_l0_schedule_at_chosen_steps():
    steps, target = 1000, 0.01
    assert l0_fraction(-1, steps, target, 0.5) == 1.0  # before training: dense
    assert l0_fraction(0, steps, target, 0.5) == pytest.approx(1 - 0.99 * 1 / 500)
    assert l0_fraction(249, steps, target, 0.5) == pytest.approx(1 - 0.99 * 0.5)
    assert l0_fraction(499, steps, target, 0.5) == pytest.approx(target)
    assert l0_fraction(999, steps, target, 0.5) == target
    assert l0_fraction(10, steps, target, 0.0) == target  # no annealing
    assert l0_fraction(10, steps, 1.0, 0.5) == 1.0  # dense run


def test_lr_multiplier_warmup_then_linear_decay():
    steps = 1000  # warmup 1% = 10 steps
    assert lr_multiplier(0, steps, 0.01) == pytest.approx(0.1)
    assert lr_multiplier(9, steps, 0.01) == pytest.approx(1.0)
    assert lr_multiplier(10, steps, 0.01) == pytest.approx(1.0)
    assert lr_multiplier(505, steps, 0.01) == pytest.approx(0.5)
    assert lr_multiplier(999, steps, 0.01) == pytest.approx(1 / 990)


def test_sharkfin_matches_fig11():
    steps, target, lr = 1000, 0.001, 0.1
    peak = max(range(steps), key=lambda s: sharkfin_lr(s, steps, lr, target, 0.5, 0.01))
    assert peak == 499  # peaks where annealing ends (50% progress)...
    assert sharkfin_lr(499, steps, lr, target, 0.5, 0.01) / lr == pytest.approx(501 / 990)  # ...at ~0.5
    # Early on the 1/sqrt(L0) factor is ~sqrt(target): the LR rises slowly.
    assert sharkfin_lr(9, steps, lr, target, 0.5, 0.01) / lr == pytest.approx(
        math.sqrt(target / (1 - 0.999 * 10 / 500))
    )
    assert sharkfin_lr(999, steps, lr, target, 0.5, 0.01) == pytest.approx(lr / 990)
    # Dense: plain warmup + decay.
    assert sharkfin_lr(300, steps, lr, 1.0, 0.5, 0.01) == pytest.approx(lr * lr_multiplier(300, steps, 0.01))


def test_quirk_schedule():
    steps, target = 100, 0.1
    assert quirk_fraction(49, steps, target, 0.5, 4) == 1.0
    assert quirk_fraction(50, steps, target, 0.5, 4) == pytest.approx(1 - 0.9 / 4)
    assert quirk_fraction(53, steps, target, 0.5, 4) == pytest.approx(target)
    assert quirk_fraction(90, steps, target, 0.5, 4) == target
