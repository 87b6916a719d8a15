"""Tests for sparsecircuits.model: AbsTopK, config, hook points, options, sink attention, causality."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from sparsecircuits.errors import UserError
from sparsecircuits.model import GPT, NODE_LOCATIONS, ModelConfig, abstopk

V = 64  # small vocab keeps the bigram table and the tests fast


def small_cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=V, n_layer=2, d_model=32, n_head=4, d_head=8, d_mlp=128, n_ctx=16)
    base.update(kw)
    return ModelConfig(**base)


def make(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(small_cfg(**kw)).eval()


def tokens(B: int = 2, T: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# ---- AbsTopK ---------------------------------------------------------------------------------------


def test_abstopk_matches_brute_force():
    x = torch.randn(5, 7, 20, generator=torch.Generator().manual_seed(0))  # signed values, no ties
    for k in (1, 3, 5, 19):
        out = abstopk(x, k)
        for row_in, row_out in zip(x.reshape(-1, 20).tolist(), out.reshape(-1, 20).tolist(), strict=True):
            keep = set(sorted(range(20), key=lambda i, r=row_in: -abs(r[i]))[:k])
            assert row_out == [v if i in keep else 0.0 for i, v in enumerate(row_in)]
    assert torch.equal(abstopk(x, 20), x)  # k = width keeps everything
    with pytest.raises(ValueError):
        abstopk(x, 0)


def test_abstopk_keeps_large_negatives():
    x = torch.tensor([[0.1, -5.0, 2.0, -0.3, 4.0]])
    assert abstopk(x, 2).tolist() == [[0.0, -5.0, 0.0, 0.0, 4.0]]


def test_abstopk_gradient_reaches_kept_entries_only():
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(3), requires_grad=True)
    w = torch.randn(4, 16)
    (abstopk(x, 4) * w).sum().backward()
    kept = abstopk(x.detach(), 4) != 0
    assert torch.equal(x.grad, torch.where(kept, w, torch.zeros_like(w)))
    assert int(kept.sum()) == 16


# ---- config ----------------------------------------------------------------------------------------


def test_config_round_trip_through_json():
    cfg = small_cfg(
        afrac=0.5, afrac_locs=("attn.q", "mlp.post_act"), pos_emb="concat", d_pos_emb=4, sink=True
    )
    d = json.loads(json.dumps(cfg.to_dict()))
    assert ModelConfig.from_dict(d) == cfg
    assert ModelConfig.from_dict(ModelConfig().to_dict()) == ModelConfig()


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(UserError, match="block_size"):
        ModelConfig.from_dict({**ModelConfig().to_dict(), "block_size": 8})


@pytest.mark.parametrize(
    "kw",
    [
        dict(afrac=0.0),
        dict(afrac=1.5),
        dict(afrac="0.25"),
        dict(afrac_locs=("attn.q", "attn.o")),
        dict(afrac=0.01),  # k rounds to 0 at 32-wide locations
        dict(pos_emb="rotary"),
        dict(pos_emb="concat", d_pos_emb=0),
        dict(pos_emb="add", d_pos_emb=4),
        dict(activation="swish"),
        dict(n_layer=0),
        dict(d_model=True),
        dict(sink=1),
    ],
)
def test_bad_config_raises_user_error(kw):
    with pytest.raises(UserError):
        small_cfg(**kw).validate()
    with pytest.raises(UserError):
        GPT(small_cfg(**kw))


def test_topk_k_per_location():
    cfg = small_cfg(afrac=0.25, afrac_locs=("attn.act_in", "mlp.post_act"))
    assert cfg.topk_k("attn.act_in") == 8
    assert cfg.topk_k("mlp.post_act") == 32
    assert cfg.topk_k("attn.q") is None
    assert small_cfg(afrac=1.0).topk_k("attn.q") is None


# ---- names ------------------------------------------------------------------------------------------


def test_hook_names_match_design():
    model = make()
    per_layer = [
        "resid_in",
        "attn.act_in",
        "attn.q",
        "attn.k",
        "attn.v",
        "attn.pattern",
        "attn.resid_delta",
        "resid_mid",
        "mlp.act_in",
        "mlp.post_act",
        "mlp.resid_delta",
    ]
    expected = [f"{l}.{s}" for l in range(2) for s in per_layer] + ["final_resid", "logits"]
    assert model.hook_names() == expected
    assert model.node_locations() == [f"{l}.{loc}" for l in range(2) for loc in NODE_LOCATIONS]


def _layer_keys(l: int, extra: tuple[str, ...] = ()) -> set[str]:
    p = f"transformer.h.{l}."
    names = [
        "ln_1.weight",
        "attn.c_attn.weight",
        "attn.c_attn.bias",
        "attn.c_proj.weight",
        "attn.c_proj.bias",
    ]
    names += ["ln_2.weight", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"]
    return {p + n for n in names + list(extra)}


@pytest.mark.parametrize(
    "kw, extra_top, extra_layer, removed",
    [
        ({}, set(), (), set()),
        (dict(pos_emb="add"), {"transformer.wpe.weight"}, (), set()),
        (
            dict(pos_emb="concat", d_pos_emb=4),
            {"transformer.wpe.weight"},
            ("ln_p1.weight", "ln_p2.weight"),
            set(),
        ),
        (dict(sink=True), set(), ("attn.attn_imp.sink_logit",), set()),
        (dict(bigram_table=True), {"bigram_table"}, (), set()),
        (dict(final_logits_bias=True), {"final_logits_bias"}, (), set()),
        (dict(tied_unembed=True), set(), (), {"lm_head.weight"}),
    ],
)
def test_state_dict_keys(kw, extra_top, extra_layer, removed):
    keys = set(make(**kw).state_dict())
    expected = {"transformer.wte.weight", "transformer.ln_f.weight", "lm_head.weight"} | extra_top
    expected = (expected - removed) | _layer_keys(0, extra_layer) | _layer_keys(1, extra_layer)
    assert keys == expected


def test_no_bias_option_drops_linear_biases():
    keys = set(make(bias=False).state_dict())
    assert not any(k.endswith(".bias") for k in keys)


def test_parameter_shapes_and_init():
    cfg = small_cfg(n_head=3, d_head=8, pos_emb="concat", d_pos_emb=4, sink=True, bigram_table=True)
    model = GPT(cfg)
    sd = model.state_dict()
    d_in, d_attn = 32 + 4, 3 * 8
    assert sd["transformer.h.0.attn.c_attn.weight"].shape == (3 * d_attn, d_in)
    assert sd["transformer.h.0.attn.c_proj.weight"].shape == (32, d_attn)
    assert sd["transformer.h.0.mlp.c_fc.weight"].shape == (128, d_in)
    assert sd["transformer.h.0.mlp.c_proj.weight"].shape == (32, 128)
    assert sd["transformer.h.1.attn.attn_imp.sink_logit"].shape == (3,)
    assert sd["transformer.wpe.weight"].shape == (16, 4)
    assert sd["transformer.h.0.ln_p1.weight"].shape == (4,)
    assert sd["bigram_table"].shape == (V, V)
    assert not sd["bigram_table"].any() and not sd["transformer.h.0.attn.attn_imp.sink_logit"].any()
    assert not sd["transformer.h.0.mlp.c_fc.bias"].any()
    assert torch.equal(sd["transformer.h.0.ln_1.weight"], torch.ones(32))
    # c_proj std is 0.02 / sqrt(2 * n_layer) = 0.01 here; c_fc's is 0.02
    assert 0.008 < sd["transformer.h.0.mlp.c_proj.weight"].std() < 0.012
    assert 0.018 < sd["transformer.h.0.mlp.c_fc.weight"].std() < 0.022
    assert model.num_params() == sum(v.numel() for v in sd.values())
    assert model.num_nonzero() < model.num_params()  # zero biases, table, sinks


# ---- hooks ------------------------------------------------------------------------------------------

ALL_OPTIONS = dict(sink=False, pos_emb="concat", d_pos_emb=4, bigram_table=True, final_logits_bias=True)


@pytest.mark.parametrize(
    "kw", [{}, dict(sink=True), ALL_OPTIONS, dict(residual_relu=True, tied_unembed=True)]
)
def test_identity_hooks_everywhere_are_bit_identical(kw):
    model, idx = make(**kw), tokens()
    base = model(idx)
    calls = []

    def identity(name):
        def fn(x):
            calls.append(name)
            return x

        return fn

    with model.hooks({n: identity(n) for n in model.hook_names()}):
        hooked = model(idx)
    assert calls == model.hook_names()  # every hook ran once, in forward order
    assert torch.equal(hooked, base)
    with model.hooks({n: (lambda x: None) for n in model.hook_names()}):
        assert torch.equal(model(idx), base)
    assert torch.equal(model(idx), base)  # hooks are gone after the block


@pytest.mark.parametrize("name", ["0.attn.q", "1.mlp.post_act", "0.attn.resid_delta", "1.attn.pattern"])
def test_zeroing_hook_changes_logits(name):
    model, idx = make(), tokens()
    base = model(idx)
    with model.hooks({name: torch.zeros_like}):
        out = model(idx)
    assert not torch.allclose(out, base)


def test_reading_hooks_capture_shapes():
    cfg_kw = dict(n_head=3, d_head=8, pos_emb="concat", d_pos_emb=4)
    model, idx = make(**cfg_kw), tokens(B=2, T=10)
    seen = {}
    with model.hooks({n: (lambda x, n=n: seen.__setitem__(n, x.detach())) for n in model.hook_names()}):
        model(idx)
    for name in model.hook_names():
        if name.endswith("attn.pattern"):
            assert seen[name].shape == (2, 3, 10, 10)
        else:
            assert seen[name].shape == (2, 10, model.location_width(name)), name
    assert model.location_width("0.attn.act_in") == 36
    assert model.location_width("0.attn.q") == 24
    assert model.location_width("0.mlp.post_act") == 128
    assert model.location_width("logits") == V
    # the hook sees values after AbsTopK: a quarter of each row is nonzero at most
    assert int((seen["1.mlp.post_act"] != 0).sum(-1).max()) <= 32
    assert int((seen["0.attn.q"] != 0).sum(-1).max()) <= 6
    probs = seen["0.attn.pattern"]
    assert torch.allclose(probs.sum(-1), torch.ones(2, 3, 10))
    assert not probs.triu(1).any()  # causal


def test_patching_pattern_hook_is_used():
    model, idx = make(), tokens()
    base = model(idx)
    with model.hooks({"0.attn.pattern": lambda p: p.clone()}):
        close = model(idx)  # explicit path with the same probabilities
    assert torch.allclose(close, base, atol=1e-5)
    self_only = lambda p: torch.eye(p.shape[-1]).expand_as(p)  # noqa: E731  each token attends to itself
    with model.hooks({"0.attn.pattern": self_only}):
        assert (model(idx) - base).abs().max() > 1e-4


def test_nested_hooks_compose_outer_first():
    model, idx = make(), tokens()
    order = []
    with model.hooks({"0.mlp.post_act": lambda x: order.append("outer") or x * 2}):
        with model.hooks({"0.mlp.post_act": lambda x: order.append("inner") or x + 1}):
            seen = {}
            with model.hooks({"0.mlp.post_act": lambda x: seen.setdefault("x", x)}):
                model(idx)
        assert order == ["outer", "inner"]
        order.clear()
        model(idx)
        assert order == ["outer"]
    assert model._hooks == {}
    ref = {}
    with model.hooks({"0.mlp.post_act": lambda x: ref.setdefault("x", x)}):
        model(idx)
    assert torch.equal(seen["x"], ref["x"] * 2 + 1)


def test_unknown_hook_name_raises_and_installs_nothing():
    model = make()
    with pytest.raises(UserError, match="0.attn.o"):
        with model.hooks({"0.attn.q": lambda x: x, "0.attn.o": lambda x: x}):
            pass
    with pytest.raises(UserError):
        model.location_width("9.attn.q")
    assert model._hooks == {}


def test_hooks_removed_on_error():
    model, idx = make(), tokens()
    with pytest.raises(RuntimeError):
        with model.hooks({"0.attn.k": lambda x: x}):
            raise RuntimeError("boom")
    assert model._hooks == {}
    model(idx)


# ---- attention sink ---------------------------------------------------------------------------------


def _reference_sink_layer0(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Layer-0 attention output [B, T, H*d] with an explicit zero-value slot prepended to k and v."""
    cfg, attn = model.cfg, model.transformer.h[0].attn
    seen = {}
    with model.hooks({f"0.attn.{c}": (lambda x, c=c: seen.__setitem__(c, x)) for c in "qkv"}):
        model(idx)
    B, T, H, D = idx.shape[0], idx.shape[1], cfg.n_head, cfg.d_head
    q, k, v = (seen[c].view(B, T, H, D).transpose(1, 2).double() for c in "qkv")
    b = attn.attn_imp.sink_logit.detach().double()
    out = torch.zeros(B, H, T, D, dtype=torch.float64)
    for t in range(T):
        # keys: the sink slot (logit b_h, value 0), then positions 0..t
        scores = torch.cat(
            [
                b.view(1, H, 1).expand(B, H, 1),
                (q[:, :, t : t + 1] @ k[:, :, : t + 1].transpose(-2, -1))[:, :, 0] / math.sqrt(D),
            ],
            -1,
        )
        vals = torch.cat([torch.zeros(B, H, 1, D, dtype=torch.float64), v[:, :, : t + 1]], 2)
        out[:, :, t] = (scores.softmax(-1).unsqueeze(-1) * vals).sum(2)
    return out.transpose(1, 2).reshape(B, T, H * D)


