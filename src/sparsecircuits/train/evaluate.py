"""Validation loss of a model, and the smoothed-bigram baseline it should beat."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sparsecircuits.data.dataset import DatasetDir, load_dataset
from sparsecircuits.data.shards import iter_eval_batches, open_tokens
from sparsecircuits.errors import UserError
from sparsecircuits.train.distributed import autocast

BIGRAM_ALPHAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
BIGRAM_MAX_VOCAB = 8192  # the count table is vocab^2 int64: 0.5 GB at 8192
BIGRAM_MAX_TOKENS = 200_000_000  # counts come from at most this many leading train tokens


@torch.no_grad()
def evaluate_loss(
    model: nn.Module, bin_path: str | Path, n_batches: int, batch_size: int, dtype: str = "auto"
) -> float:
    """Mean next-token cross-entropy (nats per token) over the deterministic eval windows of a token file.

    The windows (shards.iter_eval_batches) are spread evenly over the file and are the same on every call,
    so values at different steps are comparable. Restores the model's train/eval mode afterwards."""
    device = next(model.parameters()).device
    n_ctx = model.cfg.n_ctx
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for w in iter_eval_batches(bin_path, n_ctx, batch_size, n_batches):
        w = w.to(device)
        with autocast(device, dtype):
            logits = model(w[:, :-1])  # [B, T, V] float32
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="sum")
        total += loss.item()
        count += w[:, 1:].numel()
    model.train(was_training)
    if count == 0:
        raise UserError(f"{bin_path} is too short for one evaluation window of {n_ctx + 1} tokens")
    return total / count


def validation_loss(
    model: nn.Module, data_dir: str | Path, n_batches: int = 20, batch_size: int = 8
) -> float:
    """Validation loss of `model` on `data_dir`/val.bin (nats per token)."""
    data = load_dataset(data_dir)
    return evaluate_loss(model, data.val_bin, n_batches, batch_size)


# ---- bigram baseline -----------------------------------------------------------------------------


def pair_counts(tokens: np.ndarray, vocab_size: int, chunk: int = 1 << 24) -> np.ndarray:
    """Counts of consecutive token pairs. tokens: [N] ints < vocab_size -> int64 [V, V] (row = first)."""
    V = vocab_size
    counts = np.zeros(V * V, dtype=np.int64)
    for i in range(0, max(0, len(tokens) - 1), chunk):
        a = np.asarray(tokens[i : i + chunk + 1], dtype=np.int64)  # one token of overlap joins the chunks
        counts += np.bincount(a[:-1] * V + a[1:], minlength=V * V)
    return counts.reshape(V, V)


def bigram_log_probs(counts: np.ndarray, alpha: float) -> np.ndarray:
    """log p(b | a) = log (c(a,b) + alpha u(b)) / (c(a) + alpha): a Dirichlet prior towards the add-one
    unigram u. counts: [V, V] -> float64 [V, V]."""
    V = counts.shape[0]
    uni = counts.sum(0)  # column sums: how often each token follows another
    u = (uni + 1.0) / (uni.sum() + V)
    p = (counts + alpha * u[None, :]) / (counts.sum(1, keepdims=True) + alpha)
    return np.log(p)


def _mean_nll(log_probs: np.ndarray, counts: np.ndarray) -> float:
    return float(-(log_probs * counts).sum() / max(1, counts.sum()))


def bigram_baseline_loss(
    data: DatasetDir, vocab_size: int, n_ctx: int, n_batches: int, batch_size: int
) -> float | None:
    """Validation loss of a smoothed bigram model counted on train.bin, on the model's eval windows.

    The smoothing strength alpha is picked from BIGRAM_ALPHAS on the last 10% of the counted train tokens
    (counts from the first 90%), then the table is recounted on all of them. Scored on exactly the
    windows `evaluate_loss` uses, so the two numbers are directly comparable. Also checks that every
    train token id fits the vocabulary. Returns None for vocabularies too large for a dense table."""
    if vocab_size > BIGRAM_MAX_VOCAB:
        return None
    train = open_tokens(data.train_bin)[:BIGRAM_MAX_TOKENS]
    if len(train) < 2:
        raise UserError(f"{data.train_bin} has fewer than 2 tokens")
    top = int(train.max())
    if top >= vocab_size:
        raise UserError(f"{data.train_bin} has token id {top} >= model vocab_size {vocab_size}")
    split = int(len(train) * 0.9)
    fit, held = pair_counts(train[: split + 1], vocab_size), pair_counts(train[split:], vocab_size)
    alpha = min(BIGRAM_ALPHAS, key=lambda a: _mean_nll(bigram_log_probs(fit, a), held))
    log_probs = bigram_log_probs(fit + held, alpha)
    total, count = 0.0, 0
    for w in iter_eval_batches(data.val_bin, n_ctx, batch_size, n_batches):
        x, y = w[:, :-1].numpy(), w[:, 1:].numpy()
        if int(w.max()) >= vocab_size:
            raise UserError(f"{data.val_bin} has token id {int(w.max())} >= model vocab_size {vocab_size}")
        total -= float(log_probs[x, y].sum())
        count += y.size
    return total / count if count else math.nan
