"""The training loop: AdamW, gradient-RMS clipping, sharkfin LR, top-|w| projection after every step.

One step (PAPER.md 3.2):
  1. forward + backward on this rank's share of the global batch (DDP averages the gradients);
  2. clip the global gradient RMS to `grad_rms_clip`;
  3. AdamW step with the sharkfin LR (dense gradients and moments);
  4. keep the top-|w| entries of every sparsified tensor at the current L0 fraction.

The run directory is prepared by `prepare_run` (config.json, tokenizer.json), then `Trainer.fit` writes
metrics.jsonl, checkpoints/ and finally model.safetensors. Only rank 0 writes files.
"""

from __future__ import annotations

import datetime
import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from sparsecircuits import __version__
from sparsecircuits.data.dataset import DatasetDir, load_dataset
from sparsecircuits.data.shards import TokenSampler
from sparsecircuits.data.tokenizer import load_tokenizer
from sparsecircuits.errors import UserError
from sparsecircuits.io import (
    atomic_write,
    atomic_write_json,
    check_output_dir,
    check_writable,
    prepare_output_dir,
    read_json,
)
from sparsecircuits.model.config import ModelConfig
from sparsecircuits.model.gpt import GPT
from sparsecircuits.run import CONFIG_FILE, METRICS_FILE, TOKENIZER_FILE, save_model
from sparsecircuits.run import MODEL_FILE as FINAL_MODEL_FILE
from sparsecircuits.train import checkpoint as ckpt
from sparsecircuits.train.config import TrainConfig, build_config
from sparsecircuits.train.distributed import DistEnv, autocast, barrier, dist_env, resolve_device
from sparsecircuits.train.evaluate import bigram_baseline_loss, evaluate_loss
from sparsecircuits.train.schedules import fractions, learning_rate
from sparsecircuits.train.sparsity import WeightSparsifier, kept_count


class NonFiniteLoss(UserError):
    """Training diverged; the last good checkpoint is kept."""


def check_finite_loss(loss: float, step: int, run_dir: Path, what: str, advice: str) -> None:
    """Raise NonFiniteLoss (naming the checkpoint that is kept) when `loss` is NaN or infinite."""
    if math.isfinite(loss):
        return
    done = ckpt.latest_checkpoint(run_dir)
    kept = f"the last good checkpoint ({done.name}) is kept" if done else "no checkpoint was written"
    raise NonFiniteLoss(
        f"{what} loss became {loss} by step {step}; {kept}. {advice} and start again with --force"
    )


@dataclass
class RunSetup:
    """Everything `Trainer` needs, resolved from the command line (or the run's config.json on resume)."""

    run_dir: Path
    data: DatasetDir
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    resume_from: Path | None = None  # checkpoint directory
    bigram_val_loss: float | None = None


# ---- run directory -------------------------------------------------------------------------------


def prepare_run(
    data_dir: str | Path,
    out: str | Path,
    preset: str | None = None,
    dense: bool = False,
    sets: Sequence[str] = (),
    resume: bool = False,
    force: bool = False,
    device: str | None = None,
    env: DistEnv | None = None,
    write: bool = True,
) -> RunSetup:
    """Validate the inputs, then (with `write`, for a new run) create the run directory and config.json.

    Every check happens before anything is written, so a bad command leaves no trace on disk."""
    env = env or DistEnv()
    data = load_dataset(data_dir)
    vocab = load_tokenizer(data.tokenizer_path).get_vocab_size()
    out = Path(out)
    if resume and force:
        raise UserError("--resume and --force contradict each other; pick one")
    if resume:
        setup = _resume_setup(data, out, vocab, preset, dense, sets)
        check_writable(out / "checkpoints", "run directory")  # checkpoints and weights go there
    else:
        if out.is_dir() and any(out.iterdir()) and not force:
            raise UserError(
                f"run directory already exists: {out} (use --resume to continue or --force to overwrite)"
            )
        check_output_dir(out, "run", force)  # --force replaces only a run this project wrote
        model_cfg, train_cfg = build_config(preset or "demo", vocab, dense, sets)
        setup = RunSetup(out, data, model_cfg, train_cfg)
    if device is not None:
        setup.train_cfg.device = device
        setup.train_cfg.validate()
    if setup.train_cfg.batch_size % env.world_size:
        raise UserError(
            f"train.batch_size {setup.train_cfg.batch_size} is not divisible by the {env.world_size} processes"
        )
    if write and not resume:
        create_run_dir(setup, preset or "demo", dense, sets, env)
    return setup