def test_sink_matches_explicit_reference():
    model, idx = make(sink=True), tokens()
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.attn_imp.sink_logit.copy_(torch.tensor([-1.0, 0.0, 0.5, 2.0]))
            block.attn.c_attn.weight.mul_(10.0)  # scores of order 1, so the test sees their softmax too
    expected = _reference_sink_layer0(model, idx)
    captured = {}
    attn = model.transformer.h[0].attn
    handle = attn.c_proj.register_forward_hook(lambda m, inp, out: captured.setdefault("y", inp[0]))
    try:
        with torch.no_grad():
            model(idx)
    finally:
        handle.remove()
    assert torch.allclose(captured["y"].double(), expected, atol=1e-6, rtol=1e-6)


def test_fused_sink_matches_reference_values_and_gradients(monkeypatch):
    from sparsecircuits.model import sink_attention

    model, idx = make(sink=True), tokens()
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.attn_imp.sink_logit.copy_(torch.tensor([-1.0, 0.0, 0.5, 2.0]))
            block.attn.c_attn.weight.mul_(10.0)

    def run(fused: bool):
        monkeypatch.setattr(sink_attention, "USE_FUSED_SINK", fused)
        model.zero_grad()
        logits = model(idx)
        logits.square().mean().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    (ref, ref_grads), (out, grads) = run(False), run(True)
    tol = 1e-5
    assert torch.allclose(out, ref, atol=tol, rtol=tol)
    assert grads.keys() == ref_grads.keys() and any("sink_logit" in n for n in grads)
    for name, g in grads.items():
        assert torch.allclose(g, ref_grads[name], atol=tol, rtol=1e-4), name


