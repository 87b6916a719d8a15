"""Model configuration: one dataclass, saved as plain JSON in a run's config.json."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sparsecircuits.errors import UserError, reject_unknown_keys
from sparsecircuits.model.locations import NODE_LOCATIONS, node_location

POS_EMB_KINDS = ("none", "add", "concat")
ACTIVATIONS = ("gelu", "relu")


@dataclass
class ModelConfig:
    vocab_size: int = 2048
    n_layer: int = 4
    d_model: int = 128
    n_head: int = 8  # n_head * d_head is the attention width; need not equal d_model
    d_head: int = 16
    d_mlp: int = 512  # 4 * d_model by convention, kept explicit
    n_ctx: int = 256
    bias: bool = True
    afrac: float = 0.25  # AbsTopK kept fraction at each enabled location; 1.0 disables
    afrac_locs: tuple[str, ...] = NODE_LOCATIONS  # where AbsTopK applies (subset of NODE_LOCATIONS)
    sink: bool = False  # learnable per-head attention-sink logit
    bigram_table: bool = False  # dense [vocab, vocab] table; row of the current token added to the logits
    pos_emb: str = "none"  # "none" | "add" | "concat" (read-only channels appended to each sublayer input)
    d_pos_emb: int = 0  # width of the concatenated positions when pos_emb == "concat"
    residual_relu: bool = False
    tied_unembed: bool = False
    final_logits_bias: bool = False  # learnable [vocab] bias added to the logits
    activation: str = "gelu"  # "gelu" | "relu"
    # Epsilon of every RMSNorm. Imported models of the paper authors use float32's machine epsilon
    # (torch.nn.RMSNorm's default for float32 inputs, ~1.19e-7).
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        # JSON has no tuples; accept a list so from_dict(json.load(...)) round-trips.
        if isinstance(self.afrac_locs, list):
            self.afrac_locs = tuple(self.afrac_locs)

    # ---- derived sizes -------------------------------------------------------------------------

    @property
    def d_attn(self) -> int:
        """Width of the flat q, k and v vectors (all heads side by side)."""
        return self.n_head * self.d_head

    @property
    def d_in(self) -> int:
        """Width of a sublayer's normalised input: the residual plus any concatenated positions."""
        return self.d_model + (self.d_pos_emb if self.pos_emb == "concat" else 0)

    def location_width(self, loc: str) -> int:
        """Width of a per-layer node location such as "attn.q" (layer prefix not included)."""
        return node_location(loc).width(self)

    def topk_k(self, loc: str) -> int | None:
        """AbsTopK k at a node location, or None where AbsTopK is off (not enabled there, or afrac 1)."""
        width = self.location_width(loc)
        if loc not in self.afrac_locs or self.afrac >= 1.0:
            return None
        # Floor, as in the paper authors' code (int(afrac * width)), so imported models match exactly.
        return int(self.afrac * width)

    # ---- validation and (de)serialisation ------------------------------------------------------

    def validate(self) -> ModelConfig:
        """Raise UserError with a one-line message for the first bad value; return self when fine."""
        for name in ("vocab_size", "n_layer", "d_model", "n_head", "d_head", "d_mlp", "n_ctx"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("d_pos_emb", self.d_pos_emb, minimum=0)
        for name in ("bias", "sink", "bigram_table", "residual_relu", "tied_unembed", "final_logits_bias"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"model config: {name} must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.afrac, bool) or not isinstance(self.afrac, (int, float)):
            raise UserError(f"model config: afrac must be a number in (0, 1], got {self.afrac!r}")
        if not 0.0 < self.afrac <= 1.0:
            raise UserError(f"model config: afrac must be in (0, 1], got {self.afrac}")
        if not isinstance(self.afrac_locs, tuple) or not all(isinstance(s, str) for s in self.afrac_locs):
            raise UserError(
                f"model config: afrac_locs must be a list of location names, got {self.afrac_locs!r}"
            )
        unknown = [s for s in self.afrac_locs if s not in NODE_LOCATIONS]
        if unknown:
            raise UserError(
                f"model config: unknown afrac_locs {', '.join(map(repr, unknown))}; "
                f"expected a subset of {', '.join(NODE_LOCATIONS)}"
            )
        eps = self.norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise UserError(f"model config: norm_eps must be a positive number, got {self.norm_eps!r}")
        if self.pos_emb not in POS_EMB_KINDS:
            raise UserError(
                f"model config: pos_emb must be one of {', '.join(POS_EMB_KINDS)}, got {self.pos_emb!r}"
            )
        if self.pos_emb == "concat" and self.d_pos_emb < 1:
            raise UserError("model config: pos_emb 'concat' needs d_pos_emb >= 1")
        if self.pos_emb != "concat" and self.d_pos_emb != 0:
            raise UserError(
                f"model config: d_pos_emb must be 0 unless pos_emb is 'concat' (pos_emb is {self.pos_emb!r})"
            )
        if self.activation not in ACTIVATIONS:
            raise UserError(
                f"model config: activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}"
            )
        for loc in NODE_LOCATIONS:
            k = self.topk_k(loc)
            if k is not None and k < 1:
                raise UserError(
                    f"model config: AbsTopK keeps 0 of {self.location_width(loc)} at {loc} "
                    f"(afrac {self.afrac}); raise afrac or widen the layer"
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["afrac_locs"] = list(self.afrac_locs)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of to_dict; missing keys take defaults, unknown keys are an error. Validates."""
        reject_unknown_keys(cls, d, "model config")
        return cls(**d).validate()


def _check_int(name: str, value: Any, minimum: int) -> None:
    # bool is an int subclass in Python; reject it so `n_layer: true` is not read as 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"model config: {name} must be an integer >= {minimum}, got {value!r}")
