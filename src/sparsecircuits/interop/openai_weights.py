"""Read the authors' `final_model.pt` safely, check it strictly against their config, map it to ours.

Our parameter names are the authors' (DESIGN.md), so the mapping is mostly a filter: the tied `lm_head`
is stored once (as `transformer.wte.weight`), an all-zero added position table and an all-zero
`final_logits_bias` are dropped (with the matching options off), and the causal-mask buffers of their
non-flash attention are checked and dropped. Every tensor becomes float32.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from sparsecircuits.errors import UserError
from sparsecircuits.interop.openai_config import CONFIG_FILE, AuthorsConfig

WEIGHTS_FILE = "final_model.pt"
SHOWN = 4  # keys named in one error message

Shapes = dict[str, tuple[int, ...]]


@dataclass
class ConvertedWeights:
    tensors: dict[str, Tensor]  # our names -> float32 tensors
    added_positions: bool  # a nonzero added position table (pos_emb "add"); irrelevant when concatenated
    logits_bias: bool  # a nonzero final_logits_bias
    notes: list[str] = field(default_factory=list)


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """`torch.load(weights_only=True)` of a flat state dict; never unpickles code. UserError when bad."""
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            raise UserError(
                f"{path} holds objects other than tensors; refusing to unpickle them (only plain state "
                "dicts can be imported)"
            ) from None
        raise UserError(f"{path} is corrupt or truncated ({_first_line(e)})") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, OSError, ... for damaged files
        raise UserError(f"{path} is corrupt or truncated ({_first_line(e)})") from None
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise UserError(f"{path} is not a state dict (a mapping of parameter names to tensors)")
    return dict(obj)


def expected_shapes(cfg: AuthorsConfig) -> tuple[Shapes, Shapes]:
    """(required, optional) keys of the authors' state dict for `cfg`, with their shapes."""
    V, D, T, H = cfg["vocab_size"], cfg["d_model"], cfg["block_size"], cfg["n_head"]
    A, M, d_in = H * cfg["d_head"], cfg["d_mlp"], cfg.d_in
    required: Shapes = {
        "transformer.wte.weight": (V, D),
        "transformer.wpe.weight": (T, cfg["d_pos_emb"] or D),  # their model always has it
        "transformer.ln_f.weight": (D,),
    }
    optional: Shapes = {"final_logits_bias": (V,)}  # their loader fills in zeros when absent
    (optional if cfg["tied_unembed"] else required)["lm_head.weight"] = (V, D)
    if cfg["enable_bigram_table"]:
        required["bigram_table"] = (V, V)
    for layer in range(cfg["n_layer"]):
        p = f"transformer.h.{layer}."
        required |= {
            p + "ln_1.weight": (D,),
            p + "ln_2.weight": (D,),
            p + "attn.c_attn.weight": (3 * A, d_in),
            p + "attn.c_proj.weight": (D, A),
            p + "mlp.c_fc.weight": (M, d_in),
            p + "mlp.c_proj.weight": (D, M),
        }
        if cfg["bias"]:
            required |= {
                p + "attn.c_attn.bias": (3 * A,),
                p + "attn.c_proj.bias": (D,),
                p + "mlp.c_fc.bias": (M,),
                p + "mlp.c_proj.bias": (D,),
            }
        if cfg.cat_pos_emb:
            required |= {p + "ln_p1.weight": (cfg["d_pos_emb"],), p + "ln_p2.weight": (cfg["d_pos_emb"],)}
        if cfg["sink"]:
            required[p + "attn.attn_imp.sink_logit"] = (H,)
        optional[p + "attn.bias"] = (1, 1, T, T)  # causal mask buffer of their non-flash attention
    return required, optional


def check_state_dict(sd: dict[str, Tensor], cfg: AuthorsConfig, path: Path) -> None:
    """Strict check: no missing or unknown keys, every shape as the config implies, float tensors."""
    required, optional = expected_shapes(cfg)
    missing = [k for k in required if k not in sd]
    unknown = [k for k in sd if k not in required and k not in optional]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {_names(missing)}")
        if unknown:
            parts.append(f"unexpected {_names(unknown)}")
        raise UserError(f"{path} does not match {CONFIG_FILE}: {'; '.join(parts)}")
    shapes = required | optional
    for key, t in sd.items():
        if tuple(t.shape) != shapes[key]:
            raise UserError(
                f"{path} does not match {CONFIG_FILE}: {key} has shape {list(t.shape)}, the config implies "
                f"{list(shapes[key])} ({_sizes(cfg)})"
            )
        if not t.is_floating_point():
            raise UserError(f"{path}: {key} has dtype {t.dtype}, expected floating point")


def convert_state_dict(sd: dict[str, Tensor], cfg: AuthorsConfig, path: Path) -> ConvertedWeights:
    """Check `sd` (see `check_state_dict`) and map it to our names, float32."""
    check_state_dict(sd, cfg, path)
    sd = {k: v.detach().to(torch.float32).contiguous() for k, v in sd.items()}
    notes: list[str] = []
    drop = {k for k in sd if k.endswith(".attn.bias") and k.startswith("transformer.h.")}
    _check_causal_masks({k: sd[k] for k in drop}, path)
    if "lm_head.weight" in sd and cfg["tied_unembed"]:
        if not torch.equal(sd["lm_head.weight"], sd["transformer.wte.weight"]):
            raise UserError(
                f"{path}: tied_unembed is true in {CONFIG_FILE} but lm_head.weight differs from "
                "transformer.wte.weight"
            )
        drop.add("lm_head.weight")
    added_positions = cfg.cat_pos_emb or bool(sd["transformer.wpe.weight"].any())
    if not added_positions:
        drop.add("transformer.wpe.weight")
        notes.append("transformer.wpe.weight is all zeros: imported without position embeddings")
    logits_bias = "final_logits_bias" in sd and bool(sd["final_logits_bias"].any())
    if not logits_bias:
        drop.add("final_logits_bias")
    tensors = {k: v for k, v in sd.items() if k not in drop}
    return ConvertedWeights(tensors, added_positions, logits_bias, notes)


def _check_causal_masks(masks: dict[str, Tensor], path: Path) -> None:
    for key, mask in masks.items():
        T = mask.shape[-1]
        if not torch.equal(mask, torch.ones(T, T).tril().view(1, 1, T, T)):
            raise UserError(f"{path}: {key} is not a causal mask (lower-triangular ones); cannot import")


def _names(keys: list[str]) -> str:
    more = f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
    return ", ".join(keys[:SHOWN]) + more


def _sizes(cfg: AuthorsConfig) -> str:
    keys = ("vocab_size", "block_size", "n_layer", "n_head", "d_head", "d_model", "d_mlp", "d_pos_emb")
    return ", ".join(f"{k}={cfg[k]}" for k in keys)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
