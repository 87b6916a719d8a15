"""The one GPT forward pass (PAPER.md 2), with a named hook point at every node location.

Per layer l the forward visits these hook points, in order:

    {l}.resid_in           residual stream entering the block                  [B, T, d_model]
    {l}.attn.act_in        RMSNorm(resid) (+ positions) -> AbsTopK             [B, T, d_in]
    {l}.attn.q / .k / .v   c_attn split -> AbsTopK over all heads, flat        [B, T, n_head * d_head]
    {l}.attn.pattern       causal attention probabilities                      [B, n_head, T, T]
    {l}.attn.resid_delta   c_proj -> AbsTopK, then added to the residual       [B, T, d_model]
    {l}.resid_mid          residual stream between attention and MLP           [B, T, d_model]
    {l}.mlp.act_in         RMSNorm(resid) (+ positions) -> AbsTopK             [B, T, d_in]
    {l}.mlp.post_act       c_fc -> GELU/ReLU -> AbsTopK                        [B, T, d_mlp]
    {l}.mlp.resid_delta    c_proj -> AbsTopK, then added to the residual       [B, T, d_model]

then `final_resid` (before ln_f, [B, T, d_model]) and `logits` ([B, T, vocab], float32). Each hook
sees the value after AbsTopK, so masks and mean ablation act on node values (a location whose one hook
declares a constant, every node ablated, skips its AbsTopK: `_HookScope.node`). Flat q/k/v index is
head * d_head + channel. The hook names, their order and widths are the table in model/locations.py
(a test checks it against the hooks this forward fires); `GPT.run_with_cache` reads them.

Parameter names follow DESIGN.md (the authors' state dict). With pos_emb == "concat" each block
also has `ln_p1.weight` and `ln_p2.weight` [d_pos_emb]: the RMSNorms of the position channels that
are appended to the attention and MLP inputs (names as in the authors' code). With tied_unembed
there is no `lm_head.weight`; the unembedding is `transformer.wte.weight`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsecircuits.errors import UserError
from sparsecircuits.model import sink_attention
from sparsecircuits.model.abstopk import abstopk
from sparsecircuits.model.config import ModelConfig
from sparsecircuits.model.locations import NODE_LOCATIONS, hook_location, hook_names, node_locations

HookFn = Callable[[Tensor], "Tensor | None"]


class _StopForward(Exception):
    """Raised by run_with_cache's hook at stop_at and caught there: never seen by a caller."""


def _stop_forward(_x: Tensor) -> None:
    raise _StopForward


class _HookScope:
    """Runs the installed hook fns for the names under one prefix ("3." for layer 3, "" at the top)."""

    def __init__(self, table: dict[str, list[HookFn]], prefix: str):
        self.table = table
        self.prefix = prefix

    def has(self, name: str) -> bool:
        return bool(self.table.get(self.prefix + name))

    def __call__(self, name: str, x: Tensor) -> Tensor:
        for fn in self.table.get(self.prefix + name, ()):
            out = fn(x)
            if out is not None:
                x = out
        return x

    def node(self, name: str, x: Tensor, k: int | None) -> Tensor:
        """The value at node location `name`: AbsTopK k of x [..., width], then its hooks. Where the one hook
        installed there declares a constant output (an attribute `constant` [width], e.g. every node of the
        location ablated to its mean), that constant broadcast to x's shape, and no AbsTopK."""
        fns = self.table.get(self.prefix + name, ())
        constant = getattr(fns[0], "constant", None) if len(fns) == 1 else None
        if constant is not None:
            return constant.to(x.dtype).expand(x.shape)
        return self(name, x if k is None else abstopk(x, k))


def at_positions(t: Tensor, at: Tensor) -> Tensor:
    """Each prompt's row at its own position: t [B, T, ...], at [B] -> [B, 1, ...]."""
    return t[torch.arange(len(at), device=t.device), at].unsqueeze(1)


def _topk_ks(cfg: ModelConfig, block: str) -> dict[str, int | None]:
    """AbsTopK k of each node location of a block ("attn" or "mlp"), keyed by the name inside the block."""
    prefix = block + "."
    return {loc[len(prefix) :]: cfg.topk_k(loc) for loc in NODE_LOCATIONS if loc.startswith(prefix)}


