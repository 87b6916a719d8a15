"""Autoregressive sampling from a trained model."""

from __future__ import annotations

import torch
from torch import Tensor, nn


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: Tensor,
    max_new_tokens: int,
    temperature: float = 0.8,
    top_k: int | None = None,
    gen: torch.Generator | None = None,
    stop_token: int | None = None,
) -> Tensor:
    """Extend `idx` [1, T] by up to `max_new_tokens` sampled tokens; returns [1, T + new].

    temperature 0 is greedy decoding. The context is cropped to the model's n_ctx (the model has no
    positional limit without position embeddings, but it was trained on windows of n_ctx). Sampling stops
    early after `stop_token` (e.g. end of text)."""
    n_ctx = model.cfg.n_ctx
    for _ in range(max_new_tokens):
        logits = model(idx[:, -n_ctx:])[:, -1, :]  # [1, V] float32
        if temperature <= 0:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.shape[-1]:
                kth = torch.topk(logits, top_k).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = logits.softmax(dim=-1)
            nxt = torch.multinomial(probs.cpu(), 1, generator=gen).to(idx.device)
        idx = torch.cat([idx, nxt], dim=1)
        if stop_token is not None and int(nxt) == stop_token:
            break
    return idx
