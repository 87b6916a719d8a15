"""Compact weight files (experiments/compact.py): sparse tensors exact, dense tables within 8-bit steps."""

from __future__ import annotations

import pytest
import torch

from sparsecircuits.errors import UserError
from sparsecircuits.experiments.compact import (
    TABLES_FILE,
    WEIGHTS_FILE,
    compact,
    dequantize_rows,
    expand,
    quantize_rows,
    read_compact,
    write_compact,
)


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sparse = torch.randn(64, 32, generator=g) * (torch.rand(64, 32, generator=g) < 0.1)
    return {
        "w.sparse": sparse,
        "w.dense": torch.randn(8, 8, generator=g),
        "w.zero": torch.zeros(5, 3),
        "bias": torch.randn(7, generator=g),
        "bigram_table": torch.randn(16, 16, generator=g) * 3,
    }


def test_sparse_tensors_are_stored_as_nonzeros_and_come_back_exactly(tmp_path):
    state = _state()
    weights, tables, shapes = compact(state)
    assert set(shapes) == {"w.sparse", "w.zero"}
    assert weights["w.sparse.nz_value"].numel() == int((state["w.sparse"] != 0).sum())
    assert "w.dense" in weights and "bias" in weights
    write_compact(state, tmp_path)
    back = read_compact(tmp_path)
    assert set(back) == set(state)
    for name in ("w.sparse", "w.dense", "w.zero", "bias"):
        assert back[name].equal(state[name]), name
        assert back[name].dtype == state[name].dtype


def test_tables_round_trip_within_half_a_step_per_row():
    table = torch.randn(32, 50) * torch.logspace(-3, 1, 32)[:, None]  # rows of very different ranges
    table[3] = 0  # an all-zero row stays zero
    table[4, 7] = 100.0  # a row dominated by one entry keeps that entry exactly
    q, scale = quantize_rows(table)
    assert q.dtype == torch.int8 and scale.shape == (32,)
    back = dequantize_rows(q, scale)
    assert ((back - table).abs() <= scale[:, None] / 2 + 1e-6).all()
    assert back[3].eq(0).all()
    assert back[4, 7] == pytest.approx(100.0)
    assert expand({}, {"t.int8": q, "t.row_scale": scale}, {})["t"].equal(back)


def test_a_damaged_compact_file_is_a_user_error(tmp_path):
    write_compact(_state(), tmp_path)
    (tmp_path / TABLES_FILE).write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="corrupt or truncated"):
        read_compact(tmp_path)
    write_compact(_state(), tmp_path)
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(UserError, match="not found"):
        read_compact(tmp_path)


def test_a_model_without_tables_round_trips(tmp_path):
    from sparsecircuits.model.config import ModelConfig
    from sparsecircuits.model.gpt import GPT

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=32, n_layer=1, d_model=16, n_head=2, d_head=8, d_mlp=32, n_ctx=8)
    state = GPT(cfg).state_dict()
    write_compact(state, tmp_path)
    back = read_compact(tmp_path)
    assert set(back) == set(state)
    assert all(back[k].equal(v) for k, v in state.items())
