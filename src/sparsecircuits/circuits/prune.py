"""Learned node pruning (PAPER.md 7): train gates with a node-count penalty, then bisect on the node count.

1. Gates H(tau) at every node location, tau ~ N(init_bias, init_scale^2) clamped to [-1, 1].
2. Minimise task_loss + k_coef * (active nodes) with AdamW, clipping and linear decay (warmup optional).
3. Rank nodes by tau; bisect on k (keep the top k) for the smallest circuit whose loss on a fixed
   evaluation (validation) set reaches the target, recalibrating the logit difference (scale a >= 0 and
   shift) on that set at each k. The winner's calibration is stored and applied frozen to the test split.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field

import torch
from tqdm import tqdm

from sparsecircuits.circuits.ablations import DonorSource, make_donor_source
from sparsecircuits.circuits.cleanup import clean_up, fewest, put_back
from sparsecircuits.circuits.edge_masks import EdgeMask
from sparsecircuits.circuits.edges import count_edges
from sparsecircuits.circuits.masks import Gates, NodeMask
from sparsecircuits.circuits.parallel import Replicas
from sparsecircuits.circuits.prefix import Prefix, record_prefix
from sparsecircuits.circuits.scoring import (
    Calibration,
    PromptSet,
    Score,
    Target,
    as_target,
    gated_diff,
    score,
    task_loss,
)
from sparsecircuits.errors import UserError
from sparsecircuits.model import GPT
from sparsecircuits.tasks.evaluate import DEFAULT_CONVENTION, check_convention

MAX_EFFECT_NODES = 128  # per-node ablation effects cost one forward each (larger circuits: tau only)


@dataclass
class PruneConfig:
    target_loss: float = 0.15
    ablation: str = "mean"  # a name of circuits.ablations.ABLATIONS
    loss_convention: str = DEFAULT_CONVENTION  # "pair-sum" (the authors') or "mean" (tasks/evaluate.py)
    steps: int = 200
    batch_pairs: int = 32  # the paper uses 64 pairs = 128 prompts; 32 halves the CPU cost (--batch-pairs 64)
    # The paper's search center is 1e-4 for a few thousand steps; at 200 steps 1e-2 gives far smaller circuits
    # (docs/circuits.md, "Choosing the defaults"; 1e-1 closes every gate)
    k_coef: float = 1e-2
    lr: float = 3e-3
    weight_decay: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.95  # the paper's inv_beta2 = 0.05
    warmup_frac: float = 0.0
    init_bias: float = 0.1
    init_scale: float = 0.01
    temp: float = 1.0  # heaviside_temp
    grad_clip: float = 1.0
    calibrate: bool = True
    # The circuit must also answer right before calibration on this share of the validation prompts (0: off)
    min_raw_accuracy: float = 0.9
    tie_qk: bool = False  # one gate per query/key channel pair (PAPER.md 5.1, fn 17)
    cleanup: bool = True  # greedy node removal after the bisection (circuits/cleanup.py)
    # held-out check of the clean-up and the edge stage, on this many more training-split pairs (0: off)
    holdout_pairs: int = 128
    cleanup_max_nodes: int = 256  # larger circuits skip it (one forward per node and pass)
    edges: bool = True  # learn edge gates inside the node circuit, then bisect them (circuits/edge_masks.py)
    # 100 steps at 6e-3 keep as many edges as 200 at the node gates' 3e-3 (within 2 %, 9 demo circuits;
    # docs/circuits.md "Edge pruning") in half the time
    edge_steps: int = 100
    edge_k_coef: float = 1e-4  # penalty per open edge
    edge_lr: float = 6e-3
    edges_max: int = 4096  # node circuits with more edges skip the edge stage (too big to read anyway)
    seed: int = 0

    def validate(self) -> PruneConfig:
        if not self.target_loss > 0:
            raise UserError(f"target loss must be positive, got {self.target_loss}")
        if self.steps < 1 or self.batch_pairs < 1 or self.edge_steps < 1:
            raise UserError("steps, edge_steps and batch_pairs must be at least 1")
        if self.holdout_pairs < 0:
            raise UserError(f"holdout_pairs must be at least 0, got {self.holdout_pairs}")
        if not (self.lr > 0 and self.edge_lr > 0):
            raise UserError(f"learning rates must be positive, got lr {self.lr}, edge_lr {self.edge_lr}")
        if self.temp <= 0:
            raise UserError(f"temp must be positive, got {self.temp}")
        if not 0.0 <= self.min_raw_accuracy <= 1.0:
            raise UserError(f"min_raw_accuracy must be in [0, 1], got {self.min_raw_accuracy}")
        check_convention(self.loss_convention)
        return self


@dataclass
class PruneResult:
    mask: NodeMask
    k: int  # nodes in the circuit (after the clean-up)
    gates: torch.Tensor  # [n_nodes] 0/1, the circuit
    score: Score  # of the circuit on the evaluation prompts
    full_score: Score  # of the unpruned model on the same prompts
    bisection: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    config: dict = field(default_factory=dict)
    evaluate: Evaluator | None = None  # the bisection's scorer on the validation prompts
    stages: dict = field(default_factory=dict)  # nodes after the bisection and after the clean-up
    bisection_gates: torch.Tensor | None = None  # [n_nodes] the circuit before the clean-up
    # node index -> validation loss with that node alone removed from the final circuit (closed edges ablated);
    # empty above MAX_EFFECT_NODES nodes
    removal_effects: dict[int, float] = field(default_factory=dict)
    edge_mask: EdgeMask | None = None  # the edge stage's gates over the node circuit's edges, if it ran
    edge_gates: torch.Tensor | None = None  # [n_edges] 0/1: the kept edges


def lr_factor(step: int, steps: int, warmup_frac: float) -> float:
    """Linear warmup over warmup_frac of the steps (none by default), then linear decay to 0."""
    warm = int(warmup_frac * steps)
    if step < warm:
        return (step + 1) / warm
    return max(0.0, 1.0 - (step - warm) / max(1, steps - warm))


def train_mask(
    model: GPT,
    mask: Gates,
    train: PromptSet,
    cfg: PruneConfig,
    progress: bool = True,
    donors: DonorSource | None = None,
    diff: Callable[[GPT, torch.Tensor, PromptSet], torch.Tensor] | None = None,
    k_coef: float | None = None,
    steps: int | None = None,
    pool: Replicas | None = None,
    lr: float | None = None,
) -> list[dict]:
    """Optimise the gates on batches of training pairs. Returns the logged history.

    donors: for the resample ablations, where each batch's ablated values come from (fresh every step).
    diff: (model, gates, chunk) -> correct-minus-wrong logit difference [n] of the gated model on a chunk of
    prompts; by default the node gates of `mask`. k_coef, steps, lr: override the config's (the edge stage has
    its own). pool: model replicas on which a step's length buckets run side by side. Each bucket's gradient is
    taken on its own and the buckets' are summed in order, so the mask never depends on the number of workers.
    """
    k_coef = cfg.k_coef if k_coef is None else k_coef
    steps = cfg.steps if steps is None else steps
    lr = cfg.lr if lr is None else lr
    pool = pool or Replicas(model)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW([mask.tau], lr=lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    n_prompts = min(len(train), 2 * cfg.batch_pairs)
    history: list[dict] = []
    bar = tqdm(range(steps), desc="prune", disable=not progress, leave=False)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(step, steps, cfg.warmup_frac)
        batch = train.subset(torch.randperm(len(train), generator=gen)[:n_prompts])
        values = donors(batch.tokens, batch.last, mask.locations) if donors and diff is None else None

        one = functools.partial(_bucket_gradient, batch=batch, values=values, mask=mask, diff=diff, cfg=cfg)
        shares = pool.map(one, batch.length_buckets()[::-1])  # longest first: the workers finish together
        active = mask.gates().sum()
        opt.zero_grad(set_to_none=True)
        (k_coef * active).backward()
        for _, grad in shares:  # in bucket order, whatever the number of workers
            mask.tau.grad += grad
        t_loss = sum(share for share, _ in shares)
        torch.nn.utils.clip_grad_norm_([mask.tau], cfg.grad_clip)
        opt.step()
        mask.clamp_()
        if step % 10 == 0 or step == steps - 1:
            history.append({"step": step, "task_loss": float(t_loss), "active": int(active.detach())})
            bar.set_postfix(task_loss=f"{float(t_loss):.3f}", active=int(active.detach()))
    return history


def _bucket_gradient(
    model: GPT,
    rows: torch.Tensor,
    batch: PromptSet,
    values: dict[str, torch.Tensor] | None,
    mask: Gates,
    diff: Callable[[GPT, torch.Tensor, PromptSet], torch.Tensor] | None,
    cfg: PruneConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One length bucket's share of the batch's task loss (0-d) and its gradient with respect to tau."""
    chunk = batch.subset(rows)
    gates = mask.gates()
    if diff is None:
        part = None if values is None else {k: v[rows, : chunk.tokens.shape[1]] for k, v in values.items()}
        d = gated_diff(model, mask, gates, chunk, part)
    else:
        d = diff(model, gates, chunk)
    share = task_loss(d, cfg.loss_convention) * (len(rows) / len(batch))
    if not share.requires_grad:  # no gate reaches these logits (e.g. every edge gate open: no hook installed)
        return share, torch.zeros_like(mask.tau)
    (grad,) = torch.autograd.grad(share, mask.tau, allow_unused=True)
    return share.detach(), torch.zeros_like(mask.tau) if grad is None else grad


