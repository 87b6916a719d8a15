"""Compact weight files for shipping a trained pair in git: nonzeros only, dense tables in 8 bits.

A weight-sparse model stored as a plain state dict is mostly zeros, and the dense bigram table (vocab x vocab
float32, 16.8 MB at a 2048-token vocabulary) outweighs everything else. The shipped form keeps:

    weights.safetensors  every tensor but the tables; a tensor at most half nonzero is stored as its flat
                         nonzero indices (int32) and values (float32), exactly; the rest as they are
    tables.safetensors   each dense table as int8 with one float32 scale per row (absmax / 127)

`expand` rebuilds the full state dict. Sparse weights come back bit-identical; a table comes back as
`int8 * scale`, within half a quantisation step of the trained one (the bigram table of the shipped pair
moved validation loss by +0.0004 nats, docs/results.md). The shipped model *is* the expanded one: the demo
prunes and scores what it loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from sparsecircuits.errors import UserError
from sparsecircuits.io import atomic_write
from sparsecircuits.run import load_tensors

TABLES = ("bigram_table",)  # dense [vocab, vocab] tables, stored in 8 bits
SPARSE_MAX_DENSITY = 0.5  # above this, indices cost more than the zeros they drop
INDEX, VALUE, QUANT, SCALE = ".nz_index", ".nz_value", ".int8", ".row_scale"
WEIGHTS_FILE, TABLES_FILE = "weights.safetensors", "tables.safetensors"


def quantize_rows(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric 8-bit quantisation per row: table [R, C] float -> (int8 [R, C], float32 scale [R])."""
    scale = table.abs().amax(dim=1).float() / 127
    q = torch.round(table.float() / scale.clamp_min(torch.finfo(torch.float32).tiny)[:, None])
    return q.clamp(-127, 127).to(torch.int8), scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Inverse of `quantize_rows`: int8 [R, C], scale [R] -> float32 [R, C]."""
    return q.float() * scale[:, None]


def compact(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """Split a state dict into (weights, tables, shapes): see the module docstring for the encoding.

    `shapes` maps each sparse-stored name to its shape (the files' metadata)."""
    weights, tables, shapes = {}, {}, {}
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        if name in TABLES:
            tables[name + QUANT], tables[name + SCALE] = quantize_rows(t)
        elif t.is_floating_point() and t.numel() and (t != 0).float().mean() <= SPARSE_MAX_DENSITY:
            flat = t.flatten()
            index = flat.nonzero().flatten()
            weights[name + INDEX], weights[name + VALUE] = index.to(torch.int32), flat[index].contiguous()
            shapes[name] = list(t.shape)
        else:
            weights[name] = t
    return weights, tables, shapes


def expand(weights: dict[str, torch.Tensor], tables: dict[str, torch.Tensor], shapes: dict) -> dict:
    """Rebuild the state dict from `compact`'s three parts."""
    state = {k: v for k, v in weights.items() if not k.endswith((INDEX, VALUE))}
    for name, shape in shapes.items():
        values = weights[name + VALUE]
        flat = torch.zeros(int(torch.Size(shape).numel()), dtype=values.dtype)
        flat[weights[name + INDEX].long()] = values
        state[name] = flat.view(shape)
    for key in tables:
        if key.endswith(QUANT):
            name = key[: -len(QUANT)]
            state[name] = dequantize_rows(tables[key], tables[name + SCALE])
    return state


def write_compact(state: dict[str, torch.Tensor], folder: Path) -> None:
    """Write `state` as folder/weights.safetensors and folder/tables.safetensors (atomically, each)."""
    weights, tables, shapes = compact(state)
    meta = {"format": "sparsecircuits-compact-1", "shapes": json.dumps(shapes)}
    atomic_write(folder / WEIGHTS_FILE, lambda p: save_file(weights, str(p), metadata=meta))
    atomic_write(
        folder / TABLES_FILE, lambda p: save_file(tables, str(p), metadata={"format": meta["format"]})
    )


def read_compact(folder: Path) -> dict[str, torch.Tensor]:
    """The full state dict stored by `write_compact` in `folder`; a bad file is a one-line UserError."""
    from safetensors import safe_open

    path = folder / WEIGHTS_FILE
    weights = load_tensors(path, "compact weights")
    tables = load_tensors(folder / TABLES_FILE, "compact tables")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    try:
        return expand(weights, tables, json.loads(meta["shapes"]))
    except (KeyError, ValueError, IndexError, RuntimeError) as e:
        raise UserError(f"compact weights are inconsistent: {path} ({e})") from None
