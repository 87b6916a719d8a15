"""A bridged run directory: a normal run directory of the sparse model plus the bridges.

    RUN/config.json, model.safetensors, tokenizer.json, metrics.jsonl, checkpoints/   (as any run; `load_run`)
    RUN/bridges.safetensors   encoders.{i}.weight/bias, decoders.{i}.weight/bias for sites i = 0 .. L-1
    RUN/bridges.json          schema, dense run (path, content hash, model config), sites, dims, bridge
                              config, and after training the reference residual RMS per site and the
                              final validation metrics

Checkpoints hold the sparse model and the bridges together (`sparse.*`, `bridges.*`), see train.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparsecircuits.bridges.config import BridgeConfig
from sparsecircuits.bridges.modules import Bridges, bridge_sites, check_compatible
from sparsecircuits.circuits.means import model_content_hash
from sparsecircuits.data.tokenizer import check_same_vocab
from sparsecircuits.errors import UserError
from sparsecircuits.io import atomic_write_json, read_json
from sparsecircuits.model.config import ModelConfig
from sparsecircuits.run import Run, load_run, load_weights, save_model

SCHEMA = "sparsecircuits.bridges/1"
BRIDGES_WEIGHTS = "bridges.safetensors"
BRIDGES_JSON = "bridges.json"


@dataclass
class BridgedRun:
    sparse: Run  # the bridged run itself (model in eval mode)
    dense: Run
    bridges: Bridges  # eval mode, on the same device
    meta: dict[str, Any]  # bridges.json

    @property
    def config(self) -> BridgeConfig:
        return BridgeConfig.from_dict(self.meta["config"])


def bridges_meta(dense: Run, sparse_cfg: ModelConfig, cfg: BridgeConfig) -> dict[str, Any]:
    """The bridges.json written when a bridged run starts."""
    return {
        "schema": SCHEMA,
        "dense": {
            "path": str(Path(dense.path).resolve()),
            "content_hash": model_content_hash(dense.model),
            "model": dense.config.get("model"),
        },
        "sites": bridge_sites(sparse_cfg.n_layer),
        "n_sites": 2 * sparse_cfg.n_layer,
        "d_dense": dense.model.cfg.d_model,
        "d_sparse": sparse_cfg.d_model,
        "k": cfg.encoder_k(sparse_cfg.d_model),
        "config": cfg.to_dict(),
    }


def read_meta(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / BRIDGES_JSON
    if not path.is_file():
        raise UserError(
            f"{run_dir} is not a bridged run: {BRIDGES_JSON} not found (train it with `bridges train`)"
        )
    meta = read_json(path, "bridges metadata")
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
        found = meta.get("schema") if isinstance(meta, dict) else type(meta).__name__
        raise UserError(f"{path}: not a bridges file of schema {SCHEMA} (found {found!r})")
    return meta


def write_meta(run_dir: str | Path, meta: dict[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / BRIDGES_JSON, meta)


def save_bridges(run_dir: str | Path, bridges: Bridges) -> None:
    save_model(bridges, Path(run_dir) / BRIDGES_WEIGHTS)


def open_dense(path: str | Path, meta: dict[str, Any], device: str | torch.device) -> Run:
    """Load the dense run named in bridges.json (or `path`) and check it is the one the bridges were trained with."""
    dense = load_run(path, device)
    expected = meta["dense"]["content_hash"]
    if model_content_hash(dense.model) != expected:
        raise UserError(
            f"dense model {path} is not the one these bridges were trained with (content hash differs "
            f"from {expected})"
        )
    dense.model.requires_grad_(False)
    return dense


def load_bridged(
    run_dir: str | Path, dense_dir: str | Path | None = None, device: str | torch.device = "cpu"
) -> BridgedRun:
    """Open a bridged run: the sparse run, its dense partner (from bridges.json unless `dense_dir`) and the bridges."""
    meta = read_meta(run_dir)
    sparse = load_run(run_dir, device)
    dense = open_dense(dense_dir or meta["dense"]["path"], meta, device)
    check_compatible(sparse.model.cfg, dense.model.cfg)
    check_same_vocab(sparse.tokenizer, dense.tokenizer, f"bridged run {run_dir}", f"dense run {dense.path}")
    bridges = Bridges.for_models(sparse.model, dense.model, BridgeConfig.from_dict(meta["config"]))
    load_weights(bridges, Path(run_dir) / BRIDGES_WEIGHTS, "bridge weights")
    bridges.to(device).eval()
    return BridgedRun(sparse=sparse, dense=dense, bridges=bridges, meta=meta)