class Evaluator:
    """Scores discrete gate vectors on a fixed prompt set (same batches and donors every time: the loss is a
    function of the gates).

    calibrated: fit a calibration on these prompts for each gate vector (named `split` in the result) unless
    one is passed frozen to the call. donors: for the resample ablations, drawn once here.
    """

    def __init__(
        self,
        model: GPT,
        mask: NodeMask,
        prompts: PromptSet,
        calibrated: bool,
        convention: str = DEFAULT_CONVENTION,
        donors: DonorSource | None = None,
        split: str = "val",
        pool: Replicas | None = None,
    ):
        self.model, self.mask, self.prompts, self.calibrated = model, mask, prompts, calibrated
        self.convention, self.split, self.pool = convention, split, pool
        self.values = donors(prompts.tokens, prompts.last, mask.locations) if donors else None

    def _init_like(self, other: Evaluator, mask: Gates) -> None:
        """Initialise with `other`'s model, prompts, scoring and pool, another mask and no donors."""
        Evaluator.__init__(
            self,
            other.model,
            mask,
            other.prompts,
            other.calibrated,
            other.convention,
            None,
            other.split,
            other.pool,
        )

    def on(self, model: GPT) -> Evaluator:
        """This evaluator on another replica of its model (parallel.Replicas)."""
        if model is self.model:
            return self
        twin = copy.copy(self)
        twin.model = model
        return twin

    def many(self, gate_list: list[torch.Tensor]) -> list[Score]:
        """Scores of several gate vectors, side by side on the pool's replicas when there is a pool."""
        if self.pool is None:
            return [self(g) for g in gate_list]
        return self.pool.map(lambda model, g: self.on(model)(g), gate_list)

    @property
    def width(self) -> int:
        """How many gate vectors `many` scores at once."""
        return 1 if self.pool is None else self.pool.workers

    prefix: Prefix | None = None  # set by rebase

    def hooked(self) -> AbstractContextManager:
        """The hooks its scores run under besides the node gates (none here; closed edges in WithClosedEdges)."""
        return contextlib.nullcontext()

    @torch.no_grad()
    def diff(self, gates: torch.Tensor) -> torch.Tensor:
        """Correct-minus-wrong logit difference of the gated model on the prompts. Returns [N]."""
        with self.hooked():
            return gated_diff(self.model, self.mask, gates, self.prompts, self.values, self.prefix)

    @torch.no_grad()
    def rebase(self, gates: torch.Tensor | None) -> None:
        """Record the forward of the circuit `gates` [n_nodes] up to its last resume point, so that later
        scores of gate vectors differing from it only late in the forward resume there (circuits/prefix.py;
        same scores); None forgets it. Only for scores of node gates under this evaluator's own hooks."""
        base, self.prefix = self.prefix, None
        if gates is not None and self.values is None:
            with self.hooked():  # from the last prefix on: a removal in the last block re-runs nothing
                self.prefix = record_prefix(self.model, self.mask, gates, self.prompts, base)

    def __call__(self, gates: torch.Tensor, calibration: Calibration | None = None) -> Score:
        return score(
            self.diff(gates), self.prompts.sign, self.convention, calibration, self.calibrated, self.split
        )


