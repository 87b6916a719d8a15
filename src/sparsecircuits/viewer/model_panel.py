"""The model panel: training curves, weight density per layer and matrix, top tokens of embedding channels.

Reads the run directory's files directly (metrics.jsonl, model.safetensors, tokenizer.json); the model
itself is not built, so this panel is quick even for a large run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from sparsecircuits.errors import UserError
from sparsecircuits.io import read_json
from sparsecircuits.model.locations import (
    LAYER_HOOKS,
    LOCATIONS,
    RESIDUAL_READ,
    RESIDUAL_WRITE,
    split_node_name,
    weight_matrices,
)

SERIES = ("loss", "val_loss", "l0_frac", "nonzero_frac", "lr")
MAX_POINTS = 600
MATRICES = weight_matrices()
# Columns of the density table: a matrix, or each location of a stacked one (c_attn: attn.q, attn.k, attn.v).
LAYER_MATRICES = tuple(
    column for m in MATRICES for column in (m.dst if len(m.dst) > 1 else (m.param.removesuffix(".weight"),))
)
GLOBAL_MATRICES = ("transformer.wte.weight", "lm_head.weight", "transformer.wpe.weight", "bigram_table")
TOP_TOKENS = 10


def read_metrics(path: Path) -> dict[str, list[list[float]]]:
    """[step, value] points of each known series in metrics.jsonl (thinned to at most MAX_POINTS)."""
    series: dict[str, list[list[float]]] = {name: [] for name in SERIES}
    if not path.is_file():
        return series
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interrupted run
            if not isinstance(rec, dict) or not isinstance(rec.get("step"), (int, float)):
                continue
            for name in SERIES:
                value = rec.get(name)
                if isinstance(value, (int, float)) and value == value:  # drop NaN
                    series[name].append([rec["step"], value])
    return {name: thin(points) for name, points in series.items()}


def thin(points: list[list[float]], n: int = MAX_POINTS) -> list[list[float]]:
    """Every k-th point (and the last), so that at most about n remain."""
    if len(points) <= n:
        return points
    k = -(-len(points) // n)
    kept = points[::k]
    return kept if kept[-1] is points[-1] else [*kept, points[-1]]


def _density(t: torch.Tensor) -> dict[str, Any]:
    nonzero = int(torch.count_nonzero(t))
    return {"nonzero": nonzero, "numel": t.numel(), "density": nonzero / max(t.numel(), 1)}


def weight_density(path: Path, n_layer: int) -> dict[str, Any]:
    """Nonzero fraction of each layer's matrices (c_attn split into q, k, v) and of the global ones."""
    if not path.is_file():
        raise UserError(f"model weights not found: {path}")
    layers = []
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        for l in range(n_layer):
            row: dict[str, Any] = {}
            for m in MATRICES:
                name = f"transformer.h.{l}.{m.param}"
                if name not in keys:
                    continue
                weight = f.get_tensor(name)
                if len(m.dst) > 1:  # rows stacked in equal sections, one per location
                    row.update({loc: _density(part) for loc, part in zip(m.dst, weight.chunk(len(m.dst)))})
                else:
                    row[m.param.removesuffix(".weight")] = _density(weight)
            layers.append(row)
        global_rows = {name: _density(f.get_tensor(name)) for name in GLOBAL_MATRICES if name in keys}
    return {"columns": list(LAYER_MATRICES), "layers": layers, "global": global_rows}


def embedding_top_tokens(
    path: Path, vocab: list[str], channels: list[int], k: int = TOP_TOKENS
) -> list[dict[str, Any]]:
    """For each residual channel c: the k tokens with the largest |wte[token, c]| (nonzero only)."""
    with safe_open(str(path), framework="pt") as f:
        wte = f.get_tensor("transformer.wte.weight").float()
    out = []
    for c in channels:
        if not 0 <= c < wte.shape[1]:
            raise UserError(f"embedding channel {c} out of range (d_model {wte.shape[1]})")
        column = wte[:, c]
        order = torch.argsort(column.abs(), descending=True, stable=True)[:k]
        tokens = [[vocab[int(t)], round(float(column[t]), 5)] for t in order if column[t] != 0]
        out.append({"channel": c, "nonzero": int(torch.count_nonzero(column)), "tokens": tokens})
    return out


def default_channels(circuit: dict[str, Any] | None, d_model: int, n: int = 12) -> list[int]:
    """Channels worth showing first: the circuit's residual reads that no earlier circuit write feeds
    (they carry the token embedding), else all its read channels, else channels 0..n-1."""
    reads: list[tuple[tuple[int, int], int]] = []
    writes: list[tuple[tuple[int, int], int]] = []
    for name in (circuit or {}).get("nodes") or []:
        parts = split_node_name(name)
        if parts is None:
            continue
        layer, loc, channel = parts
        key = (layer, LAYER_HOOKS.index(loc))  # forward order
        if LOCATIONS[loc].kind == RESIDUAL_READ:
            reads.append((key, channel))
        elif LOCATIONS[loc].kind == RESIDUAL_WRITE:
            writes.append((key, channel))
    fed = {(key, c) for key, c in reads for wkey, wc in writes if wc == c and wkey < key}
    embedding = sorted({c for key, c in reads if (key, c) not in fed and c < d_model})
    picked = embedding or sorted({c for _, c in reads if c < d_model})
    return picked[:32] if picked else list(range(min(n, d_model)))


def cached_density(
    path: Path, n_layer: int, cache: dict[Path, tuple[tuple[int, int], dict[str, Any]]]
) -> dict[str, Any]:
    """weight_density, recomputed only when the weights file changes (its mtime or size)."""
    if not path.is_file():
        raise UserError(f"model weights not found: {path}")
    stat = path.stat()
    key = (stat.st_mtime_ns, stat.st_size)
    if path not in cache or cache[path][0] != key:
        cache[path] = (key, weight_density(path, n_layer))
    return cache[path][1]


def model_panel(run_path: Path, cache: dict | None = None) -> dict[str, Any]:
    """Config, training curves and weight density of a run directory (density cached in `cache`)."""
    config = read_json(run_path / "config.json", "run config")
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict):
        raise UserError(f"{run_path}/config.json has no model section")
    n_layer = int(model.get("n_layer", 0))
    return {
        "path": str(run_path),
        "config": {
            k: config.get(k) for k in ("model", "train", "data", "preset", "code_version", "bigram_val_loss")
        },
        "metrics": read_metrics(run_path / "metrics.jsonl"),
        "density": cached_density(run_path / "model.safetensors", n_layer, {} if cache is None else cache),
    }
