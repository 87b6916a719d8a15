"""Linear layers specialised to the gates (circuits/folding.py). A discrete circuit's closed inputs folded into
the bias give the same scores as the plain products, the modules are restored afterwards, edge hooks still
apply, nothing is folded where gates are not a circuit; a location with every node ablated skips its AbsTopK,
same scores. Gates being trained: the backward over the output channels with a gradient gives the plain
gradients, and only frozen linears are swapped."""

from __future__ import annotations

import torch

from sparsecircuits.circuits.edge_masks import EdgeMask
from sparsecircuits.circuits.folding import (
    FOLDABLE,
    _FoldedLinear,
    _OpenOutputsLinear,
    circuit_linears,
    is_discrete,
)
from sparsecircuits.circuits.scoring import correct_minus_wrong, gated_diff
from sparsecircuits.model.abstopk import abstopk
from test_prefix import mean_mask, random_prompts, tiny


def setup(seed: int = 0):
    """A tiny two-layer model with concatenated positions, a mean mask with random means, 40 prompts."""
    model = tiny(seed, n_layer=2, pos_emb="concat", d_pos_emb=4, afrac=0.5)
    return model, mean_mask(model), random_prompts(40)


def plain_and_folded(model, mask, gates, prompts) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad(), model.hooks(mask.hooks(gates)):
        plain = correct_minus_wrong(model, prompts)
        with circuit_linears(model, mask, gates):
            folded = correct_minus_wrong(model, prompts)
    return plain, folded


def test_circuit_linears_scores_equal_plain_products():
    model, mask, prompts = setup()
    for keep in (0.0, 0.1, 0.5, 1.0):  # every input closed, a circuit, half, every input open
        gates = (torch.rand(mask.n_nodes) < keep).float()
        plain, folded = plain_and_folded(model, mask, gates, prompts)
        torch.testing.assert_close(folded, plain, rtol=1e-5, atol=1e-5)


def test_folding_swaps_the_linears_reading_a_gated_location_and_restores_them():
    model, mask, _ = setup()
    gates = torch.zeros(mask.n_nodes)
    gates[::7] = 1.0
    linears = [
        model.get_submodule(f"transformer.h.{layer}.{m.param.removesuffix('.weight')}")
        for layer in range(model.cfg.n_layer)
        for m in FOLDABLE
    ]
    assert {m.src for m in FOLDABLE} == {"attn.act_in", "mlp.act_in", "mlp.post_act"}
    with circuit_linears(model, mask, gates):
        assert all("forward" in vars(linear) for linear in linears)
    assert not any("forward" in vars(linear) for linear in linears)


def test_edge_hooks_act_on_folded_linears():
    """The edge stage's hooks sit on the same modules: closed edges give the same scores folded or not."""
    model, mask, prompts = setup(1)
    gates = (torch.rand(mask.n_nodes) < 0.4).float()
    edges = EdgeMask(model, mask, gates)
    edge_gates = (torch.rand(edges.n_edges) < 0.5).float()
    with edges.hooks(model, edge_gates):
        plain, folded = plain_and_folded(model, mask, gates, prompts)
    with torch.no_grad(), model.hooks(mask.hooks(gates)):
        all_open = correct_minus_wrong(model, prompts)
    assert not torch.allclose(plain, all_open)  # the closed edges matter here
    torch.testing.assert_close(folded, plain, rtol=1e-5, atol=1e-5)


def test_only_discrete_gates_without_gradient_fold():
    assert is_discrete(torch.tensor([0.0, 1.0, 1.0]))
    assert not is_discrete(torch.tensor([0.0, 0.5]))
    assert not is_discrete(torch.tensor([0.0, 1.0], requires_grad=True))
    model, mask, _ = setup()
    gates = torch.full((mask.n_nodes,), 0.5)
    with circuit_linears(model, mask, gates):
        assert not any("forward" in vars(m) for m in model.modules())