def _resume_setup(
    data: DatasetDir, out: Path, vocab: int, preset: str | None, dense: bool, sets: Sequence[str]
) -> RunSetup:
    if preset or dense or sets:
        raise UserError("--resume continues with the run's own config.json; drop --preset, --dense and --set")
    if not (out / CONFIG_FILE).is_file():
        raise UserError(f"nothing to resume: {out / CONFIG_FILE} not found")
    config = read_json(out / CONFIG_FILE, "run config")
    try:
        model_cfg = ModelConfig.from_dict(config["model"])
        train_cfg = TrainConfig.from_dict(config["train"])
        data_hash = config["data"]["content_hash"]
    except (KeyError, TypeError) as e:
        raise UserError(f"{out / CONFIG_FILE} is not a training run config ({e})") from None
    if data_hash != data.meta.get("content_hash"):
        raise UserError(
            f"--data {data.path} is not the dataset this run was trained on (content hash differs)"
        )
    if model_cfg.vocab_size != vocab:
        raise UserError(
            f"tokenizer has {vocab} tokens but the run's model.vocab_size is {model_cfg.vocab_size}"
        )
    latest = ckpt.latest_checkpoint(out)
    if latest is None:
        raise UserError(f"no checkpoint to resume from in {out / 'checkpoints'}; start again with --force")
    return RunSetup(out, data, model_cfg, train_cfg, latest, config.get("bigram_val_loss"))


