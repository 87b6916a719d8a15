"""Bridges between a dense and a sparse model (PAPER.md 11.1): one encoder/decoder pair per sublayer site.

A site is the residual stream entering a sublayer, before its RMSNorm: hook `{l}.resid_in` (before the
attention of layer l) and `{l}.resid_mid` (before its MLP), so there are L = 2 * n_layer sites, in
forward order. At site i

    encoder f_i: h_dense [.., d_dense] -> AbsTopK_k(W_f h + b_f) [.., d_sparse]   (k = d_sparse / 4)
    decoder g_i: h_sparse [.., d_sparse] -> W_g h + b_g [.., d_dense]

so each bridge is an SAE whose latent space is the sparse model's residual stream. Both models must
have the same number of layers (sites correspond one to one) and the same vocabulary (the KL terms
compare their next-token distributions).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from sparsecircuits.bridges.config import BridgeConfig
from sparsecircuits.errors import UserError
from sparsecircuits.model.abstopk import abstopk
from sparsecircuits.model.config import ModelConfig
from sparsecircuits.model.gpt import GPT

SITE_HOOKS = ("resid_in", "resid_mid")  # before attention, before the MLP


def bridge_sites(n_layer: int) -> list[str]:
    """The L = 2 * n_layer site hook names in forward order: "0.resid_in", "0.resid_mid", "1.resid_in", ..."""
    return [f"{layer}.{hook}" for layer in range(n_layer) for hook in SITE_HOOKS]


def check_compatible(sparse: ModelConfig, dense: ModelConfig) -> None:
    """UserError unless the two models can be bridged site by site."""
    if sparse.vocab_size != dense.vocab_size:
        raise UserError(
            f"vocabulary mismatch: the sparse model has {sparse.vocab_size} tokens, the dense model "
            f"{dense.vocab_size}; bridged models must share one tokenizer"
        )
    if sparse.n_layer != dense.n_layer:
        raise UserError(
            f"layer mismatch: the sparse model has {sparse.n_layer} layers, the dense model {dense.n_layer}; "
            f"bridges pair sublayer i of one with sublayer i of the other (set model.n_layer={dense.n_layer})"
        )


class Bridges(nn.Module):
    """Encoders and decoders of every site. Parameter names: `encoders.{i}.weight` [d_sparse, d_dense],
    `encoders.{i}.bias`, `decoders.{i}.weight` [d_dense, d_sparse], `decoders.{i}.bias`."""

    def __init__(self, n_layer: int, d_dense: int, d_sparse: int, k: int | None):
        super().__init__()
        self.sites = bridge_sites(n_layer)
        self.d_dense, self.d_sparse, self.k = d_dense, d_sparse, k
        self.encoders = nn.ModuleList(nn.Linear(d_dense, d_sparse) for _ in self.sites)
        self.decoders = nn.ModuleList(nn.Linear(d_sparse, d_dense) for _ in self.sites)
        for lin in [*self.encoders, *self.decoders]:
            # Variance-preserving init (std 1/sqrt(fan_in)): a bridge starts by keeping the residual's scale.
            nn.init.normal_(lin.weight, std=1.0 / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)

    @classmethod
    def for_models(cls, sparse: GPT, dense: GPT, cfg: BridgeConfig | None = None) -> Bridges:
        """Bridges sized for a (sparse, dense) pair; UserError when the pair cannot be bridged."""
        check_compatible(sparse.cfg, dense.cfg)
        k = (cfg or BridgeConfig()).encoder_k(sparse.cfg.d_model)
        return cls(sparse.cfg.n_layer, dense.cfg.d_model, sparse.cfg.d_model, k)

    def __len__(self) -> int:
        return len(self.sites)

    def encode(self, i: int, h_dense: Tensor) -> Tensor:
        """f_i: [..., d_dense] -> [..., d_sparse], with AbsTopK over the last dim."""
        z = self.encoders[i](h_dense)
        return z if self.k is None else abstopk(z, self.k)

    def decode(self, i: int, h_sparse: Tensor) -> Tensor:
        """g_i: [..., d_sparse] -> [..., d_dense]."""
        return self.decoders[i](h_sparse)

    def dims(self) -> dict[str, int | None]:
        return {"n_sites": len(self.sites), "d_dense": self.d_dense, "d_sparse": self.d_sparse, "k": self.k}


class BridgedModel(nn.Module):
    """What joint training updates and checkpoints: the sparse GPT (`sparse.*`) and its bridges
    (`bridges.*`). The dense model is not part of it: it stays frozen and is never saved."""

    def __init__(self, sparse: GPT, bridges: Bridges):
        super().__init__()
        self.sparse = sparse
        self.bridges = bridges
