"""Resuming pruning forwards after a recorded prefix (circuits/prefix.py): the scores are bit-identical to
full forwards, for every node location, under closed edges, and through the clean-up."""

from __future__ import annotations

import pytest
import torch

from sparsecircuits.circuits.cleanup import clean_up
from sparsecircuits.circuits.edge_masks import EdgeMask
from sparsecircuits.circuits.masks import NodeMask
from sparsecircuits.circuits.prefix import record_prefix, resume_points
from sparsecircuits.circuits.prune import Evaluator, WithClosedEdges, removal_effects_of
from sparsecircuits.circuits.scoring import PromptSet, gated_diff
from sparsecircuits.model import GPT, ModelConfig

CONFIGS = {
    "three layers, added positions": dict(n_layer=3, pos_emb="add"),
    "two layers, concatenated positions, bigram table": dict(
        n_layer=2, pos_emb="concat", d_pos_emb=4, bigram_table=True, afrac=0.5
    ),
}


def tiny(seed: int = 0, **options) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=32, d_model=16, n_head=2, d_head=8, d_mlp=64, n_ctx=16, **options)
    model = GPT(ModelConfig(**cfg)).eval()
    for p in model.parameters():  # random biases and tables too, so nothing is trivially zero
        p.data.normal_(0, 0.3)
    return model.requires_grad_(False)


def random_prompts(n: int = 70, T: int = 16, vocab: int = 32) -> PromptSet:
    last = torch.randint(1, T, (n,))
    sign = torch.tensor([1.0, -1.0] * (n // 2))
    return PromptSet(
        torch.randint(0, vocab, (n, T)),
        last,
        torch.randint(0, vocab, (n,)),
        torch.randint(0, vocab, (n,)),
        sign,
    )


def mean_mask(model: GPT) -> NodeMask:
    widths = {loc: model.location_width(loc) for loc in model.node_locations()}
    return NodeMask(widths, {loc: torch.randn(w) for loc, w in widths.items()})


def recorded(name: str):
    """A tiny model of CONFIGS[name], a mean mask, prompts, a random circuit and its recorded prefix."""
    model = tiny(**CONFIGS[name])
    mask, prompts = mean_mask(model), random_prompts()
    base = (torch.rand(mask.n_nodes) < 0.5).float()
    with torch.no_grad():
        prefix = record_prefix(model, mask, base, prompts)
    return model, mask, prompts, base, prefix


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_resumed_forward_equals_the_full_one_at_every_location(name):
    model, mask, prompts, base, prefix = recorded(name)
    last = model.cfg.n_layer - 1
    for loc, piece in mask.split(torch.arange(mask.n_nodes)).items():
        for node in piece[[0, -1]].tolist():
            gates = base.clone()
            gates[node] = 1.0 - gates[node]
            layer, _, rest = loc.partition(".")
            expected = None
            if int(layer) > 0 or rest.startswith("mlp"):
                half = "resid_mid" if rest.startswith("mlp") and int(layer) < last else "resid_in"
                expected = f"{layer}.{half}"
            assert prefix.resume(gates) == expected, loc
            with torch.no_grad():
                resumed = gated_diff(model, mask, gates, prompts, prefix=prefix)
                full = gated_diff(model, mask, gates, prompts)
            assert torch.equal(resumed, full), (loc, (resumed - full).abs().max())


def test_resume_points_and_their_errors():
    model = tiny(n_layer=3)
    assert resume_points(model) == ["0.resid_mid", "1.resid_in", "1.resid_mid", "2.resid_in"]
    assert record_prefix(tiny(n_layer=1), mean_mask(tiny(n_layer=1)), torch.ones(1), random_prompts()) is None
    with pytest.raises(ValueError, match="resumes at"):
        model(torch.zeros(1, 4, dtype=torch.long), resume=("1.attn.q", torch.zeros(1, 4, 16)))
    mask, prompts = mean_mask(model), random_prompts()
    with torch.no_grad():
        prefix = record_prefix(model, mask, torch.ones(mask.n_nodes), prompts)
    with pytest.raises(ValueError, match="recorded on"):
        gated_diff(model, mask, torch.ones(mask.n_nodes), random_prompts(), prefix=prefix)


def test_clean_up_and_effects_are_the_same_with_and_without_resuming():
    model = tiny(n_layer=2, pos_emb="concat", d_pos_emb=4, afrac=0.5)
    mask, prompts = mean_mask(model), random_prompts(96)
    evaluate = Evaluator(model, mask, prompts, calibrated=True)
    gates = torch.zeros(mask.n_nodes)
    gates[torch.randperm(mask.n_nodes)[:24]] = 1.0
    # a target that some single removals meet and others miss, so the clean-up removes some nodes
    losses = sorted(
        evaluate(g).loss
        for g in [gates - torch.eye(mask.n_nodes)[i] for i in gates.nonzero().flatten().tolist()]
    )
    target = max(losses[len(losses) // 2], evaluate(gates).loss)
    plain = clean_up(evaluate, gates, target, progress=False)
    resumed = clean_up(evaluate, gates, target, progress=False, rebase=evaluate.rebase)
    evaluate.rebase(None)
    assert 0 < plain.nodes_after < 24
    assert torch.equal(plain.gates, resumed.gates) and plain.effects == resumed.effects
    assert plain.passes == resumed.passes

    # the per-node effects with closed edges: recorded under the edge hooks, equal to full forwards
    edges = EdgeMask(model, mask, plain.gates)
    edge_gates = (torch.rand(edges.n_edges) < 0.5).float()
    final = WithClosedEdges(evaluate, edges, edge_gates)
    effects = removal_effects_of(final, plain.gates, {})
    assert final.prefix is None  # forgotten afterwards: the edge stage scores under other hooks
    for i, loss in effects.items():
        g = plain.gates.clone()
        g[i] = 0.0
        assert final(g).loss == loss


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_prefix_recorded_from_another_equals_one_recorded_afresh(name):
    model, mask, prompts, base_gates, base = recorded(name)
    with torch.no_grad():
        for loc, piece in mask.split(torch.arange(mask.n_nodes)).items():
            gates = base_gates.clone()
            gates[piece[0]] = 1.0 - gates[piece[0]]
            fresh = record_prefix(model, mask, gates, prompts)
            derived = record_prefix(model, mask, gates, prompts, base)
            for a, b in zip(fresh.resid, derived.resid):
                assert a.keys() == b.keys()
                assert all(torch.equal(a[p], b[p]) for p in a), loc
