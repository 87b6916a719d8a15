"""The location table (model/locations.py) against the forward it describes, and GPT.run_with_cache."""

import pytest
import torch

from sparsecircuits.errors import UserError
from sparsecircuits.interop.openai_config import AFRAC_LOCATIONS
from sparsecircuits.model import GPT, ModelConfig
from sparsecircuits.model import gpt as gpt_module
from sparsecircuits.model.locations import (
    FINAL_HOOKS,
    LAYER_HOOKS,
    LOCATIONS,
    NODE_KINDS,
    NODE_LOCATIONS,
    NODE_TABLE,
    WeightMatrix,
    hook_names,
    split_node_name,
    weight_matrices,
)
from sparsecircuits.viewer.graph import build_graph
from sparsecircuits.viewer.svg import render_svg

V = 64
# Every option that changes a width or adds a parameter: positions concatenated (d_in != d_model), an
# attention width != d_model, a sink, a bigram table.
CONFIGS = [
    dict(pos_emb="concat", d_pos_emb=4, n_head=3, d_head=4, sink=True, bigram_table=True),
    dict(pos_emb="add", afrac=1.0, tied_unembed=True, final_logits_bias=True),
]


def make(**kw) -> GPT:
    base = dict(vocab_size=V, n_layer=2, d_model=16, n_head=4, d_head=8, d_mlp=40, n_ctx=16)
    torch.manual_seed(0)
    return GPT(ModelConfig(**{**base, **kw})).eval()


def tokens(B: int = 2, T: int = 10) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))


# ---- the table against the forward ---------------------------------------------------------------------


@pytest.mark.parametrize("kw", CONFIGS)
def test_table_matches_the_hooks_the_forward_fires(kw, monkeypatch):
    """Install a recorder at every hook point, run the forward, and compare what fired with the table.

    Every name the forward passes to its hook scope is recorded too, so a hook point missing from the
    table (which nothing could install) would show up as well."""
    model = make(**kw)
    cfg = model.cfg
    fired: list[tuple[str, tuple[int, ...]]] = []
    called: list[str] = []
    scope_call = gpt_module._HookScope.__call__

    def spy(self, name, x):
        called.append(self.prefix + name)
        return scope_call(self, name, x)

    monkeypatch.setattr(gpt_module._HookScope, "__call__", spy)

    def recorder(name):
        return lambda x: fired.append((name, tuple(x.shape)))

    with model.hooks({name: recorder(name) for name in model.hook_names()}), torch.no_grad():
        model(tokens())
    names = [name for name, _ in fired]
    assert names == called == hook_names(cfg) == model.hook_names()  # each fires once, in table order
    assert [n.partition(".")[2] for n in names[: len(LAYER_HOOKS)]] == list(LAYER_HOOKS)
    assert names[-len(FINAL_HOOKS) :] == list(FINAL_HOOKS)
    for name, shape in fired:
        hook = name.partition(".")[2] if name[0].isdigit() else name
        if LOCATIONS[hook].width_of is None:
            assert shape == (2, cfg.n_head, 10, 10), name
        else:
            assert shape == (2, 10, LOCATIONS[hook].width(cfg)), name
            assert model.location_width(name) == LOCATIONS[hook].width(cfg)


@pytest.mark.parametrize("kw", CONFIGS)
def test_weight_axes_match_the_parameters(kw):
    """weight_in rows and weight_out columns have the widths of their locations, in every layer."""
    model = make(**kw)
    cfg, params = model.cfg, model.state_dict()
    for layer in range(cfg.n_layer):
        for m in weight_matrices():
            weight = params[f"transformer.h.{layer}.{m.param}"]
            rows = sum(LOCATIONS[d].width(cfg) for d in m.dst)
            assert tuple(weight.shape) == (rows, LOCATIONS[m.src].width(cfg)), m
    ins = {loc.weight_in for loc in NODE_TABLE if loc.weight_in}
    assert ins == {m.param for m in weight_matrices()}  # every matrix with rows also has its columns


def test_weight_matrices_in_forward_order_of_their_source():
    assert weight_matrices() == (
        WeightMatrix("attn.c_attn.weight", "attn.act_in", ("attn.q", "attn.k", "attn.v")),
        WeightMatrix("attn.c_proj.weight", "attn.v", ("attn.resid_delta",)),
        WeightMatrix("mlp.c_fc.weight", "mlp.act_in", ("mlp.post_act",)),
        WeightMatrix("mlp.c_proj.weight", "mlp.post_act", ("mlp.resid_delta",)),
    )


def test_node_rows_are_complete_and_distinct():
    assert NODE_LOCATIONS == tuple(loc.hook for loc in NODE_TABLE)
    assert {loc.kind for loc in NODE_TABLE} == set(NODE_KINDS)
    for field in ("label", "legend", "title", "colour", "authors"):
        assert all(getattr(loc, field) for loc in NODE_TABLE), field
    assert len({loc.authors for loc in NODE_TABLE}) == len(NODE_TABLE)
    assert AFRAC_LOCATIONS["mlp_neuron"] == "mlp.post_act"
    assert set(AFRAC_LOCATIONS.values()) == set(NODE_LOCATIONS)
    reads = [loc for loc in NODE_TABLE if loc.reads_from]
    assert [loc.reads_from for loc in reads] == ["resid_in", "resid_mid"]
    assert all(loc.reads_from in LAYER_HOOKS for loc in reads)