class EdgeEvaluator(Evaluator):
    """Scores edge gate vectors: the node circuit `node_gates` of `nodes` with the closed edges ablated."""

    def __init__(self, nodes: Evaluator, edges: EdgeMask, node_gates: torch.Tensor):
        self._init_like(nodes, edges)
        self.nodes, self.node_gates = nodes, node_gates

    def on(self, model: GPT) -> EdgeEvaluator:
        twin = super().on(model)
        if twin is not self:
            twin.nodes = self.nodes.on(model)
        return twin

    @torch.no_grad()
    def diff(self, gates: torch.Tensor) -> torch.Tensor:
        with self.mask.hooks(self.model, gates):
            return self.nodes.diff(self.node_gates)


class WithClosedEdges(Evaluator):
    """Scores node gate vectors of `nodes` with the edge stage's closed edges (`edge_gates` [n_edges]) ablated."""

    def __init__(self, nodes: Evaluator, edges: EdgeMask, edge_gates: torch.Tensor):
        self._init_like(nodes, nodes.mask)
        self.values, self.edges, self.edge_gates = nodes.values, edges, edge_gates

    def hooked(self) -> AbstractContextManager:
        return self.edges.hooks(self.model, self.edge_gates)


class HeldOut:
    """The held-out check of a stage that removes units greedily by their effect on the validation pairs (the
    clean-up, the edge bisection), which can pick removals whose small effect was luck. A circuit's held-out
    score is its loss on pairs used for nothing else (training-split pairs after those the mask trained on),
    under the calibration fitted for it on the validation pairs, frozen."""

    def __init__(self, val: Evaluator, held: Evaluator):
        self.val, self.held = val, held

    def score(self, gates: torch.Tensor, val: Score | None = None) -> Score:
        """The held-out score of the gate vector `gates` (of the evaluators' mask); val: its validation score,
        if already known."""
        return self.held(gates, (val or self.val(gates)).calibration)

    def floor(self, before: torch.Tensor, target: Target) -> Target:
        """What the stage's result must reach held out: the target, or the score of the circuit `before` the
        stage where that one misses it already (the stage may not make it worse)."""
        s = self.score(before)
        return Target(max(target.loss, s.loss), min(target.min_raw_accuracy, s.accuracy_raw))


