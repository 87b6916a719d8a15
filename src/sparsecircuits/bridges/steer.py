"""Steering the dense model through a bridge from one sparse residual-read node (PAPER.md 11.4, Fig 9).

Recipe, for node `{l}.attn.act_in.c` (site `{l}.resid_in`) or `{l}.mlp.act_in.c` (site `{l}.resid_mid`):
  1. The node is channel c of the sparse model's post-RMSNorm residual read at site i (after AbsTopK).
  2. Delta[t] = a_c(counterfactual prompt)[t'] - a_c(presented prompt)[t] at every token t of the presented
     prompt (alignment below).
  3. Pre-norm units: Delta_pre = Delta * rms_s(i) / gain_c, with rms_s(i) the sparse model's residual RMS at
     site i averaged over reference tokens and gain_c the RMSNorm gain of channel c.
  4. Dense edit E[t] = Delta_pre[t] * g_i.weight[:, c] (outer product with decoder column c): [T, d_dense].
     The decoder maps pre-norm sparse residuals to pre-norm dense ones, so it already carries the scale
     ratio between the two models; `rms_ratio="dense-over-sparse"` multiplies E by rms_d(i) / rms_s(i) in
     addition (a literal reading of "rescale the bridge by the RMS ratio"; see docs/bridges.md).
  5. For strength s in [0, 1] the dense residual at site i becomes h + s * E (a hook on the one forward);
     report the dense model's probability of the target token (the counterfactual prompt's correct token)
     at the presented prompt's last position.
Baselines: no steering; a random direction with the same per-token norm (E_rand[t] = |E[t]| * u, u a
random unit vector per case); the sparse model itself steered at its node (channel c += s * Delta); the
dense model run on the counterfactual prompt; and, as a check of the bridge itself, every channel of the
site at once (E_all[t] = g_i.weight @ (h_s(counterfactual)[t'] - h_s(presented)[t]), pre-norm, unscaled).

Alignment: the two prompts of a pair differ only in a short cue but may tokenize to different lengths.
Positions of the presented prompt inside the token prefix the two prompts share get Delta = 0 (their
activations are identical by causality); every later position t is aligned from the end, with partner
t + (T_cf - T_pres), and gets Delta = 0 if the partner falls outside the counterfactual prompt or inside
the shared prefix (the longer prompt's extra cue tokens have no partner). For pairs of
equal length this is plain position-by-position alignment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparsecircuits.bridges.losses import read_sites
from sparsecircuits.bridges.modules import Bridges
from sparsecircuits.circuits.nodes import parse_node_name
from sparsecircuits.errors import UserError
from sparsecircuits.io import atomic_write
from sparsecircuits.model.config import ModelConfig
from sparsecircuits.model.gpt import GPT
from sparsecircuits.model.locations import NODE_LOCATIONS, NODE_TABLE, RESIDUAL_READ
from sparsecircuits.tasks.evaluate import TaskBatch

# Residual-read location -> the residual hook it reads, which is its bridge site: attn.act_in -> resid_in, ...
RESIDUAL_READS = {loc.hook: loc.reads_from for loc in NODE_TABLE if loc.kind == RESIDUAL_READ}
READS_TEXT = " or ".join(RESIDUAL_READS)  # "attn.act_in or mlp.act_in", for messages
RMS_RATIOS = ("none", "dense-over-sparse")
DEFAULT_STRENGTHS = tuple(round(0.1 * i, 1) for i in range(11))


@dataclass(frozen=True)
class SteerNode:
    """A residual-read node and the bridge site it sits on."""

    name: str  # "1.attn.act_in.17"
    location: str  # "1.attn.act_in"
    channel: int  # 17
    layer: int
    site: str  # "1.resid_in"
    site_index: int  # position of `site` in Bridges.sites (2 * layer, + 1 for the MLP)


def resolve_node(name: str, cfg: ModelConfig) -> SteerNode:
    """UserError unless `name` is a post-RMSNorm residual read channel of the sparse model."""
    location, channel = parse_node_name(name, cfg)
    layer_text, _, kind = location.partition(".")
    if kind not in RESIDUAL_READS:
        raise UserError(
            f"node {name!r} is not a residual read: bridges map the residual stream, so steering needs an "
            f"{READS_TEXT} node (e.g. {layer_text}.{next(iter(RESIDUAL_READS))}.0)"
        )
    if channel >= cfg.d_model:
        raise UserError(
            f"node {name!r} is a position channel (index >= d_model {cfg.d_model}), not a residual channel"
        )
    layer = int(layer_text)
    site_index = len(RESIDUAL_READS) * layer + list(RESIDUAL_READS).index(kind)
    return SteerNode(name, location, channel, layer, f"{layer}.{RESIDUAL_READS[kind]}", site_index)


def norm_gain(model: GPT, node: SteerNode) -> float:
    """RMSNorm gain of the node's channel (ln_1 before attention, ln_2 before the MLP)."""
    block = model.transformer.h[node.layer]
    ln = block.ln_2 if node.location.endswith("mlp.act_in") else block.ln_1
    return float(ln.weight[node.channel].detach())


