"""Checkpoints that resume a run exactly: weights, AdamW state, step, RNG and data-sampler state.

Layout: RUN/checkpoints/step_00001000/{model.safetensors, optimizer.safetensors, state.json}.
Each checkpoint is written into a hidden staging directory and renamed into place, so a killed process
never leaves a half-written `step_*` directory. state.json records the SHA-256 of both tensor files and
of its own content ("state_sha256", over the canonical JSON of every other key), so a checkpoint damaged or
edited later (truncated copy, disk error, a hand-edited step or RNG state) is refused with a clear message
instead of resuming from garbage. Format 1 checkpoints (before the state hash) still load. Tensors are
safetensors (never pickle); everything else is JSON.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from sparsecircuits.errors import UserError
from sparsecircuits.io import (
    atomic_write_json,
    atomic_write_text,
    commit_dir,
    file_sha256,
    read_json,
    remove_stale_staging,
    staging_dir,
)
from sparsecircuits.run import CHECKPOINT_DIR, load_tensors, load_weights, state_dict_for_saving

FORMAT_VERSION = 2  # 2: state.json carries "state_sha256"; 1 (no state hash) is still read
READ_FORMATS = (1, 2)
TENSOR_FILES = ("model.safetensors", "optimizer.safetensors")
STEP_DIR = re.compile(r"^step_(\d+)$")


# ---- RNG state <-> JSON --------------------------------------------------------------------------


def encode_state(state: torch.Tensor) -> str:
    """A generator state (uint8 tensor) as base64 text."""
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def decode_state(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def rng_states(data_gen: torch.Generator) -> dict[str, Any]:
    """The data-order generator plus the global torch CPU and CUDA generators."""
    states: dict[str, Any] = {
        "data": encode_state(data_gen.get_state()),
        "torch_cpu": encode_state(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch_cuda"] = [encode_state(s) for s in torch.cuda.get_rng_state_all()]
    return states


def restore_rng_states(states: dict[str, Any], data_gen: torch.Generator) -> None:
    data_gen.set_state(decode_state(states["data"]))
    torch.set_rng_state(decode_state(states["torch_cpu"]))
    cuda = states.get("torch_cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([decode_state(s) for s in cuda])


# ---- optimizer state <-> flat tensors ------------------------------------------------------------


def optimizer_tensors(
    opt: torch.optim.Optimizer, names: Sequence[str]
) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten AdamW state to {"<param name>/<key>": tensor} plus JSON-able non-tensor values.

    names: parameter names in the optimizer's parameter order (param_groups concatenated)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{names[idx]}/{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(names[idx], {})[key] = value
    return tensors, scalars


def load_optimizer_state(
    opt: torch.optim.Optimizer, names: Sequence[str], tensors: dict[str, torch.Tensor], scalars: dict
) -> None:
    """Inverse of optimizer_tensors. Hyperparameters come from the freshly built optimizer (same config)."""
    index = {name: i for i, name in enumerate(names)}
    state: dict[int, dict[str, Any]] = {}
    for flat, value in tensors.items():
        name, _, key = flat.rpartition("/")
        if name not in index:
            raise UserError(
                f"optimizer state names unknown parameter {name!r}: checkpoint does not match model"
            )
        state.setdefault(index[name], {})[key] = value
    for name, values in scalars.items():
        state.setdefault(index[name], {}).update(values)
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


# ---- save / find / load ------------------------------------------------------------------------


def checkpoint_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with a state.json) as (step, path), oldest first."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1][1] if dirs else None


def save_checkpoint(
    run_dir: str | Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    opt_names: Sequence[str],
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoints/step_<state["step"]> atomically and delete all but the newest `keep`.

    state: JSON-able dict with at least "step" (plus tokens, RNG states, ...)."""
    final = Path(run_dir) / CHECKPOINT_DIR / f"step_{state['step']:08d}"
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(final.parent, r"step_[0-9]+")  # left by a run killed while saving
    tmp = staging_dir(final, force=True)
    try:
        save_file(state_dict_for_saving(model), str(tmp / "model.safetensors"))
        tensors, scalars = optimizer_tensors(opt, opt_names)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        files = {f: file_sha256(tmp / f) for f in TENSOR_FILES}
        record = {"format": FORMAT_VERSION, **state, "optimizer_scalars": scalars, "sha256": files}
        atomic_write_json(tmp / "state.json", {**record, "state_sha256": state_sha256(record)})
        commit_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for _, old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(
    path: str | Path, model: nn.Module, opt: torch.optim.Optimizer, opt_names: Sequence[str]
) -> dict[str, Any]:
    """Verify and load a checkpoint into `model` and `opt`; return its state.json dict.

    A damaged checkpoint is a UserError naming the file; delete that step_* directory to fall back to
    an older one."""
    path = Path(path)
    state = read_json(path / "state.json", "checkpoint state")
    check_state(state, path)
    for name, digest in state["sha256"].items():
        f = path / name
        if not f.is_file():
            raise UserError(f"checkpoint is incomplete: {f} is missing")
        if file_sha256(f) != digest:
            raise UserError(
                f"checkpoint is corrupt or truncated: {f} does not match its checksum "
                f"(delete {path} to resume from an earlier checkpoint)"
            )
    load_weights(model, path / "model.safetensors", "checkpoint weights")
    tensors = load_tensors(path / "optimizer.safetensors", "checkpoint optimizer state")
    load_optimizer_state(opt, opt_names, tensors, state.get("optimizer_scalars", {}))
    return state


def state_sha256(record: dict[str, Any]) -> str:
    """Hex SHA-256 of a state.json record without its "state_sha256" key (canonical JSON: sorted keys)."""
    body = json.loads(json.dumps({k: v for k, v in record.items() if k != "state_sha256"}))  # as read back
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_state(state: Any, path: Path) -> None:
    """UserError unless state.json is a known format, unedited (format 2) and lists both tensor files."""
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt not in READ_FORMATS or "step" not in state:
        raise UserError(f"checkpoint {path} has an unknown format (state.json format {fmt!r})")
    if fmt >= 2 and state.get("state_sha256") != state_sha256(state):
        raise UserError(
            f"checkpoint {path / 'state.json'} was edited: its content does not match its state_sha256 "
            f"(restore it, or delete {path} to resume from an earlier checkpoint)"
        )
    sums = state.get("sha256")
    if not isinstance(sums, dict) or set(sums) != set(TENSOR_FILES):
        raise UserError(
            f"checkpoint {path / 'state.json'} does not list the checksums of {', '.join(TENSOR_FILES)}"
        )


def append_metrics(log: Any, rec: dict[str, Any]) -> None:
    """Write one metrics record as a JSON line and flush, so a killed run keeps every logged step."""
    log.write(json.dumps(rec) + "\n")
    log.flush()


def trim_metrics(path: Path, step: int) -> None:
    """On resume, drop metrics records written after the checkpoint at `step`, so every step appears once."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut off by a kill
        if rec.get("step", 0) <= step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))
