"""Training configuration, presets and `--set key=value` overrides.

A run is fully described by a ModelConfig and a TrainConfig; both are stored in the run's config.json.
Presets are plain dicts of overrides on top of the dataclass defaults, so `config.json` always lists
every field explicitly.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from sparsecircuits.cli_options import MAX_SEED
from sparsecircuits.errors import UserError, reject_unknown_keys
from sparsecircuits.model.config import ModelConfig

SPARSITY_SCHEDULES = ("uniform", "paper_quirk")
DTYPES = ("auto", "float32", "bfloat16")
# Sanity caps, far above any real run, so a typo (steps=1e30, batch_size=1e12, d_model=1e9) is a one-line
# error instead of an allocation failure or an endless run.
MAX_STEPS = 10**9
MAX_BATCH = 2**20
MAX_TOKENS_PER_STEP = 2**26
MAX_PARAMS = 10**10


@dataclass
class TrainConfig:
    """Optimizer, schedules, sparsity and bookkeeping for one training run (PAPER.md 3)."""

    steps: int = 1000  # optimizer steps
    batch_size: int = 32  # global batch in sequences of n_ctx tokens; split evenly over DDP ranks
    lr: float = 0.01  # LR at the end of L0 annealing (the sharkfin peak is about lr/2, PAPER.md 3.4)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 0.1  # AdamW epsilon; the paper's unusually large 0.1 (PAPER.md 3.4)
    # Decoupled weight decay on 2-D weight matrices only (linear layers, token/position embeddings,
    # unembedding); never on biases, norm gains, sink logits or the bigram table (PAPER.md leaves it open).
    weight_decay: float = 0.1
    grad_rms_clip: float = 1.0  # rescale the global gradient RMS down to this when above it; 0 = off
    l0_target: float = 1.0  # final kept fraction of every sparsified tensor; 1.0 = dense weights
    anneal_frac: float = 0.5  # L0 falls linearly from 1 to l0_target over this fraction of training
    warmup_frac: float = 0.01  # linear LR warmup, then linear decay to 0
    min_fan: int = 4  # minimum-fan rule j (PAPER.md 3.2); 0 = off
    sparsity_schedule: str = "uniform"  # "uniform" | "paper_quirk" (PAPER.md 3.3)
    quirk_start_frac: float = 0.5  # paper_quirk: embeddings/unembedding/biases dense until this fraction...
    quirk_ramp_steps: int = 10  # ...then reach l0_target over this many steps
    eval_every: int = 200  # steps between validation evaluations; 0 = only at the end
    eval_batches: int = 20
    eval_batch_size: int = 16
    log_every: int = 10  # steps between metrics.jsonl records
    ckpt_every: int = 500  # steps between checkpoints; 0 = only at the end
    keep_checkpoints: int = 2  # older checkpoints are deleted
    seed: int = 1337
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    dtype: str = "auto"  # "auto": bf16 autocast on CUDA, fp32 on CPU; master weights are always fp32
    # Finish at the first validation evaluation (after step 0) with val_loss <= this, as if train.steps
    # were reached; the LR and L0 schedules stay those of the full train.steps. 0 = off.
    stop_at_loss: float = 0.0

    def validate(self) -> TrainConfig:
        """Raise UserError with a one-line message for the first bad value; return self when fine."""
        for name, minimum in (
            ("steps", 1),
            ("batch_size", 1),
            ("eval_batches", 1),
            ("eval_batch_size", 1),
            ("log_every", 1),
            ("keep_checkpoints", 1),
            ("quirk_ramp_steps", 1),
            ("eval_every", 0),
            ("ckpt_every", 0),
            ("min_fan", 0),
            ("seed", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise UserError(f"train config: {name} must be an integer >= {minimum}, got {value!r}")
        for name, maximum in (
            ("steps", MAX_STEPS),
            ("batch_size", MAX_BATCH),
            ("eval_batches", MAX_BATCH),
            ("eval_batch_size", MAX_BATCH),
            ("seed", MAX_SEED),
        ):
            if getattr(self, name) > maximum:
                raise UserError(f"train config: {name} must be at most {maximum}, got {getattr(self, name)}")
        _check_range("l0_target", self.l0_target, 0.0, 1.0, low_open=True)
        _check_range("anneal_frac", self.anneal_frac, 0.0, 1.0)
        _check_range("warmup_frac", self.warmup_frac, 0.0, 1.0, high_open=True)
        _check_range("quirk_start_frac", self.quirk_start_frac, 0.0, 1.0)
        _check_range("weight_decay", self.weight_decay, 0.0, math.inf)
        _check_range("grad_rms_clip", self.grad_rms_clip, 0.0, math.inf)
        _check_range("lr", self.lr, 0.0, math.inf, low_open=True)
        _check_range("eps", self.eps, 0.0, math.inf, low_open=True)
        _check_range("stop_at_loss", self.stop_at_loss, 0.0, math.inf)
        if len(self.betas) != 2:
            raise UserError(f"train config: betas must be two numbers, got {self.betas!r}")
        for b in self.betas:
            _check_range("betas", b, 0.0, 1.0, high_open=True)
        if self.sparsity_schedule not in SPARSITY_SCHEDULES:
            raise UserError(
                f"train config: sparsity_schedule must be one of {', '.join(SPARSITY_SCHEDULES)}, "
                f"got {self.sparsity_schedule!r}"
            )
        if self.dtype not in DTYPES:
            raise UserError(f"train config: dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise UserError(f"train config: device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of to_dict; missing keys take defaults, unknown keys are an error. Validates."""
        reject_unknown_keys(cls, d, "train config")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d).validate()