# ---- cases: (presented, counterfactual) prompts and the activation difference ---------------------


@dataclass
class SteerCases:
    """One case per (pair, direction): presented prompt = row `presented` of the task batch.

    tokens: [N, T] presented prompts (right-padded); last: [N]; target: [N] the counterfactual prompt's
    correct token; delta: [N, T] counterfactual minus presented activation of the node (0 after `last`)."""

    tokens: Tensor
    last: Tensor
    target: Tensor
    delta: Tensor
    presented: Tensor  # [N] row of the task batch
    counterfactual: Tensor  # [N] row of the task batch
    equal_length: Tensor  # [N] bool


@torch.no_grad()
def node_activations(model: GPT, tokens: Tensor, locations: list[str]) -> dict[str, Tensor]:
    """Activations at node locations for every prompt [N, T]: location -> float [N, T, width]."""
    last = max(locations, key=model.hook_names().index)
    return {loc: x.float() for loc, x in model.run_with_cache(tokens, locations, stop_at=last).items()}


def shared_prefix(a: Tensor, b: Tensor) -> int:
    """Number of leading tokens two 1-D id tensors have in common."""
    n = min(len(a), len(b))
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0]) if len(differ) else n


def aligned_delta(a_pres: Tensor, a_cf: Tensor, prefix: int) -> Tensor:
    """Delta [T_pres, ...] = a_cf aligned from the end minus a_pres, 0 on the shared prefix (module docstring).

    a_pres: [T_pres, ...], a_cf: [T_cf, ...] activations over the two prompts' own tokens (any trailing
    channel dims)."""
    t = torch.arange(len(a_pres), device=a_pres.device)
    partner = t + (len(a_cf) - len(a_pres))
    valid = (t >= prefix) & (partner >= prefix) & (partner < len(a_cf))
    valid = valid.view(-1, *([1] * (a_pres.ndim - 1)))
    cf = torch.where(valid, a_cf[partner.clamp(0, len(a_cf) - 1)], a_pres)
    return cf - a_pres


def case_rows(batch: TaskBatch) -> tuple[Tensor, Tensor]:
    """(presented rows, counterfactual rows) [2P]: both directions of every pair."""
    pos = torch.arange(0, len(batch) - 1, 2)
    presented = torch.stack([pos, pos + 1], 1).flatten()
    counterfactual = torch.stack([pos + 1, pos], 1).flatten()
    return presented, counterfactual


