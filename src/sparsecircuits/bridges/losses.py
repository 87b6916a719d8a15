"""The joint-training loss of a sparse model and its bridges against a frozen dense model (PAPER.md 11.3).

Every pass is the models' one forward (model/gpt.py) with hooks:
  - clean passes read the residual at every site (`read_sites`, through `GPT.run_with_cache`);
  - hybrid passes replace the residual at one site and run the rest of the model on it
    (`hybrid_logits`). The prefix before the site is recomputed and its result discarded: simple
    and exact, at the cost of some compute.

With sites i = 0 .. L-1, dense residuals h_d[i], sparse residuals h_s[i], dense log-probs log y_d:
    lm        = CE(sparse logits, next tokens)
    nmse_enc  = [NMSE(f_i(h_d[i]), h_s[i])]_i                       per site, [L]
    nmse_dec  = [NMSE(g_i(h_s[i]), h_d[i])]_i                       per site, [L]
    kl_ds     = [KL(y_d || sparse forward with site i := f_i(h_d[i])))]_i
    kl_sd     = [KL(y_d || dense forward with site i := g_i(h_s[i])))]_i
    loss      = coef_lm lm + coef_nmse sum(nmse_enc + nmse_dec) + coef_kl_ds sum(kl_ds) + coef_kl_sd sum(kl_sd)
No stop-gradients: the NMSE terms pull both the bridge and the sparse residual (the dense side is frozen),
and the KL_s->d gradient reaches the decoder and the sparse prefix through the frozen dense suffix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from sparsecircuits.bridges.config import BridgeConfig
from sparsecircuits.bridges.modules import BridgedModel
from sparsecircuits.model.gpt import GPT

TERMS = ("lm", "nmse_enc", "nmse_dec", "kl_ds", "kl_sd")  # the per-site terms are [L] tensors
NMSE_EPS = 1e-12


def read_sites(model: GPT, idx: Tensor, sites: Sequence[str]) -> tuple[Tensor, list[Tensor]]:
    """Plain forward, read at the sites. idx [B, T] -> (logits [B, T, V], residual at each site [B, T, d]).

    Nothing is detached: gradients flow into both the logits and the site residuals."""
    cache = model.run_with_cache(idx, [*sites, "logits"])
    return cache["logits"], [cache[site] for site in sites]


def hybrid_logits(
    model: GPT, idx: Tensor, site: str, replacement: Tensor, at: Tensor | None = None
) -> Tensor:
    """The model's forward with its residual at `site` replaced by `replacement` [B, T, d].

    Returns logits [B, T, V] (or [B, V] with `at`, see GPT.forward)."""
    with model.hooks({site: lambda _x: replacement}):
        return model(idx, at=at)


def nmse(pred: Tensor, target: Tensor) -> Tensor:
    """sum ||pred - target||^2 / sum ||target - mean(target)||^2 over all tokens of the batch.

    pred, target: [..., d]; the mean is the per-channel mean over all tokens. Returns a 0-d float32 tensor:
    0 is perfect, 1 is as good as predicting the batch mean."""
    pred, target = pred.float(), target.float()
    centred = target - target.reshape(-1, target.shape[-1]).mean(0)
    return (pred - target).pow(2).sum() / (centred.pow(2).sum() + NMSE_EPS)


def kl_per_token(ref_log_probs: Tensor, logits: Tensor) -> Tensor:
    """KL(P_ref || softmax(logits)) averaged over tokens. ref_log_probs, logits: [..., V] -> 0-d tensor."""
    log_q = logits.float().log_softmax(-1)
    kl = F.kl_div(log_q, ref_log_probs.float(), log_target=True, reduction="none").sum(-1)
    return kl.mean()


def bridge_losses(
    model: BridgedModel, dense: GPT, x: Tensor, y: Tensor, cfg: BridgeConfig
) -> dict[str, Tensor]:
    """All loss terms for one batch. x, y: LongTensor [B, T] inputs and next-token targets.

    Returns {"lm": 0-d, "nmse_enc": [L], "nmse_dec": [L], "kl_ds": [L], "kl_sd": [L], "loss": 0-d}. A
    term whose coefficient is 0 is not computed and is absent, except lm (always reported)."""
    bridges, sparse = model.bridges, model.sparse
    sites = bridges.sites
    with torch.no_grad():
        dense_logits, h_d = read_sites(dense, x, sites)
        ref = dense_logits.float().log_softmax(-1)
    logits, h_s = read_sites(sparse, x, sites)
    terms: dict[str, Tensor] = {"lm": F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))}
    need_enc = cfg.coef_nmse > 0 or cfg.coef_kl_ds > 0
    need_dec = cfg.coef_nmse > 0 or cfg.coef_kl_sd > 0
    enc = [bridges.encode(i, h) for i, h in enumerate(h_d)] if need_enc else []
    dec = [bridges.decode(i, h) for i, h in enumerate(h_s)] if need_dec else []
    if cfg.coef_nmse > 0:
        terms["nmse_enc"] = torch.stack([nmse(e, h) for e, h in zip(enc, h_s, strict=True)])
        terms["nmse_dec"] = torch.stack([nmse(d, h) for d, h in zip(dec, h_d, strict=True)])
    if cfg.coef_kl_ds > 0:
        terms["kl_ds"] = torch.stack(
            [kl_per_token(ref, hybrid_logits(sparse, x, s, e)) for s, e in zip(sites, enc, strict=True)]
        )
    if cfg.coef_kl_sd > 0:
        terms["kl_sd"] = torch.stack(
            [kl_per_token(ref, hybrid_logits(dense, x, s, d)) for s, d in zip(sites, dec, strict=True)]
        )
    terms["loss"] = total_loss(terms, cfg)
    return terms


def total_loss(terms: dict[str, Tensor], cfg: BridgeConfig) -> Tensor:
    """The weighted sum of PAPER.md 11.3 (per-site terms summed over sites)."""
    coef = {
        "lm": cfg.coef_lm,
        "nmse_enc": cfg.coef_nmse,
        "nmse_dec": cfg.coef_nmse,
        "kl_ds": cfg.coef_kl_ds,
        "kl_sd": cfg.coef_kl_sd,
    }
    return sum(coef[name] * terms[name].sum() for name in TERMS if name in terms)
