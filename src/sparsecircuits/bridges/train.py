"""Joint training of a weight-sparse model and its bridges against a frozen dense model (PAPER.md 11.3).

One step is the trainer's step (train/trainer.py) with the bridged loss in place of the LM loss:
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
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

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
from sparsecircuits.data.shards import TokenSampler, iter_eval_batches
from sparsecircuits.data.tokenizer import load_tokenizer
from sparsecircuits.errors import UserError
from sparsecircuits.model.gpt import GPT
from sparsecircuits.run import METRICS_FILE, MODEL_FILE, Run, load_run, save_model
from sparsecircuits.train import checkpoint as ckpt
from sparsecircuits.train.config import TrainConfig
from sparsecircuits.train.distributed import DistEnv, autocast, dist_env, resolve_device
from sparsecircuits.train.evaluate import evaluate_loss
from sparsecircuits.train.schedules import l0_fraction, quirk_fraction, sharkfin_lr
from sparsecircuits.train.sparsity import WeightSparsifier
from sparsecircuits.train.trainer import (
    RunSetup,
    build_optimizer,
    check_finite_loss,
    clip_grad_rms_,
    create_run_dir,
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


def fractions(cfg: TrainConfig, step: int) -> tuple[float, float | None]:
    """(main L0 fraction, paper_quirk fraction or None) after optimizer step `step`, as in the Trainer."""
    main = l0_fraction(step, cfg.steps, cfg.l0_target, cfg.anneal_frac)
    if cfg.sparsity_schedule != "paper_quirk":
        return main, None
    return main, quirk_fraction(step, cfg.steps, cfg.l0_target, cfg.quirk_start_frac, cfg.quirk_ramp_steps)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    return sharkfin_lr(step, cfg.steps, cfg.lr, cfg.l0_target, cfg.anneal_frac, cfg.warmup_frac)


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
    """One optimizer step (module docstring) on window [B, T + 1].

    Returns (loss terms detached and summed over sites, 0-d each; grad RMS before clipping), no host sync."""
    lr = learning_rate(cfg, step)
    for group in opt.param_groups:
        group["lr"] = lr
    device = window.device
    with autocast(device, cfg.dtype):
        terms = bridge_losses(model, dense, window[:, :-1], window[:, 1:], bridge_cfg)
    opt.zero_grad(set_to_none=True)
    terms["loss"].backward()
    grad_rms = clip_grad_rms_(list(model.parameters()), cfg.grad_rms_clip)
    opt.step()
    sparsifier.apply(*fractions(cfg, step))
    return {k: v.detach().sum() for k, v in terms.items()}, grad_rms.detach()


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


class BridgeTrainer:
    def __init__(self, setup: BridgedSetup, progress: bool = True):
        self.setup, self.run, self.cfg = setup, setup.run, setup.run.train_cfg
        self.progress = progress
        self.device = resolve_device(self.cfg.device)
        self.dense = setup.dense.model
        torch.manual_seed(self.cfg.seed)  # the sparse model starts as `train` would start it
        sparse = GPT(self.run.model_cfg)
        if setup.init is not None and self.run.resume_from is None:
            sparse.load_state_dict(setup.init.model.state_dict())  # loaded and checked by _check_init
        sparse.to(self.device)
        bridges = Bridges.for_models(sparse, self.dense, setup.bridge_cfg).to(self.device)
        self.model = BridgedModel(sparse, bridges)
        self.sparsifier = WeightSparsifier(sparse, self.cfg.min_fan)
        self.opt, self.opt_names = build_bridged_optimizer(self.model, self.cfg, self.device)
        self.sampler = TokenSampler(self.run.data.train_bin, self.run.model_cfg.n_ctx)
        self.data_gen = torch.Generator().manual_seed(self.cfg.seed + 1)
        self.step = 0
        if self.run.resume_from is not None:
            state = ckpt.load_checkpoint(self.run.resume_from, self.model, self.opt, self.opt_names)
            ckpt.restore_rng_states(state["rng"], self.data_gen)
            self.step = int(state["step"])
        else:
            self.sparsifier.apply(*fractions(self.cfg, -1))

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.run.model_cfg.n_ctx

    def train_step(self, step: int) -> tuple[dict[str, Tensor], Tensor]:
        """Optimizer step `step` (0-based) on the next batch. Returns (loss terms, grad RMS before clipping)."""
        w = self.sampler.batch(self.cfg.batch_size, self.data_gen).to(self.device)
        return bridged_step(
            self.model, self.dense, self.opt, self.sparsifier, w, self.setup.bridge_cfg, self.cfg, step
        )

    def eval_windows(self) -> list[Tensor]:
        cfg = self.cfg
        return list(
            iter_eval_batches(
                self.run.data.val_bin, self.run.model_cfg.n_ctx, cfg.eval_batch_size, cfg.eval_batches
            )
        )

    def evaluate(self) -> dict[str, Any]:
        cfg = self.cfg
        out = {
            "val_loss": evaluate_loss(
                self.model.sparse, self.run.data.val_bin, cfg.eval_batches, cfg.eval_batch_size, cfg.dtype
            )
        }
        out.update(
            evaluate_bridges(self.model, self.dense, self.eval_windows(), self.setup.bridge_cfg, cfg.dtype)
        )
        return out

    # -- the loop --

    def fit(self) -> dict[str, Any]:
        """Train to cfg.steps with logging, evaluation and checkpoints; then write the final files."""
        cfg, run_dir = self.cfg, self.run.run_dir
        ckpt.trim_metrics(run_dir / METRICS_FILE, self.step)
        self._say(self._summary())
        t_start = time.perf_counter()
        last: dict[str, Any] = {}
        with open(run_dir / METRICS_FILE, "a", encoding="utf-8") as log:
            if self.step == 0:
                last = self._start_record()
                ckpt.append_metrics(log, last)
            bar = tqdm(
                total=cfg.steps, initial=self.step, disable=not self.progress, unit="step", desc="bridges"
            )
            sums: dict[str, Tensor] = {}
            since, t_last = 0, time.perf_counter()
            while self.step < cfg.steps:
                step = self.step
                terms, grad_rms = self.train_step(step)
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0) + v
                since += 1
                self.step += 1
                bar.update(1)
                if not self._record_due(self.step):
                    continue
                means = {k: v.item() / since for k, v in sums.items()}
                check_finite_loss(
                    means["loss"], self.step, self.run.run_dir, "bridged training", "Lower train.lr"
                )
                dt = time.perf_counter() - t_last
                last = self._record(step, means, grad_rms, since * self.tokens_per_step / dt)
                ckpt.append_metrics(log, last)
                bar.set_postfix(_postfix(means), refresh=False)
                if self._due(self.step, cfg.ckpt_every):
                    self.save_checkpoint()
                sums, since, t_last = {}, 0, time.perf_counter()
            bar.close()
        self._finish(last)
        self._say(
            f"done: sparse val loss {last.get('val_loss', math.nan):.4f}, val KL d->s {last.get('val_kl_ds', math.nan):.4f}, "
            f"KL s->d {last.get('val_kl_sd', math.nan):.4f} after {self.step} steps, {time.perf_counter() - t_start:.0f} s; "
            f"{run_dir}"
        )
        return last

    def _finish(self, last: dict[str, Any]) -> None:
        """Bridges, reference RMS and final metrics, then model.safetensors last (its presence means done)."""
        run_dir = self.run.run_dir
        sites = self.model.bridges.sites
        windows = [w[:, :-1] for w in self.eval_windows()]
        meta = read_meta(run_dir)
        meta["reference_rms"] = {
            "data": "validation windows of " + str(self.run.data.path.resolve()),
            "sparse": residual_rms(self.model.sparse, windows, sites),
            "dense": residual_rms(self.dense, windows, sites),
        }
        meta["final"] = {k: v for k, v in last.items() if k.startswith("val_") or k in ("step", "tokens")}
        save_bridges(run_dir, self.model.bridges)
        write_meta(run_dir, meta)
        save_model(self.model.sparse, run_dir / MODEL_FILE)

    def _say(self, text: str) -> None:
        if self.progress:
            tqdm.write(text)

    def _summary(self) -> str:
        m, d, c = self.run.model_cfg, self.dense.cfg, self.cfg
        b = self.model.bridges
        k = "off" if b.k is None else str(b.k)
        bc = self.setup.bridge_cfg
        return "\n".join(
            [
                f"{'resuming' if self.step else 'training'} bridged run {self.run.run_dir} on {self.device}",
                f"  sparse: {m.n_layer} layers, d_model {m.d_model}, L0 {c.l0_target:g}; dense {self.setup.dense.path}: "
                f"d_model {d.d_model}",
                f"  {len(b)} bridges ({', '.join(b.sites)}), encoder AbsTopK k {k}; coefficients lm {bc.coef_lm:g}, "
                f"nmse {bc.coef_nmse:g}, kl_ds {bc.coef_kl_ds:g}, kl_sd {bc.coef_kl_sd:g}",
                f"  {c.steps} steps x {self.tokens_per_step:,} tokens, lr {c.lr:g}",
            ]
        )

    def _due(self, step: int, every: int) -> bool:
        return step == self.cfg.steps or (every > 0 and step % every == 0)

    def _record_due(self, step: int) -> bool:
        c = self.cfg
        return step % c.log_every == 0 or self._due(step, c.eval_every) or self._due(step, c.ckpt_every)

    def _start_record(self) -> dict[str, Any]:
        return {
            "step": 0,
            "tokens": 0,
            "params": self.model.sparse.num_params(),
            "bridge_params": sum(p.numel() for p in self.model.bridges.parameters()),
            "sparsified_params": self.sparsifier.numel(),
            "nonzero": self.sparsifier.nonzero(),
            "bigram_val_loss": self.run.bigram_val_loss,
            **self.evaluate(),
        }

    def _record(
        self, step: int, means: dict[str, float], grad_rms: Tensor, tokens_per_s: float
    ) -> dict[str, Any]:
        nonzero = self.sparsifier.nonzero()
        rec: dict[str, Any] = {
            "step": self.step,
            "tokens": self.step * self.tokens_per_step,
            **means,
            "lr": learning_rate(self.cfg, step),
            "l0_frac": fractions(self.cfg, step)[0],
            "nonzero": nonzero,
            "nonzero_frac": nonzero / self.sparsifier.numel(),
            "tokens_per_s": tokens_per_s,
            "grad_rms": grad_rms.item(),
        }
        if self._due(self.step, self.cfg.eval_every):
            rec.update(self.evaluate())
        return rec

    def save_checkpoint(self) -> None:
        state = {
            "step": self.step,
            "tokens": self.step * self.tokens_per_step,
            "rng": ckpt.rng_states(self.data_gen),
            "world_size": 1,
        }
        ckpt.save_checkpoint(
            self.run.run_dir, self.model, self.opt, self.opt_names, state, self.cfg.keep_checkpoints
        )


def _postfix(means: dict[str, float]) -> dict[str, str]:
    shown = {"loss": means["loss"], "lm": means["lm"]}
    if "nmse_enc" in means:
        shown["nmse"] = means["nmse_enc"] + means["nmse_dec"]
    for k in ("kl_ds", "kl_sd"):
        if k in means:
            shown[k] = means[k]
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