def case_deltas(batch: TaskBatch, acts: Tensor) -> Tensor:
    """Delta for every case. acts: [2P, T, ...] activations on every prompt -> [2P, T, ...] (0 after last)."""
    presented, counterfactual = case_rows(batch)
    acts = acts.cpu()
    delta = torch.zeros(len(presented), *acts.shape[1:])
    for n, (i, j) in enumerate(zip(presented.tolist(), counterfactual.tolist(), strict=True)):
        li, lj = int(batch.last[i]) + 1, int(batch.last[j]) + 1
        prefix = shared_prefix(batch.tokens[i, :li], batch.tokens[j, :lj])
        delta[n, :li] = aligned_delta(acts[i, :li], acts[j, :lj], prefix)
    return delta


def build_cases(batch: TaskBatch, acts: Tensor) -> SteerCases:
    """Both directions of every pair. acts: [2P, T] the node's activation on every prompt of `batch`."""
    p, q = case_rows(batch)
    return SteerCases(
        tokens=batch.tokens[p],
        last=batch.last[p],
        target=batch.correct[q],
        delta=case_deltas(batch, acts),
        presented=p,
        counterfactual=q,
        equal_length=batch.last[p] == batch.last[q],
    )


# ---- edits and readout ---------------------------------------------------------------------------


@dataclass
class Scaling:
    """How the sparse delta becomes a dense edit (module docstring, steps 3-4)."""

    sparse_rms: float
    dense_rms: float
    gain: float
    rms_ratio: str = "none"

    @property
    def factor(self) -> float:
        """Multiplier from the post-norm sparse delta to the coefficient on the decoder column."""
        if abs(self.gain) < 1e-8:
            raise UserError(
                "the node's RMSNorm gain is 0: the channel is never read, so it cannot be steered"
            )
        f = self.sparse_rms / self.gain
        return f * self.dense_rms / self.sparse_rms if self.rms_ratio == "dense-over-sparse" else f


def dense_edits(
    delta: Tensor, bridges: Bridges, node: SteerNode, scaling: Scaling, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """(steering edit, random edit of the same per-token norm), each [N, T, d_dense]. delta: [N, T]."""
    column = bridges.decoders[node.site_index].weight[:, node.channel].detach().float().cpu()  # [d_dense]
    coef = delta * scaling.factor  # [N, T]
    edit = coef[..., None] * column
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(delta.shape[0], column.numel(), generator=gen)
    u = u / u.norm(dim=-1, keepdim=True)
    random = (coef.abs() * column.norm())[..., None] * u[:, None, :]
    return edit, random


@torch.no_grad()
def target_probs(
    model: GPT,
    tokens: Tensor,
    last: Tensor,
    target: Tensor,
    hook_at: str | None = None,
    add: Tensor | None = None,
    strength: float = 0.0,
    channel: int | None = None,
) -> Tensor:
    """P(target) at each prompt's last position: float64 [N].

    With `hook_at`, the activation there becomes x + strength * add: add is [N, T, width], or [N, T] added
    to channel `channel` only."""
    device = next(model.parameters()).device
    hooks = {}
    if hook_at is not None and add is not None:
        add = add.to(device)

        def steer(x: Tensor) -> Tensor:
            if channel is None:
                return x + strength * add.to(x.dtype)
            out = x.clone()
            out[..., channel] = out[..., channel] + strength * add.to(x.dtype)
            return out

        hooks[hook_at] = steer
    with model.hooks(hooks):
        logits = model(tokens.to(device), at=last.to(device))  # [N, V]
    probs = logits.double().softmax(-1)
    return probs.gather(1, target.to(device)[:, None])[:, 0].cpu()


CURVES = ("steer", "random", "all_channels", "sparse_steer")  # P(target) against strength


@dataclass
class SteerResult:
    """P(target) per case: `curves[name]` [S, N] for each strength, `levels[name]` [N]. See module docstring.

    curves: "steer" (the node's edit through the bridge), "random" (same norm, random direction),
    "all_channels" (the whole sparse residual difference at the site through the decoder), "sparse_steer"
    (the sparse model steered at the node itself). levels: "none" (dense, no steering) and
    "dense_on_counterfactual" (dense model run on the counterfactual prompt)."""

    node: SteerNode
    strengths: list[float]
    curves: dict[str, Tensor]
    levels: dict[str, Tensor]
    cases: SteerCases
    scaling: Scaling
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self, stat: str = "mean") -> dict[str, Any]:
        """Mean (or median) over cases of every curve (a list over strengths) and level (a float)."""

        def reduce(t: Tensor) -> Tensor:
            return t.mean(-1) if stat == "mean" else t.median(-1).values

        out: dict[str, Any] = {k: reduce(v).tolist() for k, v in self.curves.items()}
        out.update({k: float(reduce(v)) for k, v in self.levels.items()})
        return out

    def means(self) -> dict[str, Any]:
        return self.summary("mean")

    def to_json(self) -> dict[str, Any]:
        c = self.cases
        return {
            **self.info,
            "node": self.node.name,
            "location": self.node.location,
            "channel": self.node.channel,
            "site": self.node.site,
            "n_cases": len(c.last),
            "equal_length_pairs": int(c.equal_length[0::2].sum()),
            "alignment": "shared token prefix pinned (delta 0), rest aligned from the end",
            "scaling": {
                "sparse_rms": self.scaling.sparse_rms,
                "dense_rms": self.scaling.dense_rms,
                "norm_gain": self.scaling.gain,
                "rms_ratio": self.scaling.rms_ratio,
                "factor": self.scaling.factor,
            },
            "delta_mean_abs_last": float(c.delta[torch.arange(len(c.last)), c.last].abs().mean()),
            "strengths": self.strengths,
            "p_target_mean": self.summary("mean"),
            "p_target_median": self.summary("median"),
            "per_case": {
                "presented_row": c.presented.tolist(),
                "target_token": c.target.tolist(),
                **{k: v.tolist() for k, v in self.levels.items()},
                **{k: v.T.tolist() for k, v in self.curves.items()},
            },
        }