def test_fused_sink_under_bf16_autocast_is_as_close_to_fp32_as_the_reference(monkeypatch):
    from sparsecircuits.model import sink_attention

    model, idx = make(sink=True), tokens()
    with torch.no_grad():
        exact = model(idx)
        errors = {}
        for fused in (True, False):
            monkeypatch.setattr(sink_attention, "USE_FUSED_SINK", fused)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                errors[fused] = (model(idx).float() - exact).abs().max().item()
    assert errors[True] <= 1.5 * errors[False] + 1e-3


def test_sink_pattern_rows_sum_below_one():
    model, idx = make(sink=True), tokens()
    seen = {}
    with model.hooks({"0.attn.pattern": lambda p: seen.setdefault("p", p)}):
        model(idx)
    sums = seen["p"].sum(-1)
    assert (sums < 1).all() and (sums > 0).all()


def test_very_negative_sink_approaches_no_sink():
    plain = make(seed=5)
    sunk = make(seed=5, sink=True)
    sunk.load_state_dict(plain.state_dict(), strict=False)
    idx = tokens()
    for value in (-30.0, float("-inf")):
        with torch.no_grad():
            for block in sunk.transformer.h:
                block.attn.attn_imp.sink_logit.fill_(value)
        assert torch.allclose(sunk(idx), plain(idx), atol=1e-5)
        sunk.zero_grad()
        sunk(idx).square().mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in sunk.parameters() if p.grad is not None), value


