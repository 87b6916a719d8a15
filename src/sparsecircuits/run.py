"""A run directory: config.json, model.safetensors, tokenizer.json, metrics.jsonl, checkpoints/.

config.json holds {"model": ModelConfig dict, "train": TrainConfig dict, "data": {"dir", "content_hash",
"vocab_size"}, "tokenizer_sha256", "bigram_val_loss", "preset", "code_version", ...}. Only "model" is needed
to rebuild the network, so other writers (e.g. the importer of the authors' checkpoints) may leave the rest
out. `load_run` refuses a tokenizer.json that no longer matches "tokenizer_sha256" (runs installed from the
shipped demo models are checked against the SHA256SUMS they came with; runs that record neither are not
checked).
Weights are safetensors only (never pickle), with the state-dict names of DESIGN.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn

from sparsecircuits.errors import UserError
from sparsecircuits.io import atomic_write, read_json
from sparsecircuits.model.config import ModelConfig
from sparsecircuits.model.gpt import GPT

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    model: GPT  # in eval mode
    tokenizer: Tokenizer


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP (or torch.compile) wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def state_dict_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies of the state dict (safetensors refuses shared or strided storage)."""
    return {k: v.detach().to("cpu").contiguous() for k, v in unwrap(model).state_dict().items()}


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Atomically write a state dict (contiguous CPU tensors) to a safetensors file."""
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))


def save_model(model: nn.Module, path: str | Path) -> None:
    """Atomically write the model's weights to a safetensors file."""
    save_tensors(state_dict_for_saving(model), path)


def load_tensors(path: str | Path, what: str = "weights file") -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing, truncated or corrupt file is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{what} is corrupt or truncated: {path} ({str(e).splitlines()[0]})") from None


def load_weights(model: nn.Module, path: str | Path, what: str = "weights file") -> None:
    """Load a safetensors state dict into `model` (strict: names and shapes must match exactly)."""
    tensors = load_tensors(path, what)
    expected = unwrap(model).state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        detail = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(extra[:3])}"
        raise UserError(f"{what} does not match the model config: {detail} ({path})")
    bad = [k for k, v in tensors.items() if v.shape != expected[k].shape]
    if bad:
        k = bad[0]
        raise UserError(
            f"{what} does not match the model config: {k} has shape {list(tensors[k].shape)}, "
            f"expected {list(expected[k].shape)} ({path})"
        )
    unwrap(model).load_state_dict(tensors, strict=True)


def model_config_of(config: dict[str, Any], path: Path) -> ModelConfig:
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise UserError(f'{path / CONFIG_FILE} has no "model" section')
    try:
        return ModelConfig.from_dict(config["model"])
    except TypeError as e:
        raise UserError(f"{path / CONFIG_FILE}: bad model config ({e})") from None


def recorded_tokenizer_sha256(config: dict[str, Any], path: Path) -> tuple[str | None, str]:
    """(SHA-256 the run's tokenizer.json must have, where it is recorded); (None, "") when nothing is.

    Runs trained since the hash was introduced record it in config.json; a run installed from the shipped
    demo models (config "shipped": {"from": DIR, "sha256": model entry}) is checked against DIR/SHA256SUMS
    while that file still lists the installed model."""
    from sparsecircuits.data.tokenizer import HASH_KEY
    from sparsecircuits.experiments.shipped import SUMS, read_sums

    if isinstance(config.get(HASH_KEY), str):
        return config[HASH_KEY], str(path / CONFIG_FILE)
    shipped = config.get("shipped")
    if isinstance(shipped, dict) and isinstance(shipped.get("from"), str):
        root = Path(shipped["from"])
        if (root / SUMS).is_file():
            sums = read_sums(root)
            if shipped.get("sha256") in sums.values() and TOKENIZER_FILE in sums:
                return sums[TOKENIZER_FILE], str(root / SUMS)
    return None, ""


def check_run_tokenizer(path: Path, config: dict[str, Any]) -> None:
    """UserError when the run's tokenizer.json no longer has the SHA-256 recorded for it (if any is)."""
    from sparsecircuits.data.tokenizer import check_tokenizer_file

    check_tokenizer_file(path / TOKENIZER_FILE, *recorded_tokenizer_sha256(config, path))


def load_run(path: str | Path, device: str | torch.device = "cpu") -> Run:
    """Open a run directory: config, model (eval mode, on `device`) and tokenizer (checked against its hash)."""
    from sparsecircuits.data.tokenizer import load_tokenizer

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"run directory not found: {path}")
    config = read_json(path / CONFIG_FILE, "run config")
    cfg = model_config_of(config, path)
    tokenizer = load_tokenizer(path / TOKENIZER_FILE)
    check_run_tokenizer(path, config)
    if tokenizer.get_vocab_size() != cfg.vocab_size:
        raise UserError(
            f"{path / TOKENIZER_FILE} has {tokenizer.get_vocab_size()} tokens but the model's vocab_size "
            f"is {cfg.vocab_size}"
        )
    model = GPT(cfg)
    if not (path / MODEL_FILE).is_file():
        hint = (
            " (training not finished? resume it with `train --resume`)"
            if (path / CHECKPOINT_DIR).is_dir()
            else ""
        )
        raise UserError(f"model weights not found: {path / MODEL_FILE}{hint}")
    load_weights(model, path / MODEL_FILE, "model weights")
    model.to(device).eval()
    return Run(path=path, config=config, model=model, tokenizer=tokenizer)