@torch.no_grad()
def residual_deltas(sparse: GPT, batch: TaskBatch, site: str) -> Tensor:
    """Counterfactual minus presented sparse residual at a site, aligned like Delta: [N, T, d_sparse]."""
    _, (h,) = read_sites(sparse, batch.tokens.to(next(sparse.parameters()).device), [site])
    return case_deltas(batch, h.float())


def steer(
    sparse: GPT,
    dense: GPT,
    bridges: Bridges,
    batch: TaskBatch,
    node: SteerNode,
    rms: dict[str, list[float]],
    strengths: list[float] | tuple[float, ...] = DEFAULT_STRENGTHS,
    rms_ratio: str = "none",
    seed: int = 0,
) -> SteerResult:
    """Run the recipe of the module docstring on every case of `batch`. rms: {"sparse": [L], "dense": [L]}."""
    if rms_ratio not in RMS_RATIOS:
        raise UserError(f"rms_ratio must be one of {', '.join(RMS_RATIOS)}, got {rms_ratio!r}")
    if bridges.sites[node.site_index] != node.site:
        raise UserError(f"node {node.name}: site {node.site} is not bridge {node.site_index}")
    acts = node_activations(sparse, batch.tokens.to(next(sparse.parameters()).device), [node.location])
    cases = build_cases(batch, acts[node.location][..., node.channel])
    i = node.site_index
    scaling = Scaling(rms["sparse"][i], rms["dense"][i], norm_gain(sparse, node), rms_ratio)
    edit, random = dense_edits(cases.delta, bridges, node, scaling, seed)
    with torch.no_grad():  # every channel of the site: the pre-norm residual difference through g_i
        everything = residual_deltas(sparse, batch, node.site) @ bridges.decoders[i].weight.float().cpu().T
    args = (cases.tokens, cases.last, cases.target)
    curves: dict[str, list[Tensor]] = {name: [] for name in CURVES}
    for s in strengths:
        curves["steer"].append(target_probs(dense, *args, node.site, edit, s))
        curves["random"].append(target_probs(dense, *args, node.site, random, s))
        curves["all_channels"].append(target_probs(dense, *args, node.site, everything, s))
        curves["sparse_steer"].append(
            target_probs(sparse, *args, node.location, cases.delta, s, node.channel)
        )
    cf = cases.counterfactual
    levels = {
        "none": target_probs(dense, *args),
        "dense_on_counterfactual": target_probs(dense, batch.tokens[cf], batch.last[cf], cases.target),
    }
    return SteerResult(
        node=node,
        strengths=[float(s) for s in strengths],
        curves={k: torch.stack(v) for k, v in curves.items()},
        levels=levels,
        cases=cases,
        scaling=scaling,
    )