# ---- options, causality, autocast -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        dict(pos_emb="add"),
        dict(pos_emb="concat", d_pos_emb=4),
        dict(bigram_table=True),
        dict(tied_unembed=True),
        dict(final_logits_bias=True),
        dict(residual_relu=True),
        dict(activation="relu"),
        dict(afrac=1.0),
        dict(afrac_locs=()),
        dict(n_head=2, d_head=24, bias=False, sink=True),
    ],
)
def test_options_run_with_right_shapes(kw):
    model, idx = make(**kw), tokens(B=3, T=16)
    logits = model(idx)
    assert logits.shape == (3, 16, V) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())  # sink logits, tables and positions train


def test_option_effects():
    idx = tokens()
    model = make(bigram_table=True, final_logits_bias=True)
    base = model(idx)
    with torch.no_grad():
        model.bigram_table[idx[0, 3], 7] = 1.0
        model.final_logits_bias[5] = 2.0
    out = model(idx)
    assert torch.allclose(out[0, 3, 7] - base[0, 3, 7], torch.tensor(1.0))
    assert torch.allclose(out[..., 5] - base[..., 5], torch.tensor(2.0))
    tied = make(tied_unembed=True)
    seen = {}
    with tied.hooks({"final_resid": lambda x: seen.setdefault("x", x)}):
        logits = tied(idx)
    ref = F.linear(tied.transformer.ln_f(seen["x"]), tied.transformer.wte.weight)
    assert torch.allclose(logits, ref)
    relu = make(residual_relu=True)
    with relu.hooks({"1.resid_mid": lambda x: seen.__setitem__("mid", x)}):
        relu(idx)
    assert (seen["mid"] >= 0).all()