def _check_range(
    name: str, value: Any, lo: float, hi: float, low_open: bool = False, high_open: bool = False
) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > lo if low_open else value >= lo) and (value < hi if high_open else value <= hi)
    if not ok:
        interval = f"{'(' if low_open else '['}{lo:g}, {hi:g}{')' if high_open else ']'}"
        raise UserError(f"train config: {name} must be in {interval}, got {value!r}")


# ---- presets -------------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # Seconds on a CPU: for tests and smoke runs. Sparse (weights and activations) so every code path runs.
    "tiny": {
        "model": dict(n_layer=2, d_model=32, n_head=2, d_head=16, d_mlp=128, n_ctx=160, afrac=0.25),
        "train": dict(
            steps=40,
            batch_size=8,
            lr=0.01,
            eps=1e-8,
            l0_target=0.25,
            eval_every=20,
            eval_batches=2,
            eval_batch_size=8,
            log_every=5,
            ckpt_every=20,
        ),
    },
    # A few minutes on 2 CPU cores; reaches a validation loss clearly below the bigram baseline.
    # Chosen by the sweep in docs/training.md.
    "demo": {
        # Learned positions (dense, outside L0): without them a 2-layer model learns quote matching far
        # more slowly (docs/training.md).
        "model": dict(
            n_layer=2, d_model=128, n_head=8, d_head=16, d_mlp=512, n_ctx=128, afrac=0.5, pos_emb="add"
        ),
        "train": dict(
            steps=1500,
            batch_size=16,
            lr=0.01,
            eps=1e-8,
            l0_target=0.25,
            eval_every=250,
            eval_batches=10,
            eval_batch_size=16,
            log_every=10,
            ckpt_every=250,
        ),
    },
    # A larger demo for one GPU (bf16): minutes on an H100. Not tuned as carefully as "demo".
    "demo-gpu": {
        # Learned positions for the same reason as "demo".
        "model": dict(
            n_layer=4, d_model=256, n_head=16, d_head=16, d_mlp=1024, n_ctx=256, afrac=0.25, pos_emb="add"
        ),
        "train": dict(
            steps=4000,
            batch_size=64,
            lr=0.01,
            eps=1e-8,
            l0_target=0.1,
            eval_every=500,
            eval_batches=20,
            eval_batch_size=32,
            log_every=20,
            ckpt_every=1000,
        ),
    },
    # The paper's default shape (PAPER.md 2.1) for GPUs. Step count, batch and LR are not in the paper;
    # sweep lr as the authors did.
    "paper": {
        "model": dict(
            n_layer=8,
            d_model=2048,
            n_head=128,
            d_head=16,
            d_mlp=8192,
            n_ctx=256,
            afrac=0.25,
            sink=True,
            bigram_table=True,
        ),
        "train": dict(
            steps=100_000,
            batch_size=32,  # 8,192 tokens; sinks materialise [B, 128 heads, T, T] attention probabilities
            lr=0.03,
            eps=0.1,
            l0_target=0.004,
            eval_every=1000,
            eval_batches=40,
            eval_batch_size=32,
            log_every=50,
            ckpt_every=2000,
        ),
    },
}