def residual_read_nodes(names: list[str], cfg: ModelConfig) -> list[SteerNode]:
    """The residual-read nodes among `names` (others are skipped)."""
    nodes = []
    for name in names:
        location, channel = parse_node_name(name, cfg)
        if location.partition(".")[2] in RESIDUAL_READS and channel < cfg.d_model:
            nodes.append(resolve_node(name, cfg))
    return nodes


def location_nodes(location: str, cfg: ModelConfig) -> list[SteerNode]:
    """Every residual channel of a residual-read location such as "1.attn.act_in"."""
    return [resolve_node(f"{location}.{c}", cfg) for c in range(cfg.d_model)]


def pick_node(
    sparse: GPT, batch: TaskBatch, nodes: list[SteerNode], rms: dict[str, list[float]]
) -> tuple[SteerNode, float]:
    """The node with the largest mean |Delta_pre| at the presented prompts' last token, and that size.

    Delta_pre = Delta * rms_s / gain (pre-norm units), so nodes of different sites compare fairly."""
    if not nodes:
        raise UserError(f"no residual-read node ({READS_TEXT}) to choose from")
    device = next(sparse.parameters()).device
    locations = sorted({n.location for n in nodes})
    acts = node_activations(sparse, batch.tokens.to(device), locations)
    presented, _ = case_rows(batch)
    last = batch.last[presented]
    best: tuple[float, SteerNode] | None = None
    for loc in locations:
        group = [n for n in nodes if n.location == loc]
        channels = torch.tensor([n.channel for n in group])
        delta = case_deltas(batch, acts[loc][..., channels])  # [N, T, C]
        size = delta[torch.arange(len(last)), last].abs().mean(0)  # [C]
        for n, value in zip(group, size.tolist(), strict=True):
            scaled = value * rms["sparse"][n.site_index] / max(abs(norm_gain(sparse, n)), 1e-8)
            if best is None or scaled > best[0]:
                best = (scaled, n)
    assert best is not None
    return best[1], best[0]