def test_a_location_with_every_node_ablated_skips_its_abstopk(monkeypatch):
    """The gate hook of a fully ablated location declares its constant; the forward returns it without the
    AbsTopK. Same scores as running that AbsTopK and the hook (forced by a second, reading hook there)."""
    import sparsecircuits.model.gpt as gpt

    model, mask, prompts = setup(2)
    pieces = mask.split(torch.arange(mask.n_nodes))
    gates = (torch.rand(mask.n_nodes) < 0.5).float()
    closed = ["0.mlp.post_act", "1.attn.q", "1.attn.resid_delta"]
    for loc in closed:
        gates[pieces[loc]] = 0.0
    calls: list[int] = []
    monkeypatch.setattr(gpt, "abstopk", lambda x, k: calls.append(x.shape[-1]) or abstopk(x, k))
    with torch.no_grad(), model.hooks(mask.hooks(gates)):
        skipped = correct_minus_wrong(model, prompts)
        n_skipped = len(calls)
        with model.hooks({loc: lambda x: None for loc in closed}):  # two hooks there: no shortcut
            full = correct_minus_wrong(model, prompts)
    assert len(calls) - n_skipped == n_skipped + len(closed)
    assert torch.equal(skipped, full)
    trained = torch.full((mask.n_nodes,), 0.0, requires_grad=True)  # gates being learned: never constant
    assert all(fn.constant is None for fn in mask.hooks(trained).values())


def test_gate_training_linears_give_the_full_input_gradient():
    """Both linears used while gates train: the plain output (open-outputs) or the folded one, and in the
    backward grad @ W over every input column, whichever output channels carry a gradient."""
    torch.manual_seed(0)
    w, b, mu = torch.randn(6, 8), torch.randn(6), torch.randn(8)
    g = (torch.arange(8) % 3 == 0).float()
    open_ = g.nonzero()[:, 0]
    const = w @ ((1 - g) * mu) + b
    for live in ([], [1, 4], [0, 1, 2, 3, 4, 5]):  # no gradient, a few output channels, all of them
        x = (g * torch.randn(5, 3, 8) + (1 - g) * mu).requires_grad_()  # a gated input: mu where closed
        grad = torch.zeros(5, 3, 6)
        grad[..., live] = torch.randn(5, 3, len(live))
        plain = _OpenOutputsLinear.apply(x, w, b)
        folded = _FoldedLinear.apply(x, w, w[:, open_].T, open_, const)
        assert torch.equal(plain, torch.nn.functional.linear(x, w, b))
        torch.testing.assert_close(folded, plain, rtol=1e-5, atol=1e-5)
        for y in (plain, folded):
            (dx,) = torch.autograd.grad(y, x, grad)
            torch.testing.assert_close(dx, grad @ w, rtol=1e-6, atol=1e-6)


def test_gate_gradients_through_specialised_linears_equal_plain_ones():
    """Mask training's gradient with respect to tau (gated_diff swaps the linears while gates carry one)."""
    model, mask, prompts = setup(3)
    model.requires_grad_(False)
    for keep in (0.05, 0.5, 1.0):
        with torch.no_grad():
            mask.tau.copy_(torch.where(torch.rand(mask.n_nodes) < keep, 0.5, -0.5))
        grads, diffs = [], []
        for swapped in (True, False):
            gates = mask.gates()
            if swapped:
                d = gated_diff(model, mask, gates, prompts)
            else:
                with model.hooks(mask.hooks(gates)):
                    d = correct_minus_wrong(model, prompts)
            diffs.append(d.detach())
            grads.append(torch.autograd.grad(d.square().mean(), mask.tau)[0])
        assert grads[1].abs().sum() > 0
        torch.testing.assert_close(diffs[0], diffs[1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_while_gates_train_only_frozen_linears_are_swapped_and_restored():
    model, mask, _ = setup()
    model.requires_grad_(False)
    trained_here = model.transformer.h[0].mlp.c_fc
    trained_here.requires_grad_(True)
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    gates = torch.zeros(mask.n_nodes)
    gates[::5] = 1.0
    with circuit_linears(model, mask, gates.requires_grad_()):
        swapped = {m for m in linears if "forward" in vars(m)}
    assert swapped == set(linears) - {trained_here}
    assert not any("forward" in vars(m) for m in linears)
