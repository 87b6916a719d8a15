"""Joint training of a weight-sparse model and its bridges against a frozen dense model (PAPER.md 11.3).

`BridgeTrainer` is the trainer (train/trainer.py: its loop, schedules, logging and checkpoints) with the
bridged loss in place of the LM loss and the bridges' terms measured at every evaluation. One step:
  1. forward + backward of `bridge_losses` (LM + NMSE + KL_d->s + KL_s->d) on one batch;
  2. clip the global gradient RMS (sparse model and bridges together);
  3. AdamW with the sharkfin LR, fp32 master weights (bf16 autocast on CUDA);
  4. project the sparse model onto the current L0 fraction with the project's WeightSparsifier.
     The bridges and the dense model are never sparsified; the dense model is never updated.

The run directory is a normal run of the sparse model (config.json, tokenizer.json, metrics.jsonl,
checkpoints/, model.safetensors; `load_run` opens it) plus bridges.json and bridges.safetensors.
Single process only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparsecircuits.bridges.config import BridgeConfig, build_bridge_config, split_sets
from sparsecircuits.bridges.files import (
    bridges_meta,
    check_same_vocab,
    open_dense,
    read_meta,
    save_bridges,
    write_meta,
)
from sparsecircuits.bridges.losses import bridge_losses, read_sites
from sparsecircuits.bridges.modules import BridgedModel, Bridges, check_compatible
from sparsecircuits.circuits.means import model_content_hash
from sparsecircuits.data.shards import iter_eval_batches
from sparsecircuits.data.tokenizer import load_tokenizer
from sparsecircuits.errors import UserError
from sparsecircuits.model.gpt import GPT
from sparsecircuits.run import MODEL_FILE, Run, load_run
from sparsecircuits.train.config import TrainConfig
from sparsecircuits.train.distributed import DistEnv, autocast, dist_env, resolve_device
from sparsecircuits.train.sparsity import WeightSparsifier
from sparsecircuits.train.trainer import (
    RunSetup,
    Trainer,
    build_optimizer,
    create_run_dir,
    optimizer_step,
    prepare_run,
)


@dataclass
class BridgedSetup:
    run: RunSetup  # the sparse model's run (directory, data, model and train config, resume point)
    dense: Run  # frozen, on the training device
    bridge_cfg: BridgeConfig
    init: Run | None = None  # a sparse run whose weights start the sparse model (new runs only)


# ---- setup ---------------------------------------------------------------------------------------


def prepare_bridged_run(
    dense_dir: str | Path | None,
    data_dir: str | Path,
    out: str | Path,
    preset: str | None = None,
    sets: Sequence[str] = (),
    resume: bool = False,
    force: bool = False,
    device: str | None = None,
    init: str | Path | None = None,
) -> BridgedSetup:
    """Check everything, then create the run directory (config.json, tokenizer.json, bridges.json).

    The sparse model takes the dense model's n_layer unless `--set model.n_layer` says otherwise (then it
    must agree). With `init` the sparse model starts from that run's weights (same model config) and, unless
    `train.anneal_frac` is set, at its target L0 from the first step. A bad command leaves nothing on disk."""
    if dist_env().enabled:
        raise UserError("bridges train runs in a single process; start it without torchrun")
    bridge_sets, run_sets = split_sets(sets)
    if resume:
        if init is not None:
            raise UserError("--init starts a new run; drop it with --resume")
        return _resume(dense_dir, data_dir, out, preset, sets, device)
    if dense_dir is None:
        raise UserError("--dense RUN is required for a new bridged run")
    dense = load_run(dense_dir, "cpu")
    bridge_cfg = build_bridge_config(bridge_sets)
    if not any(s.strip().startswith("model.n_layer") for s in run_sets):
        run_sets = [f"model.n_layer={dense.model.cfg.n_layer}", *run_sets]
    if init is not None and not any(s.strip().startswith("train.anneal_frac") for s in run_sets):
        run_sets.append("train.anneal_frac=0")  # the init run is already at its sparsity
    setup = prepare_run(data_dir, out, preset, False, run_sets, False, force, device, write=False)
    _check_pair(setup, dense)
    init_run = _check_init(init, setup) if init is not None else None
    create_run_dir(setup, preset or "demo", False, run_sets, DistEnv())
    meta = bridges_meta(dense, setup.model_cfg, bridge_cfg)
    if init_run is not None:
        meta["init"] = {
            "path": str(init_run.path.resolve()),
            "content_hash": model_content_hash(init_run.model),
        }
    write_meta(setup.run_dir, meta)
    return BridgedSetup(setup, _to_device(dense, setup.train_cfg), bridge_cfg, init_run)


def _check_init(init: str | Path, setup: RunSetup) -> Run:
    run = load_run(init, "cpu")
    if run.model.cfg != setup.model_cfg:
        mine, theirs = dataclasses.asdict(setup.model_cfg), dataclasses.asdict(run.model.cfg)
        diff = ", ".join(f"{k} {theirs[k]!r} vs {mine[k]!r}" for k in mine if mine[k] != theirs[k])
        raise UserError(
            f"--init {init}: its model differs from the bridged run's ({diff}); match it with --set"
        )
    check_same_vocab(run.tokenizer, load_tokenizer(setup.data.tokenizer_path), f"--init {init}", "the data")
    return run


def _resume(
    dense_dir: str | Path | None,
    data_dir: str | Path,
    out: str | Path,
    preset: str | None,
    sets: Sequence[str],
    device: str | None,
) -> BridgedSetup:
    if preset or sets:
        raise UserError("--resume continues with the run's own config; drop --preset and --set")
    meta = read_meta(out)
    setup = prepare_run(data_dir, out, resume=True, device=device, write=False)
    dense = open_dense(dense_dir or meta["dense"]["path"], meta, "cpu")
    _check_pair(setup, dense)
    return BridgedSetup(setup, _to_device(dense, setup.train_cfg), BridgeConfig.from_dict(meta["config"]))


def _check_pair(setup: RunSetup, dense: Run) -> None:
    check_compatible(setup.model_cfg, dense.model.cfg)
    check_same_vocab(
        load_tokenizer(setup.data.tokenizer_path),
        dense.tokenizer,
        f"data {setup.data.path}",
        f"dense run {dense.path}",
    )
    if setup.model_cfg.n_ctx > dense.model.cfg.n_ctx:
        raise UserError(
            f"training windows of {setup.model_cfg.n_ctx} tokens exceed the dense model's context "
            f"({dense.model.cfg.n_ctx}); set model.n_ctx={dense.model.cfg.n_ctx}"
        )


def _to_device(dense: Run, cfg: TrainConfig) -> Run:
    dense.model.to(resolve_device(cfg.device)).eval().requires_grad_(False)
    return dense


def build_bridged_optimizer(
    model: BridgedModel, cfg: TrainConfig, device: torch.device
) -> tuple[torch.optim.AdamW, list[str]]:
    """The trainer's AdamW for the sparse model (its exact decay rules), plus two groups for the bridges:
    weight matrices decayed, biases not. Returns the optimizer and parameter names in its order."""
    opt, names = build_optimizer(model.sparse, cfg, device)
    decay = [(n, p) for n, p in model.bridges.named_parameters() if p.ndim == 2]
    no_decay = [(n, p) for n, p in model.bridges.named_parameters() if p.ndim != 2]
    opt.add_param_group({"params": [p for _, p in decay], "weight_decay": cfg.weight_decay})
    opt.add_param_group({"params": [p for _, p in no_decay], "weight_decay": 0.0})
    return opt, [f"sparse.{n}" for n in names] + [f"bridges.{n}" for n, _ in decay + no_decay]


def bridged_step(
    model: BridgedModel,
    dense: GPT,
    opt: torch.optim.Optimizer,
    sparsifier: WeightSparsifier,
    window: Tensor,
    bridge_cfg: BridgeConfig,
    cfg: TrainConfig,
    step: int,
) -> tuple[dict[str, Tensor], Tensor]:
    """One optimizer step (module docstring) on window [B, T + 1]: the bridged loss, then the trainer's step.

    Returns (loss terms detached and summed over sites, 0-d each; grad RMS before clipping), no host sync."""
    with autocast(window.device, cfg.dtype):
        terms = bridge_losses(model, dense, window[:, :-1], window[:, 1:], bridge_cfg)
    grad_rms = optimizer_step(terms["loss"], list(model.parameters()), opt, sparsifier, cfg, step)
    return {k: v.detach().sum() for k, v in terms.items()}, grad_rms


# ---- measurements --------------------------------------------------------------------------------


@torch.no_grad()
def residual_rms(model: GPT, windows: Sequence[Tensor], sites: Sequence[str]) -> list[float]:
    """Mean over tokens of the per-token residual RMS sqrt(mean_d h^2) at each site. windows: [B, T] each."""
    device = next(model.parameters()).device
    sums = torch.zeros(len(sites), dtype=torch.float64)
    count = 0
    for idx in windows:
        _, acts = read_sites(model, idx.to(device), sites)
        sums += torch.stack([a.float().pow(2).mean(-1).sqrt().sum().double().cpu() for a in acts])
        count += idx.numel()
    return (sums / max(count, 1)).tolist()


@torch.no_grad()
def evaluate_bridges(
    model: BridgedModel, dense: GPT, windows: Sequence[Tensor], cfg: BridgeConfig, dtype: str = "auto"
) -> dict[str, Any]:
    """Loss terms on fixed windows [B, T + 1], averaged over windows (token-weighted).

    Returns {"val_<term>": float summed over sites, "val_<term>_sites": [L] list} for the bridge terms."""
    device = next(model.parameters()).device
    sums: dict[str, Tensor] = {}
    count = 0
    for w in windows:
        w = w.to(device)
        with autocast(device, dtype):
            terms = bridge_losses(model, dense, w[:, :-1], w[:, 1:], cfg)
        for name, value in terms.items():
            if name not in ("lm", "loss"):
                sums[name] = sums.get(name, 0) + value.double().cpu() * w.shape[0]
        count += w.shape[0]
    out: dict[str, Any] = {}
    for name, total in sums.items():
        per_site = (total / max(count, 1)).tolist()
        out[f"val_{name}"] = sum(per_site)
        out[f"val_{name}_sites"] = per_site
    return out


# ---- the trainer ---------------------------------------------------------------------------------


class BridgeTrainer(Trainer):
    """The trainer (train/trainer.py) with the bridged loss, the bridges' evaluation and their files.

    `self.model` is the sparse GPT (sparsified, evaluated, saved as model.safetensors); `self.module` is the
    BridgedModel (sparse GPT and bridges: optimized and checkpointed); `self.dense` stays frozen."""

    desc = "bridges"
    what = "bridged training"
    advice = "Lower train.lr"

    def __init__(self, setup: BridgedSetup, progress: bool = True):
        self.bridged, self.dense = setup, setup.dense.model
        super().__init__(setup.run, DistEnv(), progress)

    def build_model(self) -> tuple[GPT, BridgedModel]:
        sparse = GPT(self.setup.model_cfg)  # seeded by the trainer: starts as `train` would start it
        if self.bridged.init is not None and self.setup.resume_from is None:
            sparse.load_state_dict(self.bridged.init.model.state_dict())  # loaded and checked by _check_init
        sparse.to(self.device)
        bridges = Bridges.for_models(sparse, self.dense, self.bridged.bridge_cfg).to(self.device)
        return sparse, BridgedModel(sparse, bridges)

    def build_optimizer(self) -> tuple[torch.optim.AdamW, list[str]]:
        return build_bridged_optimizer(self.module, self.cfg, self.device)

    def train_step(self, step: int) -> tuple[dict[str, Tensor], Tensor]:
        """Optimizer step `step` (0-based) on the next batch. Returns (loss terms, grad RMS before clipping)."""
        w = self.next_batch().to(self.device)
        return bridged_step(
            self.module, self.dense, self.opt, self.sparsifier, w, self.bridged.bridge_cfg, self.cfg, step
        )

    def eval_windows(self) -> list[Tensor]:
        cfg, run = self.cfg, self.setup
        return list(
            iter_eval_batches(run.data.val_bin, run.model_cfg.n_ctx, cfg.eval_batch_size, cfg.eval_batches)
        )

    def extra_eval(self) -> dict[str, Any]:
        return evaluate_bridges(
            self.module, self.dense, self.eval_windows(), self.bridged.bridge_cfg, self.cfg.dtype
        )

    def param_counts(self) -> dict[str, int]:
        return {
            "params": self.model.num_params(),
            "bridge_params": sum(p.numel() for p in self.module.bridges.parameters()),
        }

    def save_final(self, last: dict[str, Any]) -> None:
        """Bridges, reference RMS and final metrics, then model.safetensors last (its presence means done)."""
        run_dir = self.setup.run_dir
        sites = self.module.bridges.sites
        windows = [w[:, :-1] for w in self.eval_windows()]
        meta = read_meta(run_dir)
        meta["reference_rms"] = {
            "data": "validation windows of " + str(self.setup.data.path.resolve()),
            "sparse": residual_rms(self.model, windows, sites),
            "dense": residual_rms(self.dense, windows, sites),
        }
        meta["final"] = {k: v for k, v in last.items() if k.startswith("val_") or k in ("step", "tokens")}
        save_bridges(run_dir, self.module.bridges)
        write_meta(run_dir, meta)
        super().save_final(last)

    def summary(self) -> str:
        m, d, c = self.setup.model_cfg, self.dense.cfg, self.cfg
        b = self.module.bridges
        k = "off" if b.k is None else str(b.k)
        bc = self.bridged.bridge_cfg
        return "\n".join(
            [
                f"{'resuming' if self.step else 'training'} bridged run {self.setup.run_dir} on {self.device}",
                f"  sparse: {m.n_layer} layers, d_model {m.d_model}, L0 {c.l0_target:g}; "
                f"dense {self.bridged.dense.path}: d_model {d.d_model}",
                f"  {len(b)} bridges ({', '.join(b.sites)}), encoder AbsTopK k {k}; coefficients lm {bc.coef_lm:g}, "
                f"nmse {bc.coef_nmse:g}, kl_ds {bc.coef_kl_ds:g}, kl_sd {bc.coef_kl_sd:g}",
                f"  {c.steps} steps x {self.tokens_per_step:,} tokens, lr {c.lr:g}",
            ]
        )

    def done_message(self, last: dict[str, Any], seconds: float) -> str:
        def val(key: str) -> float:
            return last.get(key, math.nan)

        return (
            f"done: sparse val loss {val('val_loss'):.4f}, val KL d->s {val('val_kl_ds'):.4f}, "
            f"KL s->d {val('val_kl_sd'):.4f} after {self.step} steps, {seconds:.0f} s; {self.setup.run_dir}"
        )

    def postfix(self, rec: dict[str, Any]) -> dict[str, str]:
        shown = {"loss": rec["loss"], "lm": rec["lm"]}
        if "nmse_enc" in rec:
            shown["nmse"] = rec["nmse_enc"] + rec["nmse_dec"]
        for k in ("kl_ds", "kl_sd"):
            if k in rec:
                shown[k] = rec[k]
        return {k: f"{v:.3f}" for k, v in shown.items()}


def train_bridges(
    dense_dir: str | Path | None,
    data_dir: str | Path,
    out: str | Path,
    preset: str | None = None,
    sets: Sequence[str] = (),
    resume: bool = False,
    force: bool = False,
    device: str | None = None,
    progress: bool = True,
    init: str | Path | None = None,
) -> dict[str, Any]:
    """The Python entry point behind `sparsecircuits bridges train`. Returns the last metrics record."""
    setup = prepare_bridged_run(dense_dir, data_dir, out, preset, sets, resume, force, device, init)
    trainer = BridgeTrainer(setup, progress)
    if trainer.step >= setup.run.train_cfg.steps and (setup.run.run_dir / MODEL_FILE).is_file():
        return {"step": trainer.step, "already_complete": True}
    return trainer.fit()