def removal_effects_of(evaluate: Evaluator, gates: torch.Tensor, known: dict[int, float]) -> dict[int, float]:
    """node index -> validation loss with that node alone removed from the circuit `gates` [n_nodes]; `known`
    losses are reused, the others scored side by side (evaluate.many), resuming after the circuit's forward
    up to each node (evaluate.rebase)."""
    kept = torch.nonzero(gates).flatten().tolist()
    missing = [i for i in kept if i not in known]
    candidates = []
    for i in missing:
        g = gates.clone()
        g[i] = 0.0
        candidates.append(g)
    evaluate.rebase(gates)
    try:
        measured = {i: s.loss for i, s in zip(missing, evaluate.many(candidates))}
    finally:
        evaluate.rebase(None)
    return {i: known[i] if i in known else measured[i] for i in kept}


def bisect_nodes(evaluate: Evaluator, mask: Gates, target: float | Target) -> tuple[int, Score, list[dict]]:
    """Smallest k (top-k units by tau; a unit is a node, a tied query/key pair or an edge) that meets the target
    (a loss, or a scoring.Target), by bisection. hi always meets it (all units kept: the caller checks)."""
    target = as_target(target)
    n = mask.n_units
    trace: list[dict] = []

    def at(k: int) -> Score:
        s = evaluate(mask.top_k_gates(k))
        trace.append({"k": k, "loss": s.loss, "loss_raw": s.loss_raw, "accuracy_raw": s.accuracy_raw})
        return s

    lo, hi = 0, n
    best = at(n)
    on = int((mask.tau > 0).sum())
    if 0 < on < n:  # start from the trained mask's own size: usually close, and halves the search
        s = at(on)
        if target.met_by(s):
            hi, best = on, s
        else:
            lo = on
    while hi - lo > 1:
        mid = (lo + hi) // 2
        s = at(mid)
        if target.met_by(s):
            hi, best = mid, s
        else:
            lo = mid
    return hi, best, sorted(trace, key=lambda r: r["k"])