def run_steer(
    run_dir: str | Path,
    node: str | None = None,
    circuit_path: str | Path | None = None,
    task: str | None = None,
    strengths: list[float] | tuple[float, ...] = DEFAULT_STRENGTHS,
    n_pairs: int = 32,
    split: str = "val",
    seed: int = 0,
    rms_ratio: str = "none",
    dense_dir: str | Path | None = None,
    device: str = "cpu",
) -> SteerResult:
    """Load a bridged run and steer with `node` (or a node of the circuit file) on `task` prompt pairs."""
    from sparsecircuits.bridges.files import load_bridged
    from sparsecircuits.circuits.circuit_file import read_circuit
    from sparsecircuits.tasks.evaluate import encode_task
    from sparsecircuits.train.distributed import resolve_device

    if (node is None) == (circuit_path is None):
        raise UserError("give exactly one of --node and --circuit")
    circuit = read_circuit(circuit_path) if circuit_path is not None else None
    task = task or (circuit or {}).get("task", {}).get("name")
    if task is None:
        raise UserError("--task is required with --node")
    bridged = load_bridged(run_dir, dense_dir, resolve_device(device))
    sparse, dense = bridged.sparse.model, bridged.dense.model
    rms = bridged.meta.get("reference_rms")
    if not rms:
        raise UserError(f"{run_dir}/bridges.json has no reference_rms: training did not finish")
    candidates = _candidates(node, circuit, circuit_path, sparse)  # bad nodes fail before any forward
    n_ctx = min(sparse.cfg.n_ctx, dense.cfg.n_ctx)
    batch = encode_task(task, bridged.sparse.tokenizer, n_pairs, split=split, seed=seed, n_ctx=n_ctx)
    selection = None
    if len(candidates) == 1:
        chosen = candidates[0]
    else:
        # choose on prompts of another split than the ones measured, so the choice is not fit to them
        pick_split = "train" if split != "train" else "val"
        pick_batch = encode_task(
            task, bridged.sparse.tokenizer, n_pairs, split=pick_split, seed=seed, n_ctx=n_ctx
        )
        chosen, size = pick_node(sparse, pick_batch, candidates, rms)
        selection = {"split": pick_split, "candidates": len(candidates), "mean_abs_delta_prenorm_last": size}
    result = steer(sparse, dense, bridged.bridges, batch, chosen, rms, strengths, rms_ratio, seed)
    result.info = {
        "bridged_run": str(Path(run_dir).resolve()),
        "dense_run": str(bridged.dense.path),
        "task": task,
        "split": split,
        "n_pairs": n_pairs,
        "seed": seed,
        "circuit": str(circuit_path) if circuit_path is not None else None,
        "node_selection": selection,
    }
    return result


def _candidates(node: str | None, circuit: dict | None, circuit_path: Any, sparse: GPT) -> list[SteerNode]:
    """One node for `--node LAYER.LOC.INDEX`; every channel for `--node LAYER.LOC`; a circuit's residual reads."""
    cfg = sparse.cfg
    if circuit is not None:
        from sparsecircuits.circuits.circuit_file import check_pruned_from
        from sparsecircuits.circuits.means import model_content_hash

        check_pruned_from(circuit, model_content_hash(sparse), str(circuit_path))
        nodes = residual_read_nodes(list(circuit["nodes"]), cfg)
        if not nodes:
            raise UserError(f"{circuit_path} has no residual-read node ({READS_TEXT}) to steer")
        return nodes
    assert node is not None
    layer, _, loc = node.partition(".")
    if layer.isdigit() and loc in NODE_LOCATIONS:  # a location: every channel, if it is a residual read
        if loc not in RESIDUAL_READS:
            raise UserError(f"{node!r} is not a residual read: steering needs {READS_TEXT}")
        if int(layer) >= cfg.n_layer:
            raise UserError(f"location {node!r}: layer {layer} out of range (n_layer {cfg.n_layer})")
        return location_nodes(node, cfg)
    return [resolve_node(node, cfg)]


# ---- plot ----------------------------------------------------------------------------------------


def plot_steering(result: SteerResult, path: str | Path, title: str = "") -> None:
    """P(target) against steering strength (the paper's Fig 9), log y axis; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = result.means()
    x = result.strengths
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    ax.plot(x, m["steer"], marker="o", ms=3, color="C0", label="steer through bridge")
    ax.plot(x, m["random"], marker="s", ms=3, color="C7", label="random direction, same norm")
    ax.axhline(m["none"], color="k", ls="--", lw=1, label="no steering")
    ax.plot(x, m["all_channels"], color="C3", ls="--", lw=1, label="all channels of the site (bridge check)")
    ax.plot(x, m["sparse_steer"], color="C1", ls=":", lw=1.5, label="sparse model, steered at node")
    ax.axhline(
        m["dense_on_counterfactual"], color="C2", ls="-.", lw=1, label="dense on counterfactual prompt"
    )
    ax.set_yscale("log")
    ax.set_xlabel("steering strength")
    ax.set_ylabel("mean P(target) in the dense model")
    ax.set_title(title or f"{result.node.name} -> {result.node.site}", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
