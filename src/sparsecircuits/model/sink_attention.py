"""Attention with a sink through the fused attention kernel.

The sink is a per-head logit b_h in the softmax denominator, i.e. an always-visible key whose value is zero.
Materialising [B, H, T, T] probabilities to add it (the reference, `gpt.attention_probs`) rules out flash
attention. Here the sink becomes a real key slot so one ordinary causal `scaled_dot_product_attention` call
computes it exactly, on every device and dtype that SDPA supports:

- a dummy query row and the sink key are prepended, so the square causal mask stays the built-in one
  (query t+1 sees the sink and keys 0..t; the dummy row sees only the sink and is dropped);
- one extra head channel carries the sink: 1 in every query, b_h / scale in the sink key, 0 in real keys,
  so the sink's score is exactly b_h and every real score is unchanged;
- the head width is padded to a multiple of 8 (what fused kernels want); the sink's value is all zeros.

Gradients, including the sink logit's, flow through SDPA's own backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# False selects the reference: explicit probabilities (`attention_probs`) times values.
USE_FUSED_SINK = True


def sink_attention(q: Tensor, k: Tensor, v: Tensor, sink_logit: Tensor, scale: float) -> Tensor:
    """Causal attention with a zero-value sink slot.

    q, k, v: [B, H, T, D]; sink_logit: [H]. Returns [B, H, T, D], equal to
    `attention_probs(q, k, sink_logit) @ v` up to float rounding.
    """
    B, H, T, D = q.shape
    pad = 8 - D % 8 if D % 8 else 8  # at least one channel for the sink
    opts = dict(dtype=q.dtype, device=q.device)
    one_hot = torch.zeros(pad, **opts)
    one_hot[0] = 1.0
    q_ext = torch.cat([q, one_hot.expand(B, H, T, pad)], dim=-1)
    # Finite, so the dummy query's 0 * logit is 0 and a -inf sink (no sink at all) gives no NaN.
    logit = sink_logit.clamp(-1e4, 1e4).to(q.dtype) / scale
    sink_key = torch.cat([torch.zeros(H, D, **opts), logit[:, None], torch.zeros(H, pad - 1, **opts)], dim=-1)
    k_ext = torch.cat([k, torch.zeros(B, H, T, pad, **opts)], dim=-1)
    v_ext = torch.cat([v, torch.zeros(B, H, T, pad, **opts)], dim=-1)
    zero_row = torch.zeros(B, H, 1, D + pad, **opts)
    q_all = torch.cat([zero_row, q_ext], dim=2)
    k_all = torch.cat([sink_key[None, :, None].expand(B, H, 1, D + pad), k_ext], dim=2)
    v_all = torch.cat([zero_row, v_ext], dim=2)
    y = F.scaled_dot_product_attention(q_all, k_all, v_all, is_causal=True, scale=scale)
    return y[:, :, 1:, :D]