def prune(
    model: GPT,
    means: dict[str, torch.Tensor] | None,
    train: PromptSet,
    evaluation: PromptSet,
    cfg: PruneConfig,
    progress: bool = True,
    pretraining: str | None = None,
    workers: int = 1,
    effects: bool = True,
    held_out: PromptSet | None = None,
    trained: NodeMask | None = None,
) -> PruneResult:
    """Learn node gates for one task and bisect to the target loss. `model` is left unchanged.

    held_out: pairs used for nothing else, for the held-out check of the clean-up and the edge stage
    (HeldOut); None skips the check.
    pretraining: a token file (the dataset's val.bin), needed by the "resample" ablation's donors.
    workers: threads that score candidate circuits side by side (circuits/parallel.py); the result does not
    depend on it. effects: measure each node's removal effect on the final circuit (one forward per node the
    clean-up did not already score against it). trained: gates already trained on these prompts under the
    same ablation (an earlier trial's `PruneResult.mask`); then no training, the stages start from its ranking.
    """
    cfg.validate()
    model.eval()
    model.requires_grad_(False)
    with Replicas(model, workers) as pool:
        return _prune(
            model, means, train, evaluation, cfg, progress, pretraining, pool, effects, held_out, trained
        )


def _prune(
    model,
    means,
    train,
    evaluation,
    cfg,
    progress,
    pretraining,
    pool: Replicas,
    effects: bool,
    held_out,
    trained,
) -> PruneResult:
    t0 = time.perf_counter()
    mask = trained if trained is not None else _new_mask(model, means, cfg)
    donors = make_donor_source(model, cfg.ablation, pretraining, cfg.seed)
    evaluate = Evaluator(model, mask, evaluation, cfg.calibrate, cfg.loss_convention, donors, pool=pool)
    held = None
    if held_out is not None:
        scorer = Evaluator(
            model, mask, held_out, cfg.calibrate, cfg.loss_convention, donors, "held-out", pool
        )
        held = HeldOut(evaluate, scorer)
    full = evaluate(torch.ones(mask.n_nodes))
    if full.loss > cfg.target_loss:
        raise UserError(
            f"target loss {cfg.target_loss:g} ({cfg.loss_convention}) is out of reach: the unpruned model's "
            f"task loss is {full.loss:.4f}"
        )
    # a circuit need not answer better than the model it came from
    target = Target(cfg.target_loss, min(cfg.min_raw_accuracy, full.accuracy_raw))
    history = [] if trained is not None else train_mask(model, mask, train, cfg, progress, donors, pool=pool)
    k, best, trace = bisect_nodes(evaluate, mask, target)
    gates = bisected = mask.top_k_gates(k)
    if not math.isfinite(best.loss):
        raise UserError("pruning diverged: non-finite task loss")
    stages = {"bisection": {"nodes": int(gates.sum()), "seconds": round(time.perf_counter() - t0, 2)}}
    removal_effects: dict[int, float] = {}
    if cfg.cleanup and int(gates.sum()) <= cfg.cleanup_max_nodes:
        gates, best, removal_effects, stages["cleanup"] = _clean_up_stage(
            evaluate, mask, gates, target, held, progress
        )
    elif cfg.cleanup:
        stages["cleanup"] = {"skipped": f"more than {cfg.cleanup_max_nodes} nodes"}
    edge_mask = edge_gates = None
    if cfg.edges and donors:
        stages["edges"] = {"skipped": f"the {cfg.ablation} ablation has no fixed value to ablate an edge to"}
    elif cfg.edges and _n_edges(model, mask, gates) > cfg.edges_max:
        stages["edges"] = {"skipped": f"more than {cfg.edges_max} edges"}
    elif cfg.edges:
        t1 = time.perf_counter()
        edge_mask, edge_gates, edge_best, edge_trace, edge_check = prune_edges(
            model, mask, gates, train, evaluate, cfg, target, progress, held
        )
        if edge_gates is not None:
            best = edge_best
            history = history + [{"stage": "edges", **row} for row in edge_trace]
        stages["edges"] = {
            "nodes": int(gates.sum()),
            "edges_before": edge_mask.n_edges,
            "edges": int(edge_gates.sum()) if edge_gates is not None else edge_mask.n_edges,
            "seconds": round(time.perf_counter() - t1, 2),
        }
        if edge_check:
            stages["edges"]["held_out"] = edge_check
    if effects and int(gates.sum()) <= MAX_EFFECT_NODES:
        # An edge stage that kept every edge installs no hook (EdgeMask.hooks): the clean-up's effects hold.
        closed = edge_gates is not None and not bool(edge_gates.all())
        final = WithClosedEdges(evaluate, edge_mask, edge_gates) if closed else evaluate
        known = {} if closed else removal_effects
        removal_effects = removal_effects_of(final, gates, known)
    else:
        removal_effects = {}
    seconds = time.perf_counter() - t0
    return PruneResult(
        mask,
        int(gates.sum()),
        gates,
        best,
        full,
        trace,
        history,
        seconds,
        asdict(cfg),
        evaluate,
        stages,
        bisected,
        removal_effects,
        edge_mask,
        edge_gates,
    )