def create_run_dir(setup: RunSetup, preset: str, dense: bool, sets: Sequence[str], env: DistEnv) -> None:
    """Create (or, after the --force check, replace) the run directory; write config.json and the
    tokenizer; compute the bigram baseline once."""
    out = setup.run_dir
    prepare_output_dir(out, "run", force=out.is_dir())  # checked above: --force on a run directory
    cfg = setup.model_cfg
    setup.bigram_val_loss = bigram_baseline_loss(
        setup.data, cfg.vocab_size, cfg.n_ctx, setup.train_cfg.eval_batches, setup.train_cfg.eval_batch_size
    )
    config = {
        "model": cfg.to_dict(),
        "train": setup.train_cfg.to_dict(),
        "data": {
            "dir": str(setup.data.path.resolve()),
            "content_hash": setup.data.meta.get("content_hash"),
            "vocab_size": cfg.vocab_size,
        },
        "tokenizer_sha256": setup.data.tokenizer_sha256,  # load_run refuses a swapped tokenizer.json
        "preset": preset,
        "dense": dense,
        "overrides": list(sets),
        "bigram_val_loss": setup.bigram_val_loss,
        "world_size": env.world_size,
        "code_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(out / CONFIG_FILE, config)
    atomic_write(out / TOKENIZER_FILE, lambda p: shutil.copyfile(setup.data.tokenizer_path, p))


# ---- optimizer and clipping ----------------------------------------------------------------------


def build_optimizer(
    model: nn.Module, cfg: TrainConfig, device: torch.device
) -> tuple[torch.optim.AdamW, list[str]]:
    """AdamW with weight decay on 2-D weight matrices only. Returns the optimizer and the parameter names
    in its order (checkpoints store optimizer state by name)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        # Biases, norm gains, sink logits: 1-D. The bigram table is 2-D but is a dense additive logit
        # table (a bias in all but shape), so it is not decayed either.
        (decay if p.ndim == 2 and name != "bigram_table" else no_decay).append((name, p))
    groups = [
        {"params": [p for _, p in decay], "weight_decay": cfg.weight_decay},
        {"params": [p for _, p in no_decay], "weight_decay": 0.0},
    ]
    # fused is the fast path on CUDA; the CPU keeps the default (foreach) implementation.
    opt = torch.optim.AdamW(
        groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=device.type == "cuda" or None
    )
    return opt, [n for n, _ in decay] + [n for n, _ in no_decay]


def clip_grad_rms_(params: Sequence[Tensor], max_rms: float) -> Tensor:
    """Scale all gradients so their global root-mean-square is at most `max_rms` (0 = no clipping).

    Returns the RMS before clipping as a 0-d tensor (no host sync). RMS <= c is the same as an L2 norm
    <= c * sqrt(number of gradient entries), so this reuses torch's norm clipping."""
    grads = [p for p in params if p.grad is not None]
    n = sum(p.grad.numel() for p in grads)
    max_norm = max_rms * math.sqrt(n) if max_rms > 0 else math.inf
    norm = torch.nn.utils.clip_grad_norm_(grads, max_norm)
    return norm / math.sqrt(n)


# ---- one optimizer step --------------------------------------------------------------------------


def optimizer_step(
    loss: Tensor,
    params: Sequence[Tensor],
    opt: torch.optim.Optimizer,
    sparsifier: WeightSparsifier,
    cfg: TrainConfig,
    step: int,
) -> Tensor:
    """Steps 2-4 of the module docstring once the forward has produced the 0-d `loss` of step `step`:
    backward, clip the gradient RMS of `params`, AdamW at the sharkfin LR, projection to the step's L0.

    Returns the gradient RMS before clipping (0-d, detached, no host sync)."""
    lr = learning_rate(cfg, step)
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_rms = clip_grad_rms_(params, cfg.grad_rms_clip)
    opt.step()
    sparsifier.apply(*fractions(cfg, step))
    return grad_rms.detach()


# ---- the trainer ---------------------------------------------------------------------------------

Terms = Tensor | dict[str, Tensor]  # a step's loss: 0-d, or named 0-d terms with the total under "loss"


class Trainer:
    """The training loop: steps, logging, evaluation, checkpoints and the final model.

    Subclasses change what is trained and how it is scored through a few hooks (bridges/train.py):
    `build_model`, `build_optimizer`, `train_step`, `extra_eval`, `save_final`, `summary`, `postfix`.
    `self.model` is the GPT that is sparsified, evaluated and saved as model.safetensors; `self.module`
    is everything the optimizer updates and the checkpoints hold (the GPT itself here)."""

    desc = "train"  # progress bar label
    what = "training"  # how a diverged loss is named
    advice = "Lower train.lr or raise train.eps"  # what to change after a diverged loss

    def __init__(self, setup: RunSetup, env: DistEnv | None = None, progress: bool = True):
        self.setup, self.cfg = setup, setup.train_cfg
        self.env = env or DistEnv()
        self.progress = progress and self.env.is_main
        self.device = resolve_device(self.cfg.device, self.env)
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # same init on every rank
        self.model, self.module = self.build_model()
        self.sparsifier = WeightSparsifier(self.model, cfg.min_fan)
        self.opt, self.opt_names = self.build_optimizer()
        self.net: nn.Module = self.module
        if self.env.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.module, device_ids=ids)
        self.sampler = TokenSampler(setup.data.train_bin, setup.model_cfg.n_ctx)
        self.data_gen = torch.Generator().manual_seed(cfg.seed + 1)  # data order, independent of init
        self.step = 0  # optimizer steps completed
        self.stopped_early = False  # an evaluation reached train.stop_at_loss: the run is finished
        if setup.resume_from is not None:
            self._load(setup.resume_from)
        else:
            self.sparsifier.apply(*self.fractions(-1))  # dense unless anneal_frac == 0

    # -- hooks --

    def build_model(self) -> tuple[GPT, nn.Module]:
        """(the GPT to sparsify, evaluate and save; the module to optimize and checkpoint), on the device."""
        model = GPT(self.setup.model_cfg).to(self.device)
        return model, model

    def build_optimizer(self) -> tuple[torch.optim.AdamW, list[str]]:
        return build_optimizer(self.module, self.cfg, self.device)

    def extra_eval(self) -> dict[str, Any]:
        """Measurements recorded next to val_loss at every evaluation (none for plain training)."""
        return {}

    def save_final(self, last: dict[str, Any]) -> None:
        """Write the finished run's files; model.safetensors last (its presence means done)."""
        save_model(self.model, self.setup.run_dir / FINAL_MODEL_FILE)

    def summary(self) -> str:
        m, c = self.setup.model_cfg, self.cfg
        n_sparse = self.sparsifier.numel()
        target = sum(kept_count(c.l0_target, t.param.numel()) for t in self.sparsifier.tensors)
        afrac = "off" if m.afrac >= 1 else f"{m.afrac:g}"
        bigram = self.setup.bigram_val_loss
        lines = [
            f"{'resuming' if self.step else 'training'} {self.setup.run_dir} on {self.device}"
            + (f" x {self.env.world_size} processes" if self.env.enabled else "")
            + (f" from step {self.step}" if self.step else ""),
            f"  model: {m.n_layer} layers, d_model {m.d_model}, {self.model.num_params():,} params; "
            f"{n_sparse:,} sparsified -> {target:,} nonzero at L0 {c.l0_target:g}; AbsTopK afrac {afrac}",
            f"  {c.steps} steps x {self.tokens_per_step:,} tokens, lr {c.lr:g}, eps {c.eps:g}"
            + (f"; bigram baseline val loss {bigram:.4f}" if bigram is not None else "")
            + (f"; stops at val loss <= {c.stop_at_loss:g}" if c.stop_at_loss > 0 else ""),
        ]
        return "\n".join(lines)

    def done_message(self, last: dict[str, Any], seconds: float) -> str:
        bigram = self.setup.bigram_val_loss
        vs = f" (bigram baseline {bigram:.4f})" if bigram is not None else ""
        return (
            f"done: val loss {last.get('val_loss', float('nan')):.4f}{vs} after {self.step} steps, "
            f"{seconds:.0f} s; weights in {self.setup.run_dir / FINAL_MODEL_FILE}"
        )

    def postfix(self, rec: dict[str, Any]) -> dict[str, str]:
        """What the progress bar shows after a metrics record."""
        return {
            "loss": f"{rec['loss']:.3f}",
            "tok_s": f"{rec['tokens_per_s']:.0f}",
            "L0": f"{rec['l0_frac']:.3g}",
        }

    def param_counts(self) -> dict[str, int]:
        return {"params": self.model.num_params()}

    # -- schedules --

    def fractions(self, step: int) -> tuple[float, float | None]:
        """(main L0 fraction, paper_quirk fraction or None) enforced after optimizer step `step`."""
        return fractions(self.cfg, step)

    def lr(self, step: int) -> float:
        return learning_rate(self.cfg, step)

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.setup.model_cfg.n_ctx

    # -- one step --

    def next_batch(self) -> Tensor:
        """This rank's share of the global batch: LongTensor [batch_size / world_size, n_ctx + 1].

        Every rank draws the same global window positions from the same generator (a few hundred ints)
        and keeps its own slice, so the global batch, and the data order after a resume, do not depend
        on the number of processes."""
        batch = self.sampler.batch(self.cfg.batch_size, self.data_gen)
        share = self.cfg.batch_size // self.env.world_size
        return batch[self.env.rank * share : (self.env.rank + 1) * share]

    def train_step(self, step: int) -> tuple[Terms, Tensor]:
        """Run optimizer step `step` (0-based). Returns (loss, grad RMS before clipping), 0-d tensors.

        A subclass may return named terms instead of the loss ({"loss": total, ...}, 0-d each): the loop
        logs the mean of each."""
        w = self.next_batch().to(self.device, non_blocking=True)
        x, y = w[:, :-1], w[:, 1:]
        with autocast(self.device, self.cfg.dtype):
            logits = self.net(x)  # [B, T, V] float32
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        grad_rms = optimizer_step(
            loss, list(self.module.parameters()), self.opt, self.sparsifier, self.cfg, step
        )
        return loss.detach(), grad_rms

    # -- the loop --

    def fit(self) -> dict[str, Any]:
        """Train to cfg.steps, logging, evaluating and checkpointing. Returns the last metrics record."""
        cfg, run_dir = self.cfg, self.setup.run_dir
        metrics_path = run_dir / METRICS_FILE
        last: dict[str, Any] = {}
        if self.env.is_main:
            ckpt.trim_metrics(metrics_path, self.step)
        self._say(self.summary())
        t_start = time.perf_counter()
        with open(metrics_path, "a", encoding="utf-8") if self.env.is_main else _NullFile() as log:
            if self.step == 0:
                last = self._start_record()
                ckpt.append_metrics(log, last)
            bar = tqdm(
                total=cfg.steps,
                initial=self.step,
                disable=not self.progress,
                unit="step",
                dynamic_ncols=True,
                desc=self.desc,
            )
            sums: dict[str, Tensor] = {}
            since, t_last = 0, time.perf_counter()
            while self.step < cfg.steps and not self.stopped_early:
                step = self.step
                terms, grad_rms = self.train_step(step)
                for name, value in (terms if isinstance(terms, dict) else {"loss": terms}).items():
                    sums[name] = sums[name] + value if name in sums else value.clone()
                since += 1
                self.step += 1
                bar.update(1)
                if not self._record_due(self.step):
                    continue
                means = self._global_means(sums, since)
                dt = time.perf_counter() - t_last
                last = self._record(step, means, grad_rms, since * self.tokens_per_step / dt)
                self.stopped_early = self._stop_due(last)
                last.update(self.stop_fields())
                ckpt.append_metrics(log, last)
                bar.set_postfix(self.postfix(last), refresh=False)
                if self._due(self.step, cfg.ckpt_every) or self.stopped_early:
                    self.save_checkpoint()  # a stopped run's last checkpoint says so: resuming it is a no-op
                sums, since, t_last = {}, 0, time.perf_counter()
            bar.close()
        if self.env.is_main:
            if not last:  # resumed from the final checkpoint of a run killed before it saved the model
                last = {"step": self.step, **self.evaluate(), **self.stop_fields()}
            self.save_final(last)
            self._say(self.done_message(last, time.perf_counter() - t_start))
            if self.stopped_early:
                self._say(
                    f"stopped early at step {self.step} of {cfg.steps}: val loss reached "
                    f"train.stop_at_loss {cfg.stop_at_loss:g}"
                )
        barrier(self.env)
        return last

    def _say(self, text: str) -> None:
        if self.progress:
            tqdm.write(text)

    def _stop_due(self, rec: dict[str, Any]) -> bool:
        """Whether the record just made ends the run early: it holds an evaluation before the last step
        whose val_loss is <= train.stop_at_loss. Rank 0 evaluates and decides; every rank gets its answer."""
        target = self.cfg.stop_at_loss
        if target <= 0 or self.step >= self.cfg.steps or not self._due(self.step, self.cfg.eval_every):
            return False
        stop = torch.tensor(float(self.env.is_main and rec["val_loss"] <= target), device=self.device)
        if self.env.enabled:
            dist.broadcast(stop, src=0)
        return bool(stop.item())

    def stop_fields(self) -> dict[str, Any]:
        """What a record of a run that stopped early adds: {"stopped_early": True, "stop_at_loss": ...}."""
        return {"stopped_early": True, "stop_at_loss": self.cfg.stop_at_loss} if self.stopped_early else {}

    def finished(self) -> bool:
        """Nothing left to do: every step done (or stopped early) and the final weights written."""
        done = self.step >= self.cfg.steps or self.stopped_early
        return done and (self.setup.run_dir / FINAL_MODEL_FILE).is_file()

    def _record_due(self, step: int) -> bool:
        cfg = self.cfg
        return step % cfg.log_every == 0 or self._due(step, cfg.eval_every) or self._due(step, cfg.ckpt_every)

    def _due(self, step: int, every: int) -> bool:
        return step == self.cfg.steps or (every > 0 and step % every == 0)

    def _global_means(self, sums: dict[str, Tensor], since: int) -> dict[str, float]:
        """Mean of each summed term over the last `since` steps and over ranks (every rank gets the same
        values, so all stop together on a non-finite loss)."""
        value = torch.stack(list(sums.values())) / since
        if self.env.enabled:
            dist.all_reduce(value)  # SUM: gloo has no AVG
            value /= self.env.world_size
        means = dict(zip(sums, value.tolist()))
        check_finite_loss(means["loss"], self.step, self.setup.run_dir, self.what, self.advice)
        return means

    def _start_record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "step": 0,
            "tokens": 0,
            **self.param_counts(),
            "sparsified_params": self.sparsifier.numel(),
            "nonzero": self.sparsifier.nonzero(),
            "bigram_val_loss": self.setup.bigram_val_loss,
        }
        if self.env.is_main:
            rec.update(self.evaluate())
        return rec

    def _record(
        self, step: int, means: dict[str, float], grad_rms: Tensor, tokens_per_s: float
    ) -> dict[str, Any]:
        """Metrics after optimizer step `step` (self.step == step + 1)."""
        nonzero = self.sparsifier.nonzero()
        rec: dict[str, Any] = {
            "step": self.step,
            "tokens": self.step * self.tokens_per_step,
            **means,
            "lr": self.lr(step),
            "l0_frac": self.fractions(step)[0],
            "nonzero": nonzero,
            "nonzero_frac": nonzero / self.sparsifier.numel(),
            "tokens_per_s": tokens_per_s,
            "grad_rms": grad_rms.item(),
        }
        if self.env.is_main and self._due(self.step, self.cfg.eval_every):
            rec.update(self.evaluate())
        return rec

    def evaluate(self) -> dict[str, Any]:
        """{"val_loss": ..., **extra_eval()} on the validation split."""
        return {"val_loss": self.validation_loss(), **self.extra_eval()}

    def validation_loss(self) -> float:
        return evaluate_loss(
            self.model,
            self.setup.data.val_bin,
            self.cfg.eval_batches,
            self.cfg.eval_batch_size,
            self.cfg.dtype,
        )

    # -- checkpoints --

    def save_checkpoint(self) -> None:
        if self.env.enabled:
            check_replicas_identical(self.module)
        if self.env.is_main:
            state = {
                "step": self.step,
                "tokens": self.step * self.tokens_per_step,
                "rng": ckpt.rng_states(self.data_gen),
                "world_size": self.env.world_size,
                **({"stopped_early": True} if self.stopped_early else {}),
            }
            ckpt.save_checkpoint(
                self.setup.run_dir, self.module, self.opt, self.opt_names, state, self.cfg.keep_checkpoints
            )
        barrier(self.env)

    def _load(self, path: Path) -> None:
        state = ckpt.load_checkpoint(path, self.module, self.opt, self.opt_names)
        ckpt.restore_rng_states(state["rng"], self.data_gen)
        self.step = int(state["step"])
        self.stopped_early = bool(state.get("stopped_early", False))