def build_config(
    preset: str, vocab_size: int, dense: bool = False, sets: tuple[str, ...] | list[str] = ()
) -> tuple[ModelConfig, TrainConfig]:
    """Preset -> vocab size from the tokenizer -> --dense -> --set overrides -> validation.

    `--dense` only sets train.l0_target = 1 (dense weights); AbsTopK activation sparsity stays as the
    preset has it unless overridden with `--set model.afrac=1`. An explicit `--set train.l0_target=...`
    wins over `--dense` because overrides come last. The model's vocab must equal the tokenizer's."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    model = ModelConfig(**{**PRESETS[preset]["model"], "vocab_size": vocab_size})
    train = TrainConfig(**PRESETS[preset]["train"])
    if dense:
        train.l0_target = 1.0
    for item in sets:
        apply_override({"model": model, "train": train}, item)
    model.validate()
    train.validate()
    check_size(model, train)
    if model.vocab_size != vocab_size:
        raise UserError(
            f"model.vocab_size {model.vocab_size} does not match the tokenizer's vocabulary ({vocab_size})"
        )
    return model, train


def approx_params(model: ModelConfig) -> int:
    """Rough parameter count (attention, MLP, embeddings, unembedding), for the sanity cap only."""
    attn = 4 * model.d_model * model.n_head * model.d_head
    mlp = 2 * model.d_model * model.d_mlp
    return model.n_layer * (attn + mlp) + (2 * model.vocab_size + model.n_ctx) * model.d_model


def check_size(model: ModelConfig, train: TrainConfig) -> None:
    """UserError for a model or a step far beyond anything trainable here (MAX_PARAMS, MAX_TOKENS_PER_STEP)."""
    if approx_params(model) > MAX_PARAMS:
        raise UserError(
            f"model config: about {approx_params(model):.3g} parameters, more than the {MAX_PARAMS:.0e} "
            "this toolkit trains; check d_model, d_mlp, n_head, n_layer"
        )
    if train.batch_size * model.n_ctx > MAX_TOKENS_PER_STEP:
        raise UserError(
            f"train.batch_size {train.batch_size} x model.n_ctx {model.n_ctx} tokens per step is more than "
            f"{MAX_TOKENS_PER_STEP}"
        )


def apply_override(targets: typing.Mapping[str, Any], item: str) -> None:
    """Apply one `SECTION.KEY=VALUE` to the config object `targets[SECTION]` in place, the value parsed
    as the field's annotated type. Used for model.* and train.* here and bridge.* in bridges."""
    key, sep, text = item.partition("=")
    key = key.strip()
    section, _, field = key.partition(".")
    if not sep or section not in targets or not field:
        expected = " or ".join(f"{s}.KEY=VALUE" for s in targets)
        raise UserError(f"--set expects {expected}, got {item!r}")
    obj = targets[section]
    hints = typing.get_type_hints(type(obj))
    if field not in hints:
        close = difflib.get_close_matches(field, list(hints), n=1)
        hint = f" (did you mean {section}.{close[0]}?)" if close else ""
        raise UserError(f"--set: unknown key {key!r}{hint}")
    try:
        value = parse_value(text.strip(), hints[field])
    except ValueError as e:
        raise UserError(f"--set {key}: {e}") from None
    setattr(obj, field, value)


def parse_value(text: str, hint: Any) -> Any:
    """Parse a command-line string as the annotated type: bool, int, float (also "1/1000"), str,
    tuple (comma separated) or Optional (none/null)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        return parse_value(text, next(a for a in args if a is not type(None)))
    if origin is tuple:
        parts = [p.strip() for p in text.split(",")] if text else []
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(parse_value(p, args[0]) for p in parts)
        if len(parts) != len(args):
            raise ValueError(f"expected {len(args)} comma-separated values, got {text!r}")
        return tuple(parse_value(p, a) for p, a in zip(parts, args, strict=True))
    if hint is bool:
        if text.lower() in ("true", "1", "yes", "on"):
            return True
        if text.lower() in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if hint is int:
        try:
            value = float(text)  # also accepts "1e5" and "10_000"
        except ValueError:
            value = math.nan
        if not value.is_integer():
            raise ValueError(f"expected an integer, got {text!r}")
        return int(value)
    if hint is float:
        num, slash, den = text.partition("/")
        try:
            return float(num) / float(den) if slash else float(text)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"expected a number, got {text!r}") from None
    if hint is str:
        return text
    raise ValueError(f"cannot parse values of type {hint}")