@pytest.mark.parametrize(
    "kw", [{}, dict(sink=True), dict(pos_emb="add"), dict(pos_emb="concat", d_pos_emb=4)]
)
def test_causal(kw):
    model, idx = make(**kw), tokens(T=12)
    changed = idx.clone()
    changed[:, 8] = (changed[:, 8] + 1) % V
    a, b = model(idx), model(changed)
    assert torch.equal(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_positions_break_permutation_symmetry():
    # A constant input with no positions gives every position identical keys, so equal logits.
    idx = torch.full((1, 4), 3)
    for kw, differs in (
        (dict(), False),
        (dict(pos_emb="add"), True),
        (dict(pos_emb="concat", d_pos_emb=4), True),
    ):
        out = make(afrac=1.0, **kw)(idx)
        assert torch.allclose(out[0, 0], out[0, 3], atol=1e-5) != differs


def test_too_long_sequence_raises():
    with pytest.raises(UserError, match="n_ctx"):
        make()(tokens(T=17))


def test_bf16_autocast_returns_float32():
    model, idx = make(sink=True), tokens()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(idx)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("opts", [{}, {"bigram_table": True, "sink": True, "final_logits_bias": True}])
def test_forward_at_positions_equals_full_logits(opts):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, n_layer=2, d_model=32, n_head=2, d_head=16, d_mlp=64, n_ctx=16, **opts)
    model = GPT(cfg).eval()
    idx = torch.randint(0, 50, (4, 16))
    at = torch.tensor([3, 15, 0, 7])
    with torch.no_grad():
        full = model(idx)
        picked = model(idx, at=at)
    assert picked.shape == (4, 50)
    assert torch.allclose(picked, full[torch.arange(4), at], atol=1e-6)


