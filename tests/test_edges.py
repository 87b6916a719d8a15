"""Tests for sparsecircuits.circuits.nodes and .edges on hand-built weights and node sets."""

import json

import pytest
import torch

from sparsecircuits.circuits.edges import circuit_edges, count_edges
from sparsecircuits.circuits.nodes import (
    count_nodes,
    display_name,
    empty_nodes,
    full_nodes,
    names_to_nodes,
    node_locations,
    nodes_by_location,
    nodes_to_names,
)
from sparsecircuits.errors import UserError
from sparsecircuits.model import GPT, NODE_LOCATIONS, ModelConfig

MATRICES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def tiny_cfg(**kw) -> ModelConfig:
    """2 layers, d_model 8, 2 heads of 2 channels (d_attn 4), 8 neurons."""
    base = dict(vocab_size=16, n_layer=2, d_model=8, n_head=2, d_head=2, d_mlp=8, n_ctx=8, afrac=1.0)
    base.update(kw)
    return ModelConfig(**base).validate()


def zero_params(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """All-zero weight matrices with the real parameter names; tests set a few entries."""
    shapes = {
        "attn.c_attn.weight": (3 * cfg.d_attn, cfg.d_in),
        "attn.c_proj.weight": (cfg.d_model, cfg.d_attn),
        "mlp.c_fc.weight": (cfg.d_mlp, cfg.d_in),
        "mlp.c_proj.weight": (cfg.d_model, cfg.d_mlp),
    }
    return {
        f"transformer.h.{l}.{name}": torch.zeros(shape)
        for l in range(cfg.n_layer)
        for name, shape in shapes.items()
    }


def q_row(cfg: ModelConfig, c: int) -> int:
    return c


def k_row(cfg: ModelConfig, c: int) -> int:
    return cfg.d_attn + c


def v_row(cfg: ModelConfig, c: int) -> int:
    return 2 * cfg.d_attn + c


def edge_set(graph) -> set[tuple[str, str]]:
    return {(src, dst) for src, dst, _ in graph.edges}


# ---- nodes ------------------------------------------------------------------------------------------


def test_locations_and_full_empty():
    cfg = tiny_cfg()
    assert node_locations(cfg) == [f"{l}.{loc}" for l in range(2) for loc in NODE_LOCATIONS]
    assert count_nodes(empty_nodes(cfg)) == 0
    per_layer = 2 * cfg.d_in + 3 * cfg.d_attn + 2 * cfg.d_model + cfg.d_mlp
    assert count_nodes(full_nodes(cfg)) == cfg.n_layer * per_layer
    assert nodes_by_location(empty_nodes(cfg)) == {}
    assert nodes_by_location(full_nodes(cfg))["1.attn.q"] == cfg.d_attn


def test_names_round_trip_sorted_forward_order():
    cfg = tiny_cfg()
    names = [
        "1.mlp.post_act.3",
        "0.attn.v.1",
        "0.attn.act_in.7",
        "0.attn.act_in.2",
        "1.attn.q.0",
        "0.attn.q.3",
    ]
    nodes = names_to_nodes(names, cfg)
    expected = [
        "0.attn.act_in.2",
        "0.attn.act_in.7",
        "0.attn.q.3",
        "0.attn.v.1",
        "1.attn.q.0",
        "1.mlp.post_act.3",
    ]
    assert nodes_to_names(nodes) == expected
    assert nodes_to_names(names_to_nodes(expected, cfg)) == expected
    assert count_nodes(nodes) == 6
    assert nodes_by_location(nodes) == {
        "0.attn.act_in": 2,
        "0.attn.q": 1,
        "0.attn.v": 1,
        "1.attn.q": 1,
        "1.mlp.post_act": 1,
    }
    # A dict in any key order still lists names in forward order.
    shuffled = dict(reversed(list(nodes.items())))
    assert nodes_to_names(shuffled) == expected
    full = full_nodes(cfg)
    assert nodes_to_names(names_to_nodes(nodes_to_names(full), cfg)) == nodes_to_names(full)


def test_display_name_head_form():
    cfg = ModelConfig(n_layer=11, n_head=128, d_head=16)
    assert display_name("10.attn.v.1312", cfg) == "10.attn.v.head82.ch0"
    assert display_name("10.attn.q.17", cfg) == "10.attn.q.head1.ch1"
    assert display_name("10.attn.k.15", cfg) == "10.attn.k.head0.ch15"
    for name in ("0.mlp.post_act.460", "10.attn.resid_delta.83", "3.attn.act_in.5"):
        assert display_name(name, cfg) == name
    # The head form is accepted back and means the flat index.
    nodes = names_to_nodes(["10.attn.v.head82.ch0"], cfg)
    assert nodes_to_names(nodes) == ["10.attn.v.1312"]


@pytest.mark.parametrize(
    "name",
    [
        "0.attn.x.1",  # unknown location
        "2.attn.q.0",  # layer out of range
        "garbage",
        "0.attn.q",  # no index
        "0.attn.q.abc",  # bad index
        "0.attn.q.-1",
        "0.attn.q.4",  # d_attn 4
        "0.attn.act_in.8",  # d_in 8
        "0.mlp.post_act.8",  # d_mlp 8
        "0.attn.q.head2.ch0",  # n_head 2
        "0.attn.q.head0.ch2",  # d_head 2
        "0.mlp.post_act.head0.ch0",  # head form only for q/k/v
    ],
)
def test_bad_node_names_raise(name):
    with pytest.raises(UserError, match="node") as info:
        names_to_nodes(["0.attn.q.0", name], tiny_cfg())
    assert repr(name) in str(info.value) or name in str(info.value)


def test_bad_node_sets_raise():
    cfg = tiny_cfg()
    params = zero_params(cfg)
    with pytest.raises(UserError, match="unknown location"):
        count_edges(params, cfg, {"0.attn.z": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(UserError, match="shape"):
        circuit_edges(params, cfg, {"0.attn.q": torch.ones(3, dtype=torch.bool)})
    del params["transformer.h.1.mlp.c_fc.weight"]
    with pytest.raises(UserError, match="transformer.h.1.mlp.c_fc.weight"):
        count_edges(params, cfg, full_nodes(cfg))


# ---- edges ------------------------------------------------------------------------------------------


def test_footnote_example_one_neuron():
    """Paper fn 3: one neuron reading one channel and writing one channel is 3 nodes and 2 edges."""
    cfg = tiny_cfg()
    params = zero_params(cfg)
    params["transformer.h.0.mlp.c_fc.weight"][3, 1] = 0.5
    params["transformer.h.0.mlp.c_proj.weight"][5, 3] = -2.0
    nodes = names_to_nodes(["0.mlp.act_in.1", "0.mlp.post_act.3", "0.mlp.resid_delta.5"], cfg)
    graph = circuit_edges(params, cfg, nodes)
    assert graph.n_nodes == 3
    assert graph.edges == [
        ("0.mlp.act_in.1", "0.mlp.post_act.3", 0.5),
        ("0.mlp.post_act.3", "0.mlp.resid_delta.5", -2.0),
    ]
    assert graph.n_edges == count_edges(params, cfg, nodes) == 2
    assert graph.residual_links == [] and graph.qk_pairs == []
    assert (graph.embedding_channels, graph.unembedding_channels) == (1, 1)


def test_only_nonzero_weights_between_circuit_nodes():
    cfg = tiny_cfg()
    params = zero_params(cfg)
    c_fc = params["transformer.h.0.mlp.c_fc.weight"]
    c_fc[3, 1] = 1.0  # both ends in the circuit: an edge
    c_fc[4, 1] = 1.0  # neuron 4 not in the circuit
    c_fc[3, 2] = 1.0  # read 2 not in the circuit
    # read 6 -> neuron 3 stays zero although both are in the circuit
    nodes = names_to_nodes(["0.mlp.act_in.1", "0.mlp.act_in.6", "0.mlp.post_act.3"], cfg)
    graph = circuit_edges(params, cfg, nodes)
    assert edge_set(graph) == {("0.mlp.act_in.1", "0.mlp.post_act.3")}
    assert count_edges(params, cfg, nodes) == 1


def test_qkv_section_offsets():
    cfg = tiny_cfg()
    params = zero_params(cfg)
    c_attn = params["transformer.h.0.attn.c_attn.weight"]
    c_attn[q_row(cfg, 1), 0] = 1.0
    c_attn[k_row(cfg, 2), 0] = 2.0
    c_attn[v_row(cfg, 3), 0] = 3.0
    graph = circuit_edges(params, cfg, full_nodes(cfg))
    assert graph.edges == [
        ("0.attn.act_in.0", "0.attn.q.1", 1.0),
        ("0.attn.act_in.0", "0.attn.k.2", 2.0),
        ("0.attn.act_in.0", "0.attn.v.3", 3.0),
    ]
    only_k = names_to_nodes(["0.attn.act_in.0", "0.attn.k.2", "0.attn.q.2", "0.attn.v.2"], cfg)
    assert circuit_edges(params, cfg, only_k).edges == [("0.attn.act_in.0", "0.attn.k.2", 2.0)]
    assert count_edges(params, cfg, only_k) == 1


def test_value_to_write_through_c_proj():
    cfg = tiny_cfg()
    params = zero_params(cfg)
    params["transformer.h.1.attn.c_proj.weight"][5, 3] = 0.25
    params["transformer.h.1.attn.c_proj.weight"][6, 3] = 0.5  # write 6 not in the circuit
    nodes = names_to_nodes(["1.attn.v.3", "1.attn.resid_delta.5", "1.attn.q.3"], cfg)
    graph = circuit_edges(params, cfg, nodes)
    assert graph.edges == [("1.attn.v.3", "1.attn.resid_delta.5", 0.25)]
    # q.3 has no edge through c_proj: only v channels feed the attention output.
    assert count_edges(params, cfg, names_to_nodes(["1.attn.q.3", "1.attn.resid_delta.5"], cfg)) == 0


def test_residual_links_and_channel_counts():
    cfg = tiny_cfg()
    names = [
        "0.attn.resid_delta.1",  # feeds 0.mlp.act_in.1 (same layer), 1.attn.act_in.1, 1.mlp.act_in.1
        "0.mlp.act_in.1",
        "1.attn.act_in.1",
        "1.mlp.act_in.1",
        "0.attn.act_in.2",  # before 0.mlp's write: not fed
        "0.mlp.act_in.2",  # before 0.mlp's write (same layer): not fed
        "0.mlp.resid_delta.2",
        "1.attn.act_in.2",  # fed by 0.mlp.resid_delta.2
        "1.mlp.resid_delta.3",  # no later read: unembedding
        "1.attn.act_in.3",  # earlier than the write of the same layer: not fed
        "1.mlp.act_in.4",  # different channel from every write: not fed
        "0.attn.resid_delta.5",  # written, never read
    ]
    graph = circuit_edges(zero_params(cfg), cfg, names_to_nodes(names, cfg))
    assert graph.residual_links == [
        ("0.attn.resid_delta.1", "0.mlp.act_in.1"),
        ("0.attn.resid_delta.1", "1.attn.act_in.1"),
        ("0.attn.resid_delta.1", "1.mlp.act_in.1"),
        ("0.mlp.resid_delta.2", "1.attn.act_in.2"),
    ]
    assert graph.edges == []  # residual links are not edges
    # Read channels not fed by an earlier write: 2 (0.attn/0.mlp reads), 3, 4. Channel 1 is always fed.
    assert graph.embedding_channels == 3
    # Written channels read by no later read: 3 and 5.
    assert graph.unembedding_channels == 2


def test_mlp_write_does_not_feed_same_layer_attention():
    cfg = tiny_cfg()
    nodes = names_to_nodes(["0.mlp.resid_delta.4", "0.attn.act_in.4", "0.mlp.act_in.4"], cfg)
    graph = circuit_edges(zero_params(cfg), cfg, nodes)
    assert graph.residual_links == []
    assert (graph.embedding_channels, graph.unembedding_channels) == (1, 1)


def test_qk_pairs_same_head_and_channel():
    cfg = tiny_cfg()
    nodes = names_to_nodes(
        ["0.attn.q.3", "0.attn.k.3", "0.attn.q.1", "0.attn.k.0", "1.attn.q.2", "1.attn.k.2"], cfg
    )
    graph = circuit_edges(zero_params(cfg), cfg, nodes)
    assert graph.qk_pairs == [("0.attn.q.3", "0.attn.k.3"), ("1.attn.q.2", "1.attn.k.2")]


def test_position_channels_give_edges_but_no_residual_links():
    cfg = tiny_cfg(pos_emb="concat", d_pos_emb=2)  # d_in 10: channels 8 and 9 are positions
    params = zero_params(cfg)
    params["transformer.h.1.mlp.c_fc.weight"][0, 9] = 1.0
    nodes = names_to_nodes(["1.mlp.act_in.9", "1.mlp.post_act.0"], cfg)
    graph = circuit_edges(params, cfg, nodes)
    assert graph.edges == [("1.mlp.act_in.9", "1.mlp.post_act.0", 1.0)]
    assert graph.residual_links == []
    assert (graph.embedding_channels, graph.unembedding_channels) == (0, 0)


def test_fig4_like_decomposition():
    """PAPER.md 5.2 / 10.1 scaled to two layers: 12 nodes, 6 MLP edges + 3 attention edges = 9."""
    cfg = tiny_cfg()
    params = zero_params(cfg)
    c_fc, mlp_proj = params["transformer.h.0.mlp.c_fc.weight"], params["transformer.h.0.mlp.c_proj.weight"]
    c_fc[4, 2] = 1.0  # embedding channel 2 -> "double quote" neuron 4
    c_fc[5, 3] = 1.0  # embedding channel 3 -> "single quote" neuron 5
    mlp_proj[6, 4], mlp_proj[6, 5] = 1.0, 1.0  # quote detector channel 6
    mlp_proj[7, 4], mlp_proj[7, 5] = 1.0, -1.0  # quote type classifier channel 7
    c_fc[0, 2] = 9.0  # distractor: neuron 0 is not in the circuit
    c_attn, attn_proj = (
        params["transformer.h.1.attn.c_attn.weight"],
        params["transformer.h.1.attn.c_proj.weight"],
    )
    c_attn[k_row(cfg, 3), 6] = 1.0  # head 1 key channel 1 reads the quote detector
    c_attn[v_row(cfg, 2), 7] = 1.0  # head 1 value channel 0 reads the classifier
    c_attn[q_row(cfg, 3), 0] = 9.0  # the constant query reads nothing in the circuit
    attn_proj[5, 2] = 1.0  # value -> write channel 5
    names = [
        "0.mlp.act_in.2",
        "0.mlp.act_in.3",
        "0.mlp.post_act.4",
        "0.mlp.post_act.5",
        "0.mlp.resid_delta.6",
        "0.mlp.resid_delta.7",
        "1.attn.act_in.6",
        "1.attn.act_in.7",
        "1.attn.q.3",
        "1.attn.k.3",
        "1.attn.v.2",
        "1.attn.resid_delta.5",
    ]
    nodes = names_to_nodes(names, cfg)
    graph = circuit_edges(params, cfg, nodes)
    assert graph.n_nodes == 12
    mlp_edges = [e for e in graph.edges if e[0].startswith("0.mlp")]
    attn_edges = [e for e in graph.edges if e[0].startswith("1.attn")]
    assert len(mlp_edges) == 6 and len(attn_edges) == 3
    assert graph.n_edges == count_edges(params, cfg, nodes) == 9
    assert edge_set(graph) >= {
        ("1.attn.act_in.6", "1.attn.k.3"),
        ("1.attn.act_in.7", "1.attn.v.2"),
        ("1.attn.v.2", "1.attn.resid_delta.5"),
    }
    assert graph.residual_links == [
        ("0.mlp.resid_delta.6", "1.attn.act_in.6"),
        ("0.mlp.resid_delta.7", "1.attn.act_in.7"),
    ]
    assert graph.qk_pairs == [("1.attn.q.3", "1.attn.k.3")]
    assert (graph.embedding_channels, graph.unembedding_channels) == (2, 1)
    out = json.loads(json.dumps(graph.to_json()))
    assert out["counts"] == {
        "nodes": 12,
        "edges": 9,
        "residual_links": 2,
        "qk_pairs": 1,
        "nodes_by_location": {
            "0.mlp.act_in": 2,
            "0.mlp.post_act": 2,
            "0.mlp.resid_delta": 2,
            "1.attn.act_in": 2,
            "1.attn.q": 1,
            "1.attn.k": 1,
            "1.attn.v": 1,
            "1.attn.resid_delta": 1,
        },
        "embedding_channels": 2,
        "unembedding_channels": 1,
    }
    assert {"src": "0.mlp.post_act.5", "dst": "0.mlp.resid_delta.7", "weight": -1.0} in out["edges"]
    assert out["qk_pairs"] == [{"q": "1.attn.q.3", "k": "1.attn.k.3"}]
    assert out["residual_links"][0] == {"src": "0.mlp.resid_delta.6", "dst": "1.attn.act_in.6"}
    unweighted = circuit_edges(params, cfg, nodes, with_weights=False)
    assert [(s, d) for s, d, _ in unweighted.edges] == [(s, d) for s, d, _ in graph.edges]
    assert all(w is None for _, _, w in unweighted.edges)
    assert "weight" not in unweighted.to_json()["edges"][0]


def random_case(cfg: ModelConfig, seed: int, weight_density: float, node_density: float):
    gen = torch.Generator().manual_seed(seed)
    params = zero_params(cfg)
    for w in params.values():
        w.copy_(torch.randn(w.shape, generator=gen) * (torch.rand(w.shape, generator=gen) < weight_density))
    nodes = {
        loc: torch.rand(len(mask), generator=gen) < node_density for loc, mask in empty_nodes(cfg).items()
    }
    return params, nodes


def brute_force_edges(params, cfg, nodes) -> set[tuple[str, str]]:
    """Edges by looping over every weight entry: the definition, written the slow way."""
    names = set(nodes_to_names(nodes))
    d_attn = cfg.d_attn
    found = set()
    for l in range(cfg.n_layer):
        layout = {
            "attn.c_attn.weight": ("attn.act_in", lambda r: ("attn." + "qkv"[r // d_attn], r % d_attn)),
            "attn.c_proj.weight": ("attn.v", lambda r: ("attn.resid_delta", r)),
            "mlp.c_fc.weight": ("mlp.act_in", lambda r: ("mlp.post_act", r)),
            "mlp.c_proj.weight": ("mlp.post_act", lambda r: ("mlp.resid_delta", r)),
        }
        for param, (src_loc, dst_of) in layout.items():
            w = params[f"transformer.h.{l}.{param}"]
            for r in range(w.shape[0]):
                for c in range(w.shape[1]):
                    dst_loc, d = dst_of(r)
                    src, dst = f"{l}.{src_loc}.{c}", f"{l}.{dst_loc}.{d}"
                    if w[r, c] != 0 and src in names and dst in names:
                        found.add((src, dst))
    return found


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("pos_emb", ["none", "concat"])
def test_count_edges_agrees_with_circuit_edges_and_brute_force(seed, pos_emb):
    cfg = tiny_cfg(pos_emb=pos_emb, d_pos_emb=2 if pos_emb == "concat" else 0)
    params, nodes = random_case(cfg, seed, weight_density=0.3, node_density=0.5)
    graph = circuit_edges(params, cfg, nodes)
    assert count_edges(params, cfg, nodes) == graph.n_edges == len(graph.edges)
    assert edge_set(graph) == brute_force_edges(params, cfg, nodes)
    assert len(edge_set(graph)) == graph.n_edges  # no duplicates
    assert all(w != 0.0 for _, _, w in graph.edges)
    # Sorted by source node (forward order, then index) and never across layers.
    order = {name: i for i, name in enumerate(nodes_to_names(full_nodes(cfg)))}
    keys = [(order[s], order[d]) for s, d, _ in graph.edges]
    assert keys == sorted(keys)


def test_real_gpt_state_dict_runs():
    cfg = ModelConfig(vocab_size=64, n_layer=2, d_model=32, n_head=4, d_head=8, d_mlp=64, n_ctx=16).validate()
    torch.manual_seed(0)
    params = GPT(cfg).state_dict()
    gen = torch.Generator().manual_seed(0)
    for w in params.values():
        w.mul_(torch.rand(w.shape, generator=gen) >= 0.9)  # zero 90 % of every entry
    weights = [params[f"transformer.h.{l}.{name}"] for l in range(cfg.n_layer) for name in MATRICES]
    total_nonzero = sum(int(w.count_nonzero()) for w in weights)
    assert total_nonzero > 0
    full = full_nodes(cfg)
    assert count_edges(params, cfg, full) == circuit_edges(params, cfg, full, with_weights=False).n_edges
    assert count_edges(params, cfg, full) == total_nonzero
    nodes = {loc: torch.rand(len(m), generator=gen) < 0.3 for loc, m in full.items()}
    graph = circuit_edges(params, cfg, nodes)
    assert graph.n_edges == count_edges(params, cfg, nodes)
    assert 0 < graph.n_edges < total_nonzero
    # The definition as one mask per matrix: (W != 0) & dst_mask[:, None] & src_mask[None, :].
    expected = 0
    for l in range(cfg.n_layer):
        ends = {
            "attn.c_attn.weight": (
                torch.cat([nodes[f"{l}.attn.{x}"] for x in "qkv"]),
                nodes[f"{l}.attn.act_in"],
            ),
            "attn.c_proj.weight": (nodes[f"{l}.attn.resid_delta"], nodes[f"{l}.attn.v"]),
            "mlp.c_fc.weight": (nodes[f"{l}.mlp.post_act"], nodes[f"{l}.mlp.act_in"]),
            "mlp.c_proj.weight": (nodes[f"{l}.mlp.resid_delta"], nodes[f"{l}.mlp.post_act"]),
        }
        for name, (dst, src) in ends.items():
            w = params[f"transformer.h.{l}.{name}"]
            expected += int(((w != 0) & dst[:, None] & src[None, :]).sum())
    assert graph.n_edges == expected
    json.dumps(graph.to_json())
    assert count_edges(params, cfg, empty_nodes(cfg)) == 0
