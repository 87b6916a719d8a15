"""Bridge hyperparameters: loss coefficients and the encoder's AbsTopK, set with `--set bridge.KEY=VALUE`.

The sparse model and the optimizer keep using `model.*` and `train.*` (train/config.py); this file only
adds the `bridge.*` section and splits the command line's `--set` items between the two.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any

from sparsecircuits.errors import UserError, reject_unknown_keys
from sparsecircuits.train.config import apply_override

SECTION = "bridge"


@dataclass
class BridgeConfig:
    """Joint-training loss (PAPER.md 11.3): coef_lm * LM + coef_nmse * NMSE + coef_kl_ds * KL_d->s
    + coef_kl_sd * KL_s->d. A coefficient of 0 skips that term's forward passes entirely."""

    afrac: float = 0.25  # encoder AbsTopK kept fraction: k = int(afrac * d_sparse); 1.0 = no AbsTopK
    coef_lm: float = 1.0  # the sparse model's own next-token loss
    coef_nmse: float = 1.0  # sum over sites of NMSE(f(h_d), h_s) + NMSE(g(h_s), h_d)
    coef_kl_ds: float = 1.0  # sum over sites of KL(y_dense || sparse suffix from f(h_d))
    coef_kl_sd: float = 1.0  # sum over sites of KL(y_dense || dense suffix from g(h_s))

    def encoder_k(self, d_sparse: int) -> int | None:
        """AbsTopK k of the encoders, or None for no AbsTopK (afrac 1)."""
        return None if self.afrac >= 1.0 else max(1, int(self.afrac * d_sparse))

    def validate(self) -> BridgeConfig:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value < 0:
                raise UserError(f"bridge config: {f.name} must be a number >= 0, got {value!r}")
        if not 0.0 < self.afrac <= 1.0:
            raise UserError(f"bridge config: afrac must be in (0, 1], got {self.afrac}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BridgeConfig:
        reject_unknown_keys(cls, d, "bridge config")
        return cls(**d).validate()


def split_sets(sets: typing.Iterable[str]) -> tuple[list[str], list[str]]:
    """Split `--set` items into (bridge.* items, model.* / train.* items), keeping their order."""
    bridge, rest = [], []
    for item in sets:
        (bridge if item.strip().startswith(SECTION + ".") else rest).append(item)
    return bridge, rest


def build_bridge_config(sets: typing.Iterable[str] = ()) -> BridgeConfig:
    """Defaults, then `bridge.KEY=VALUE` overrides, then validation."""
    cfg = BridgeConfig()
    for item in sets:
        apply_override({SECTION: cfg}, item)
    return cfg.validate()