@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"bigram_table": True, "sink": True, "final_logits_bias": True},
        {"pos_emb": "concat", "d_pos_emb": 8},
        {"n_layer": 1, "afrac": 1.0},
    ],
)
def test_narrow_last_block_gives_the_same_logits(opts):
    torch.manual_seed(0)
    cfg = {"vocab_size": 50, "n_layer": 2, "d_model": 32, "n_head": 2, "d_head": 16, "d_mlp": 64, "n_ctx": 16}
    model = GPT(ModelConfig(**{**cfg, **opts})).eval()
    idx = torch.randint(0, 50, (4, 16))
    at = torch.tensor([3, 15, 0, 7])
    with torch.no_grad():
        wide = model(idx, at=at)
        narrow = model(idx, at=at, narrow=True)
    assert narrow.shape == wide.shape == (4, 50)
    assert torch.allclose(narrow, wide, atol=1e-5)


def test_narrow_last_block_hooks_see_the_answer_positions_only():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, n_layer=2, d_model=32, n_head=2, d_head=16, d_mlp=64, n_ctx=16)
    model = GPT(cfg).eval()
    idx = torch.randint(0, 50, (3, 16))
    at = torch.tensor([2, 9, 15])
    seen = {}
    names = ["0.mlp.post_act", "1.attn.act_in", "1.attn.q", "1.attn.k", "1.attn.pattern", "1.mlp.post_act"]

    def reader(name: str):
        return lambda x: seen.__setitem__(name, x)

    with torch.no_grad(), model.hooks({n: reader(n) for n in names}):
        model(idx, at=at, narrow=True)
    assert seen["0.mlp.post_act"].shape == (3, 16, 64)  # earlier blocks run at every position
    assert seen["1.attn.act_in"].shape == (3, 16, 32) and seen["1.attn.k"].shape == (3, 16, 32)
    assert seen["1.attn.q"].shape == (3, 1, 32) and seen["1.mlp.post_act"].shape == (3, 1, 64)
    pattern = seen["1.attn.pattern"]
    assert pattern.shape == (3, 2, 1, 16)
    assert torch.allclose(pattern.sum(-1), torch.ones(3, 2, 1))
    assert (pattern[0, :, 0, 3:] == 0).all()  # the query at position 2 sees keys 0..2 only
    with pytest.raises(ValueError):
        model(idx, narrow=True)


def test_abstopk_threshold_path_selects_the_reference_set():
    from sparsecircuits.model.abstopk import abstopk_reference, abstopk_threshold

    torch.manual_seed(0)
    for shape, k in [((50, 64), 16), ((3, 7, 128), 64), ((10, 512), 128)]:
        x = torch.randn(*shape, requires_grad=True)
        fast, ref = abstopk_threshold(x, k), abstopk_reference(x, k)
        assert torch.equal(fast, ref)
        g = torch.randn(shape)
        (gf,) = torch.autograd.grad((fast * g).sum(), x)
        (gr,) = torch.autograd.grad((ref * g).sum(), x)
        assert torch.equal(gf, gr)
    ties = torch.tensor(
        [[1.0, -1.0, 1.0, 0.5], [0.0, 0.0, 0.0, 2.0]]
    )  # falls back: identical to the reference
    assert torch.equal(abstopk_threshold(ties, 2), abstopk_reference(ties, 2))