def _new_mask(model: GPT, means, cfg: PruneConfig) -> NodeMask:
    """Untrained node gates for `model`, every one open (tau ~ N(init_bias, init_scale^2))."""
    return NodeMask.for_model(
        model,
        means,
        cfg.ablation,
        cfg.init_bias,
        cfg.init_scale,
        cfg.temp,
        generator=torch.Generator().manual_seed(cfg.seed),
        tie_qk=cfg.tie_qk,
    )


def _clean_up_stage(
    evaluate: Evaluator,
    mask: NodeMask,
    gates: torch.Tensor,
    target: Target,
    held: HeldOut | None,
    progress: bool,
) -> tuple[torch.Tensor, Score, dict[int, float], dict]:
    """The clean-up of the bisection's circuit `gates` [n_nodes], then its held-out check: removed nodes are
    put back, the fewest of the last removals that make the circuit reach the HeldOut floor. Returns (gates, validation
    score, per-node removal effects where still valid, the stage's record)."""
    t0 = time.perf_counter()
    try:
        cleaned = clean_up(
            evaluate,
            gates,
            target,
            mask.unit_index(),
            progress,
            evaluate.many,
            evaluate.width,
            evaluate.rebase,
        )
    finally:
        evaluate.rebase(None)  # the edge stage scores the nodes under other hooks
    record: dict = {"passes": cleaned.passes, "kept_by": cleaned.kept_by}
    cleaned_gates, best = cleaned.gates, cleaned.score
    effects = cleaned.effects if mask.units is None else {}  # a tied unit is not one node
    if held is not None and cleaned.removed:
        floor = held.floor(gates, target)
        cleaned_gates, back = put_back(
            lambda g: floor.met_by(held.score(g)), cleaned_gates, cleaned.removed, mask.unit_index()
        )
        if back:
            best, effects = evaluate(cleaned_gates), {}
        record["held_out"] = _check_record(held.score(cleaned_gates, best), floor, back, cleaned.nodes_after)
    record["nodes"] = int(cleaned_gates.sum())
    record["seconds"] = round(time.perf_counter() - t0, 2)
    return cleaned_gates, best, effects, record