class _NullFile:
    """Stand-in for metrics.jsonl on ranks other than 0."""

    def __enter__(self) -> _NullFile:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


@torch.no_grad()
def check_replicas_identical(model: nn.Module) -> None:
    """Debug check under DDP: every rank must hold bit-identical weights, hence identical sparsity masks.

    Compares a per-tensor fingerprint (float64 sum of weights and of |weights|, nonzero count) across
    ranks. A mismatch is a bug (e.g. a nondeterministic top-k), never a user error."""
    fp = torch.stack(
        [
            torch.stack([p.double().sum(), p.double().abs().sum(), torch.count_nonzero(p).double()])
            for p in model.parameters()
        ]
    ).cpu()
    lo, hi = fp.clone(), fp.clone()
    if fp.device.type == "cpu" and dist.get_backend() == "nccl":
        lo, hi = lo.cuda(), hi.cuda()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if not torch.equal(lo, hi):
        raise RuntimeError("DDP replicas diverged: weights or sparsity masks differ between ranks")


def final_val_loss(run_dir: str | Path) -> float:
    """The validation loss a finished run ended at: the last val_loss of its metrics.jsonl.

    UserError (one line) unless `run_dir` is a finished training run (final weights and a recorded val_loss)."""
    run_dir = Path(run_dir)
    if not (run_dir / FINAL_MODEL_FILE).is_file():
        raise UserError(f"{run_dir} is not a finished training run (no {FINAL_MODEL_FILE})")
    path = run_dir / METRICS_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        lines = []
    losses = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut off by a kill
        loss = rec.get("val_loss") if isinstance(rec, dict) else None
        if isinstance(loss, (int, float)) and not isinstance(loss, bool) and math.isfinite(loss):
            losses.append(float(loss))
    if not losses:
        raise UserError(f"{run_dir} is not a finished training run (no validation loss in {path.name})")
    return losses[-1]


def train(
    data_dir: str | Path,
    out: str | Path,
    preset: str | None = None,
    dense: bool = False,
    sets: Sequence[str] = (),
    resume: bool = False,
    force: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Prepare the run directory and train; the Python entry point behind `sparsecircuits train`.

    Under torchrun this initialises DDP itself: every rank validates the inputs before any rank writes,
    then rank 0 creates the run directory. Returns the last metrics record (with the final val_loss)."""
    from sparsecircuits.train.distributed import init_distributed, shutdown_distributed

    env = dist_env()
    # Every rank validates (read-only) before the rendezvous, so no rank writes until all have checked.
    setup = prepare_run(data_dir, out, preset, dense, sets, resume, force, device, env, write=False)
    init_distributed(env, resolve_device(setup.train_cfg.device, env))
    try:
        if not resume and env.is_main:
            create_run_dir(setup, preset or "demo", dense, sets, env)
        barrier(env)
        trainer = Trainer(setup, env, progress)
        if trainer.finished():
            return {"step": trainer.step, "already_complete": True, **trainer.stop_fields()}
        return trainer.fit()
    finally:
        shutdown_distributed()