def test_split_node_name():
    assert split_node_name("3.attn.v.17") == (3, "attn.v", 17)
    assert split_node_name("0.mlp.post_act.460") == (0, "mlp.post_act", 460)
    for bad in (
        "3.attn.pattern.1",
        "3.resid_in.0",
        "attn.v.1",
        "3.attn.v",
        "3.attn.v.-1",
        "x.attn.q.1",
        7,
        None,
    ):
        assert split_node_name(bad) is None, bad


# ---- the viewer reads the table from the graph JSON -------------------------------------------------------


def circuit(cfg: ModelConfig) -> dict:
    names = ["0.attn.act_in.1", "0.attn.q.9", "0.attn.k.9", "0.mlp.post_act.3", "1.mlp.resid_delta.2"]
    return {"nodes": names, "model": {"config": cfg.to_dict()}}


def test_graph_json_carries_locations_and_legend():
    cfg = make(**CONFIGS[0]).cfg
    graph = build_graph(circuit(cfg))
    assert list(graph["locations"]) == list(NODE_LOCATIONS)
    q = graph["locations"]["attn.q"]
    assert (q["kind"], q["colour"], q["title"], q["width"]) == (
        "head channel",
        "#059669",
        "attention query channel",
        12,
    )
    assert (
        graph["locations"]["attn.act_in"]["width"] == cfg.d_model + 4
        and graph["locations"]["attn.act_in"]["hollow"]
    )
    assert [e["label"] for e in graph["legend"]] == ["read", "query", "key", "value", "neuron", "write"]
    rows = [r["label"] for r in graph["rows"]]
    assert rows == ["attn read", "q · k · v", "mlp neurons", "mlp write"]
    assert [n["label"] for n in graph["nodes"] if n["row"] == "attn.qkv"] == ["q1", "k1"]


def test_svg_takes_node_colours_from_the_graph_json():
    graph = build_graph(circuit(make().cfg))
    graph["locations"]["mlp.post_act"]["colour"] = "#123456"
    svg = render_svg(graph)
    assert 'fill="#123456" stroke="#123456"' in svg
    assert 'fill="#ffffff" stroke="#64748b"' in svg  # the read is drawn hollow


# ---- run_with_cache ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", CONFIGS)
def test_run_with_cache_matches_hooks_and_keeps_the_logits(kw):
    model = make(**kw)
    idx = tokens()
    names = model.hook_names()
    seen: dict[str, torch.Tensor] = {}

    def keep(name):
        return lambda x: seen.__setitem__(name, x.clone())

    with model.hooks({n: keep(n) for n in names}), torch.no_grad():
        plain = model(idx)
    with torch.no_grad():
        cache = model.run_with_cache(idx, names)
    assert list(cache) == names
    assert torch.equal(cache["logits"], plain)
    for n in names:
        assert torch.equal(cache[n], seen[n]), n


def test_run_with_cache_stops_early_without_raising():
    model = make()
    later = []
    with model.hooks({"1.attn.q": later.append}):
        cache = model.run_with_cache(tokens(), ["0.attn.v", "0.mlp.post_act"], stop_at="0.mlp.post_act")
    assert list(cache) == ["0.attn.v", "0.mlp.post_act"] and not later  # layer 1 never ran
    full = model.run_with_cache(tokens(), ["0.mlp.post_act"])
    assert torch.equal(cache["0.mlp.post_act"], full["0.mlp.post_act"])
    assert model._hooks.get("1.attn.q") is None  # every hook it installed is gone


def test_run_with_cache_mistakes_are_user_errors():
    model = make()
    with pytest.raises(UserError, match="after stop_at"):
        model.run_with_cache(tokens(), ["1.attn.q"], stop_at="0.attn.q")
    with pytest.raises(UserError, match="unknown hook name"):
        model.run_with_cache(tokens(), ["0.attn.x"])
    with pytest.raises(UserError, match="unknown hook name"):
        model.run_with_cache(tokens(), ["0.attn.q"], stop_at="9.attn.q")
    assert not model._hooks


def test_run_with_cache_sees_patches_and_keeps_gradients():
    model = make()
    with torch.no_grad():
        plain = model.run_with_cache(tokens(), ["0.resid_mid"])["0.resid_mid"]
    with model.hooks({"0.resid_mid": lambda x: 2 * x}):
        cache = model.run_with_cache(tokens(), ["0.resid_mid", "1.resid_in"])
    assert torch.equal(cache["0.resid_mid"], 2 * plain)  # the value after the hook installed before it
    cache["1.resid_in"].pow(2).sum().backward()  # not detached: gradients reach the weights
    assert model.transformer.h[0].mlp.c_fc.weight.grad.abs().sum() > 0