class RMSNorm(nn.Module):
    """RMSNorm with a weight and no bias (zero keeps its meaning in the residual stream)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(F, "rms_norm"):
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class AttentionSink(nn.Module):
    """Holds the per-head sink logit b_h; named `attn_imp` to match the authors' state dict."""

    def __init__(self, n_head: int):
        super().__init__()
        self.sink_logit = nn.Parameter(torch.zeros(n_head))


def attention_probs(
    q: Tensor, k: Tensor, sink_logit: Tensor | None = None, q_pos: Tensor | None = None
) -> Tensor:
    """Causal softmax attention probabilities, optionally with a sink slot of value zero.

    q: [B, H, Tq, d_head], k: [B, H, T, d_head]; sink_logit: [H] or None. q_pos: [B] the position of each
    prompt's single query (Tq = 1, the narrowed last block) or None (Tq = T, query t at position t).
    Returns float32 [B, H, Tq, T] where a(t, s) = exp(score) / (exp(b_h) + sum_{s' <= t} exp(score)), so rows
    sum to less than 1 with a sink.
    """
    T = k.shape[-2]
    scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(q.shape[-1])
    keys = torch.arange(T, device=q.device)
    if q_pos is None:
        future = keys[None, :] > keys[:, None]  # [T, T]
    else:
        future = (keys[None, :] > q_pos[:, None])[:, None, None, :]  # [B, 1, 1, T]
    scores = scores.masked_fill(future, float("-inf"))
    if sink_logit is None:
        return scores.softmax(dim=-1)
    # A constant column b_h in front of the scores; dropping it after the softmax is the same as
    # attending to an always-visible slot whose value vector is zero.
    sink = sink_logit.float().view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
    return torch.cat([sink, scores], dim=-1).softmax(dim=-1)[..., 1:]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.d_head = cfg.n_head, cfg.d_head
        self.c_attn = nn.Linear(cfg.d_in, 3 * cfg.d_attn, bias=cfg.bias)  # rows: q, then k, then v
        self.c_proj = nn.Linear(cfg.d_attn, cfg.d_model, bias=cfg.bias)
        self.attn_imp = AttentionSink(cfg.n_head) if cfg.sink else None
        self.topk = _topk_ks(cfg, "attn")

    def forward(self, x: Tensor, hook: _HookScope, at: Tensor | None = None) -> Tensor:
        """x: normalised input [B, T, d_in] -> residual write [B, T, d_model].

        at: [B] positions; then only those queries are computed and the write is [B, 1, d_model]."""
        x = hook.node("attn.act_in", x, self.topk["act_in"])
        q, k, v = self.c_attn(x).split(self.n_head * self.d_head, dim=-1)
        if at is not None:
            q = at_positions(q, at)  # [B, 1, H * d_head]
        q = hook.node("attn.q", q, self.topk["q"])
        k = hook.node("attn.k", k, self.topk["k"])
        v = hook.node("attn.v", v, self.topk["v"])
        y = self._attend(q, k, v, hook, at)
        return hook.node("attn.resid_delta", self.c_proj(y), self.topk["resid_delta"])

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, hook: _HookScope, at: Tensor | None) -> Tensor:
        """Flat q [B, Tq, H * d_head], k, v [B, T, H * d_head] -> per-head outputs side by side
        [B, Tq, H * d_head]. Tq is T, or 1 with `at` (one query per prompt, at position at[b])."""
        B, Tq, _ = q.shape
        T = k.shape[1]
        q = q.view(B, Tq, self.n_head, self.d_head).transpose(1, 2)
        k, v = (t.view(B, T, self.n_head, self.d_head).transpose(1, 2) for t in (k, v))
        sink = None if self.attn_imp is None else self.attn_imp.sink_logit
        fused = at is None and (sink is None or sink_attention.USE_FUSED_SINK)
        y = None
        if hook.has("attn.pattern") or not fused:
            # One query row per prompt (at) is cheap to materialise: no fused kernel needed there
            probs = attention_probs(q, k, sink, at)
            patched = hook("attn.pattern", probs)
            # A patched pattern is applied as given; read-only hooks keep the fused path, so they never
            # perturb the logits.
            if patched is not probs or not fused:
                y = patched.to(v.dtype) @ v
        if y is None:
            y = self._sdpa(q, k, v, sink)
        return y.transpose(1, 2).reshape(B, Tq, self.n_head * self.d_head)

    def _sdpa(self, q: Tensor, k: Tensor, v: Tensor, sink: Tensor | None) -> Tensor:
        scale = 1.0 / math.sqrt(self.d_head)
        if sink is not None:
            return sink_attention.sink_attention(q, k, v, sink, scale)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_in, cfg.d_mlp, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.d_mlp, cfg.d_model, bias=cfg.bias)
        self.act = F.gelu if cfg.activation == "gelu" else F.relu  # exact (erf) GELU
        self.topk = _topk_ks(cfg, "mlp")

    def forward(self, x: Tensor, hook: _HookScope) -> Tensor:
        """x: normalised input [B, T, d_in] -> residual write [B, T, d_model]."""
        x = hook.node("mlp.act_in", x, self.topk["act_in"])
        h = hook.node("mlp.post_act", self.act(self.c_fc(x)), self.topk["post_act"])
        return hook.node("mlp.resid_delta", self.c_proj(h), self.topk["resid_delta"])


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.residual_relu = cfg.residual_relu
        self.ln_1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)
        concat = cfg.pos_emb == "concat"
        self.ln_p1 = RMSNorm(cfg.d_pos_emb, cfg.norm_eps) if concat else None
        self.ln_p2 = RMSNorm(cfg.d_pos_emb, cfg.norm_eps) if concat else None

    def forward(
        self,
        x: Tensor,
        pos: Tensor | None,
        hook: _HookScope,
        at: Tensor | None = None,
        start: str = "resid_in",
    ) -> Tensor:
        """x: residual [B, T, d_model]; pos: [T, d_pos_emb] position channels or None.

        at: [B] positions; then the block computes its attention queries and everything after them only there
        and returns [B, 1, d_model] (the residual at those positions).
        start: "resid_mid" skips the attention half: x is then the value arriving at `resid_mid` ([B, 1,
        d_model] with `at`)."""
        if start == "resid_in":
            x = hook("resid_in", x)
            delta = self.attn(self._read(x, pos, self.ln_1, self.ln_p1), hook, at)
            if at is not None:
                x = at_positions(x, at)
            x = self._add(x, delta)
        if at is not None and pos is not None:
            pos = pos[at].unsqueeze(1)  # [B, 1, d_pos_emb]
        x = hook("resid_mid", x)
        return self._add(x, self.mlp(self._read(x, pos, self.ln_2, self.ln_p2), hook))

    @staticmethod
    def _read(x: Tensor, pos: Tensor | None, ln: RMSNorm, ln_p: RMSNorm | None) -> Tensor:
        h = ln(x)
        if pos is None or ln_p is None:
            return h
        # Positions are read-only channels: appended to the input, never written to the residual.
        return torch.cat([h, ln_p(pos).expand(x.shape[0], -1, -1)], dim=-1)

    def _add(self, x: Tensor, delta: Tensor) -> Tensor:
        x = x + delta
        return F.relu(x) if self.residual_relu else x


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = dataclasses.replace(cfg).validate()  # a private copy: later edits to cfg do not apply
        cfg = self.cfg
        modules: dict[str, nn.Module] = {"wte": nn.Embedding(cfg.vocab_size, cfg.d_model)}
        if cfg.pos_emb == "add":
            modules["wpe"] = nn.Embedding(cfg.n_ctx, cfg.d_model)
        elif cfg.pos_emb == "concat":
            modules["wpe"] = nn.Embedding(cfg.n_ctx, cfg.d_pos_emb)
        modules["h"] = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        modules["ln_f"] = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.transformer = nn.ModuleDict(modules)
        # Tied: no lm_head at all, so state_dict (and safetensors) hold the matrix once, as wte.
        self.lm_head = None if cfg.tied_unembed else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.bigram_table = (
            nn.Parameter(torch.zeros(cfg.vocab_size, cfg.vocab_size)) if cfg.bigram_table else None
        )
        self.final_logits_bias = nn.Parameter(torch.zeros(cfg.vocab_size)) if cfg.final_logits_bias else None

        self._hooks: dict[str, list[HookFn]] = {}
        self._hook_names = hook_names(cfg)
        self._hook_order = {name: i for i, name in enumerate(self._hook_names)}
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2 init: N(0, 0.02), residual-writing c_proj scaled by 1/sqrt(2 n_layer), biases 0."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.cfg.n_layer))
        # Norm weights start at 1; sink logits, bigram table and final logits bias at 0 (set above).

    def forward(
        self,
        idx: Tensor,
        at: Tensor | None = None,
        narrow: bool = False,
        resume: tuple[str, Tensor] | None = None,
    ) -> Tensor:
        """idx: token ids [B, T] (T <= n_ctx) -> logits [B, T, vocab], float32 (also under autocast).

        at: optional LongTensor [B] of positions. Then only those positions are unembedded and the logits
        are [B, vocab] (the `final_resid` and `logits` hooks see the gathered [B, 1, ...] tensors). Task
        evaluation and pruning read one position per prompt; this skips the other positions' unembedding,
        which dominates the cost of small models.

        narrow (with `at`): the last block also computes its queries and everything after them only at `at`,
        since the logits there read nothing else of it; its hooks from `attn.q` on (but `attn.k`, `attn.v`) see
        [B, 1, ...] tensors ([B, n_head, 1, T] at `attn.pattern`). The logits equal the wide forward's up to
        float rounding. For callers whose hooks act per position (node masks, scoring): about 1.5x faster on a
        two-layer model.

        resume: (point, x) starts the forward at the residual hook point `{l}.resid_in` or `{l}.resid_mid` from
        x, the value arriving there before its hooks ([B, T, d_model]; [B, 1, d_model] at the narrowed last
        block's resid_mid): the embedding and everything before the point are skipped; its hooks still run.
        The logits are bit-identical to a forward whose earlier part gives x, so a caller scoring many hook
        settings that differ only after one point computes the part before it once (circuits/prefix.py).
        """
        cfg = self.cfg
        T = idx.shape[1]
        if T > cfg.n_ctx:
            raise UserError(f"sequence length {T} exceeds the model's context n_ctx = {cfg.n_ctx}")
        if narrow and at is None:
            raise ValueError("narrow needs the positions `at`")
        first, start, x = self._resume_at(resume) if resume is not None else (0, "resid_in", None)
        if x is None:
            x = self.transformer.wte(idx)
            if cfg.pos_emb == "add":
                x = x + self.transformer.wpe.weight[:T]
        pos = self.transformer.wpe.weight[:T] if cfg.pos_emb == "concat" else None
        last = len(self.transformer.h) - 1
        for layer in range(first, last + 1):
            block_at = at if narrow and layer == last else None
            x = self.transformer.h[layer](
                x,
                pos,
                _HookScope(self._hooks, f"{layer}."),
                block_at,
                start if layer == first else "resid_in",
            )
        if at is not None:
            idx = at_positions(idx, at)
            if not narrow:
                x = at_positions(x, at)
        top = _HookScope(self._hooks, "")
        x = top("final_resid", x)
        unembed = self.transformer.wte.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(self.transformer.ln_f(x), unembed).float()
        if self.bigram_table is not None:
            logits = logits + F.embedding(idx, self.bigram_table)  # row of the current token
        if self.final_logits_bias is not None:
            logits = logits + self.final_logits_bias
        logits = top("logits", logits).float()
        return logits if at is None else logits[:, 0]

    def _resume_at(self, resume: tuple[str, Tensor]) -> tuple[int, str, Tensor]:
        """(layer, "resid_in" or "resid_mid", x) of a forward's `resume` argument."""
        point, x = resume
        layer, _, start = point.partition(".")
        if start not in ("resid_in", "resid_mid") or point not in self._hook_order:
            raise ValueError(
                f"a forward resumes at a {{layer}}.resid_in or resid_mid hook point, not {point!r}"
            )
        return int(layer), start, x

    # ---- hooks ---------------------------------------------------------------------------------

    @property
    def hooked(self) -> bool:
        """Whether any hook fn is installed (`hooks`)."""
        return any(self._hooks.values())

    def hook_names(self) -> list[str]:
        """Every hook point, in forward order: per-layer LAYER_HOOKS, then final_resid and logits.

        The order and names come from the table in model/locations.py (tested against the hooks fired)."""
        return list(self._hook_names)

    def node_locations(self) -> list[str]:
        """Hook names that are node locations, e.g. "0.attn.act_in", ..., "3.mlp.resid_delta"."""
        return node_locations(self.cfg)

    def location_width(self, name: str) -> int:
        """Last-dim width of the activation at a hook point. `{l}.attn.pattern` has none ([B, H, T, T])."""
        if name not in self._hook_order:
            raise UserError(f"unknown hook name {name!r}")
        location = hook_location(name)
        if location.width_of is None:
            raise UserError(f"{name} has shape [B, n_head, T, T], not a fixed width")
        return location.width(self.cfg)

    @contextmanager
    def hooks(self, fns: Mapping[str, HookFn]) -> Iterator[None]:
        """Install hook fns for the duration of a with-block.

        fns maps hook names to fn(activation) -> replacement tensor, or None to leave it unchanged.
        Hooks at one point run in installation order, each seeing the previous one's result: with
        nested blocks, the outer block's hook runs first, then the inner one's. Exiting a block
        removes exactly the hooks it installed, even on error.

        At `{l}.attn.pattern`, returning the input itself (or None) only reads it: the output still
        comes from the fused kernel, so read-only hooks leave the logits bit-identical. Return a new
        tensor to patch the pattern (and to get gradients through it); in-place edits there are ignored.
        """
        unknown = [name for name in fns if name not in self._hook_order]
        if unknown:
            raise UserError(f"unknown hook name(s): {', '.join(unknown)} (see GPT.hook_names())")
        not_callable = [name for name, fn in fns.items() if not callable(fn)]
        if not_callable:
            raise UserError(f"hook(s) for {', '.join(not_callable)} are not callable")
        installed: list[tuple[str, HookFn]] = []
        try:
            for name, fn in fns.items():
                self._hooks.setdefault(name, []).append(fn)
                installed.append((name, fn))
            yield
        finally:
            for name, fn in reversed(installed):
                self._remove_hook(name, fn)

    def _remove_hook(self, name: str, fn: HookFn) -> None:
        fns = self._hooks[name]
        last = max(i for i, f in enumerate(fns) if f is fn)  # last occurrence: blocks exit innermost first
        del fns[last]
        if not fns:
            del self._hooks[name]

    def run_with_cache(
        self,
        idx: Tensor,
        names: Sequence[str],
        stop_at: str | None = None,
        resume: tuple[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Run the forward on idx [B, T] and return the activations at the hook points `names`.

        Returns {name: activation} in the order of `names`: the tensor each hook point sees (after AbsTopK,
        and after any hook installed with `hooks` at that point). Shapes: [B, T, width] at node locations and
        residual hooks (`location_width`), [B, n_head, T, T] float32 at `{l}.attn.pattern`, and at `logits`
        [B, T, vocab] float32, the forward's output itself. The tensors are neither detached nor copied: run
        under torch.no_grad() to only read them, or keep their gradients (bridge training does).

        stop_at: a hook name; the forward stops right after it, so later layers and the unembedding are not
        computed. Every name must come no later than stop_at in the forward (`hook_names()` order). Reading
        never changes the forward: the logits are bit-identical to `model(idx)`. resume: as in `forward`
        (the names must then come after its point).
        """
        names = list(names)
        if stop_at is not None:
            if stop_at not in self._hook_order:
                raise UserError(f"unknown hook name {stop_at!r} for stop_at")
            late = [n for n in names if self._hook_order.get(n, -1) > self._hook_order[stop_at]]
            if late:
                raise UserError(f"run_with_cache: {', '.join(late)} come(s) after stop_at {stop_at!r}")
        cache: dict[str, Tensor] = {}

        def reader(name: str) -> HookFn:
            def read(x: Tensor) -> None:
                cache[name] = x

            return read

        with self.hooks({name: reader(name) for name in names}):
            if stop_at is None:
                self(idx, resume=resume)
            else:
                with self.hooks({stop_at: _stop_forward}):  # installed last: runs after the readers
                    try:
                        self(idx, resume=resume)
                    except _StopForward:
                        pass
        return {name: cache[name] for name in names}

    # ---- counts --------------------------------------------------------------------------------

    def num_params(self) -> int:
        """Number of parameters (shared tensors counted once), including embeddings and tables."""
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def num_nonzero(self) -> int:
        """Number of nonzero parameter entries, over the same parameters as num_params."""
        return sum(int(torch.count_nonzero(p)) for p in self.parameters())
