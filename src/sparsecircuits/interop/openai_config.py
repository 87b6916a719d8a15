"""Map the authors' `beeg_config.json` (keyword arguments of their GPTConfig) onto our ModelConfig.

Keys a file leaves out take the defaults of their GPTConfig, as their loader does. Keys that change the
inference forward in a way our model cannot represent are a UserError naming the key; keys that only
matter for training are recorded and otherwise ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from sparsecircuits.errors import UserError
from sparsecircuits.model.locations import NODE_LOCATIONS, NODE_TABLE

CONFIG_FILE = "beeg_config.json"

# Defaults of the authors' GPTConfig (their inference code), used for keys a file leaves out.
DEFAULTS: dict[str, Any] = {
    "block_size": 1024,
    "vocab_size": 50304,
    "n_layer": 12,
    "n_head": 12,
    "d_head": None,  # d_model // n_head
    "d_model": 768,
    "dropout": 0.0,
    "bias": True,
    "ln_bias": True,
    "rms_norm": False,
    "residual_activation_type": "identity",
    "activation_type": "gelu",
    "afrac": None,
    "afrac_loctypes": "attn_in,attn_out,mlp_in,mlp_out",
    "debug_nans": False,
    "tied_unembed": True,
    "tokenizer_name": "tinypython_2k",
    "grad_checkpointing": True,
    "d_mlp": None,  # 4 * d_model
    "enable_bigram_table": False,
    "learnable_bigram_table": False,
    "d_pos_emb": None,
    "dropout_cat_pos_emb": False,
    "sinusoidal_cat_pos_emb": False,
    "enable_sparse_kernels": False,
    "flash": True,
    "sink": False,
}
# Keys their loader consumes before building GPTConfig.
LOADER_KEYS = ("bigram_table_rank", "n_mlp", "use_tied_aux_matrix")
# Keys that do not change the inference forward (training, kernels, bookkeeping).
TRAINING_ONLY = (
    "dropout",
    "dropout_cat_pos_emb",
    "debug_nans",
    "grad_checkpointing",
    "enable_sparse_kernels",
    "learnable_bigram_table",  # the table is in the state dict either way (parameter or buffer)
    "sinusoidal_cat_pos_emb",  # the sinusoids are the stored position embedding
    "flash",  # their loader overrides it; we follow flash=True, the path on which `sink` takes effect
    "tokenizer_name",
    "bigram_table_rank",
)

# Their AbsTopK location names -> our node locations ("attn_in" -> "attn.act_in", ...; model/locations.py).
AFRAC_LOCATIONS: dict[str, str] = {loc.authors: loc.hook for loc in NODE_TABLE if loc.authors}
# AbsTopK on the residual stream itself: no node location of ours.
UNSUPPORTED_LOCATIONS = ("resid_post_attn", "resid_post_mlp")

# torch.nn.RMSNorm without eps uses the epsilon of the input dtype; their models run in float32.
AUTHORS_NORM_EPS = float(torch.finfo(torch.float32).eps)


@dataclass
class AuthorsConfig:
    """The authors' config after defaults and their loader's fix-ups."""

    raw: dict[str, Any]  # the file as read
    values: dict[str, Any]  # every GPTConfig key, defaults filled in
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @property
    def cat_pos_emb(self) -> bool:
        return self.values["d_pos_emb"] is not None

    @property
    def d_in(self) -> int:
        """Width of a sublayer input: the residual, plus the concatenated positions if any."""
        return self["d_model"] + (self["d_pos_emb"] or 0)


def parse_config(raw: Any) -> AuthorsConfig:
    """Check a loaded beeg_config.json and fill in defaults. Raises UserError naming a bad key."""
    if not isinstance(raw, dict):
        raise UserError(f"{CONFIG_FILE} should hold a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(DEFAULTS) - set(LOADER_KEYS))
    if unknown:
        raise UserError(f"{CONFIG_FILE}: unknown key(s) {', '.join(unknown)}; cannot tell what they do")
    values = {**DEFAULTS, **{k: v for k, v in raw.items() if k in DEFAULTS}}
    notes = []
    if "n_mlp" in raw:  # older files; their loader renames it (and it wins over d_mlp)
        values["d_mlp"] = raw["n_mlp"]
        notes.append("n_mlp read as d_mlp")
    if raw.get("use_tied_aux_matrix"):
        raise UserError(f"{CONFIG_FILE}: use_tied_aux_matrix is true; the authors' loader refuses it too")
    _check_types(values)
    if values["d_head"] is None:
        values["d_head"] = values["d_model"] // values["n_head"]
    if values["d_mlp"] is None:
        values["d_mlp"] = 4 * values["d_model"]
    ignored = [f"{k}={raw[k]!r}" for k in TRAINING_ONLY if k in raw]
    if ignored:
        notes.append(f"ignored (no effect on the inference forward): {', '.join(ignored)}")
    if "ln_bias" in raw:
        notes.append("ln_bias ignored: RMSNorm has no bias")
    cfg = AuthorsConfig(raw=dict(raw), values=values, notes=notes)
    _check_representable(cfg)
    return cfg


def model_config_dict(cfg: AuthorsConfig, added_positions: bool, logits_bias: bool) -> dict[str, Any]:
    """Our ModelConfig fields for an authors' config.

    The weights decide two things the config does not: their model always adds `wpe` unless positions
    are concatenated, so `added_positions` is false when that table is all zeros (pos_emb "none"); and
    their `final_logits_bias` is a buffer that is usually zero (`logits_bias`).
    """
    if cfg.cat_pos_emb:
        pos_emb, d_pos_emb = "concat", cfg["d_pos_emb"]
    else:
        pos_emb, d_pos_emb = ("add" if added_positions else "none"), 0
    afrac, locs = _afrac(cfg)
    return {
        "vocab_size": cfg["vocab_size"],
        "n_layer": cfg["n_layer"],
        "d_model": cfg["d_model"],
        "n_head": cfg["n_head"],
        "d_head": cfg["d_head"],
        "d_mlp": cfg["d_mlp"],
        "n_ctx": cfg["block_size"],
        "bias": cfg["bias"],
        "afrac": afrac,
        "afrac_locs": list(locs),
        "sink": cfg["sink"],
        "bigram_table": cfg["enable_bigram_table"],
        "pos_emb": pos_emb,
        "d_pos_emb": d_pos_emb,
        "residual_relu": cfg["residual_activation_type"] == "relu",
        "tied_unembed": cfg["tied_unembed"],
        "final_logits_bias": logits_bias,
        "activation": cfg["activation_type"],
        "norm_eps": AUTHORS_NORM_EPS,
    }


def afrac_locations(loctypes: str) -> list[str]:
    """Their comma list of AbsTopK location names, in order, without empty entries."""
    return [s.strip() for s in loctypes.split(",") if s.strip()]


def _afrac(cfg: AuthorsConfig) -> tuple[float, tuple[str, ...]]:
    if cfg["afrac"] is None:
        return 1.0, ()
    names = afrac_locations(cfg["afrac_loctypes"])
    ours = {AFRAC_LOCATIONS[n] for n in names}
    return float(cfg["afrac"]), tuple(loc for loc in NODE_LOCATIONS if loc in ours)


def _check_types(values: dict[str, Any]) -> None:
    for key in ("block_size", "vocab_size", "n_layer", "n_head", "d_model"):
        _check_int(key, values[key])
    for key in ("d_head", "d_mlp", "d_pos_emb"):
        if values[key] is not None:
            _check_int(key, values[key])
    for key in (
        "bias",
        "ln_bias",
        "rms_norm",
        "tied_unembed",
        "enable_bigram_table",
        "learnable_bigram_table",
        "sinusoidal_cat_pos_emb",
        "sink",
    ):
        if not isinstance(values[key], bool):
            raise UserError(f"{CONFIG_FILE}: {key} must be true or false, got {values[key]!r}")
    afrac = values["afrac"]
    if afrac is not None and (isinstance(afrac, bool) or not isinstance(afrac, (int, float))):
        raise UserError(f"{CONFIG_FILE}: afrac must be a number or null, got {afrac!r}")
    if not isinstance(values["afrac_loctypes"], str):
        raise UserError(f"{CONFIG_FILE}: afrac_loctypes must be a comma-separated string")


def _check_int(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{CONFIG_FILE}: {key} must be a positive integer, got {value!r}")


def _check_representable(cfg: AuthorsConfig) -> None:
    """UserError for settings whose inference forward our model cannot reproduce."""
    if not cfg["rms_norm"]:
        raise UserError(
            f"{CONFIG_FILE}: rms_norm is false (LayerNorm, with ln_bias {cfg['ln_bias']}); "
            "only RMSNorm models can be imported"
        )
    for key, allowed in (
        ("residual_activation_type", ("identity", "relu")),
        ("activation_type", ("gelu", "relu")),
    ):
        if cfg[key] not in allowed:
            raise UserError(f"{CONFIG_FILE}: {key} must be one of {', '.join(allowed)}, got {cfg[key]!r}")
    if cfg["afrac"] is None:
        return
    if not 0.0 < cfg["afrac"] <= 1.0:
        raise UserError(f"{CONFIG_FILE}: afrac must be in (0, 1], got {cfg['afrac']}")
    names = afrac_locations(cfg["afrac_loctypes"])
    residual = [n for n in names if n in UNSUPPORTED_LOCATIONS]
    if residual:
        raise UserError(
            f"{CONFIG_FILE}: afrac_loctypes has {', '.join(residual)} (AbsTopK on the residual stream "
            "itself), which has no node location here; cannot import"
        )
    unknown = [n for n in names if n not in AFRAC_LOCATIONS]
    if unknown:
        raise UserError(
            f"{CONFIG_FILE}: afrac_loctypes has unknown location(s) {', '.join(unknown)}; "
            f"expected some of {', '.join(AFRAC_LOCATIONS)}"
        )