def _check_record(s: Score, floor: Target, back: int, before: int) -> dict:
    """What a stage's circuit file records of its held-out check."""
    return {
        "size_before": before,
        "put_back": back,
        "loss": round(s.loss, 4),
        "accuracy_raw": round(s.accuracy_raw, 4),
        "floor": round(floor.loss, 4),
    }


def _n_edges(model: GPT, mask: NodeMask, gates: torch.Tensor) -> int:
    """Edges of the node circuit `gates` [n_nodes]."""
    return count_edges(model.state_dict(), model.cfg, {k: g.bool() for k, g in mask.split(gates).items()})


def prune_edges(
    model: GPT,
    mask: NodeMask,
    node_gates: torch.Tensor,
    train: PromptSet,
    evaluate: Evaluator,
    cfg: PruneConfig,
    target: float | Target,
    progress: bool = True,
    held: HeldOut | None = None,
) -> tuple[EdgeMask, torch.Tensor | None, Score | None, list[dict], dict | None]:
    """The edge stage: learn a gate per edge of the node circuit `node_gates` [n_nodes] with a per-edge penalty,
    then bisect on the number of kept edges for the fewest that meet the target on the validation prompts.

    held: the node stage's held-out check; then the kept edges also reach its floor, re-added by tau rank.
    Returns (edge mask, kept-edge gates [n_edges] or None when the circuit has no edge, their score, the
    training history followed by the bisection trace, the held-out check's record or None).
    """
    edges = EdgeMask(
        model,
        mask,
        node_gates,
        cfg.init_bias,
        cfg.init_scale,
        cfg.temp,
        torch.Generator().manual_seed(cfg.seed),
    ).to(node_gates.device)
    if edges.n_edges == 0:
        return edges, None, None, [], None

    def diff(replica: GPT, gates: torch.Tensor, chunk: PromptSet) -> torch.Tensor:
        with edges.hooks(replica, gates):
            return gated_diff(replica, mask, node_gates, chunk)

    history = train_mask(
        model,
        edges,
        train,
        cfg,
        progress,
        diff=diff,
        k_coef=cfg.edge_k_coef,
        steps=cfg.edge_steps,
        lr=cfg.edge_lr,
        pool=evaluate.pool,
    )
    edge_eval = EdgeEvaluator(evaluate, edges, node_gates)
    k, best, trace = bisect_nodes(edge_eval, edges, target)
    check, target = None, as_target(target)
    if held is not None:
        k, best, check = _widen_to_held_out(
            HeldOut(edge_eval, EdgeEvaluator(held.held, edges, node_gates)), edges, k, target
        )
    return edges, edges.top_k_gates(k), best, history + [{"bisection": row} for row in trace], check


def _widen_to_held_out(held: HeldOut, edges: Gates, k: int, target: Target) -> tuple[int, Score, dict]:
    """The edge bisection's held-out check: the fewest top edges, at least k, that meet both the target on the
    validation pairs and the HeldOut floor (the node circuit's held-out score where it misses the target),
    by bisection on [k, n_edges] (all edges open is the node circuit, which meets both)."""
    n = edges.n_units
    floor = held.floor(torch.ones(n), target)

    def holds(j: int) -> bool:
        g = edges.top_k_gates(j)
        val = held.val(g)
        return target.met_by(val) and floor.met_by(held.score(g, val))

    kept = fewest(holds, k, n)
    g = edges.top_k_gates(kept)
    val = held.val(g)
    return kept, val, _check_record(held.score(g, val), floor, kept - k, k)
