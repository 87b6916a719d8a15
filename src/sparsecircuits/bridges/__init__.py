"""Bridges: tie a weight-sparse model to an existing dense model, and steer the dense one through them.

modules.py  Bridges (encoder/decoder per sublayer site), BridgedModel, bridge_sites
losses.py   the joint loss: LM + NMSE both ways + KL d->s + KL s->d, hybrid passes through hooks
train.py    joint training (`bridges train`), reusing the trainer's optimizer, schedules, sparsifier
files.py    bridges.json / bridges.safetensors in a run directory, load_bridged
steer.py    interventions from a sparse residual-read node into the dense model (`bridges steer`)
See docs/bridges.md.
"""

from sparsecircuits.bridges.config import BridgeConfig
from sparsecircuits.bridges.losses import bridge_losses, hybrid_logits, kl_per_token, nmse, read_sites
from sparsecircuits.bridges.modules import BridgedModel, Bridges, bridge_sites

__all__ = [
    "BridgeConfig",
    "BridgedModel",
    "Bridges",
    "bridge_losses",
    "bridge_sites",
    "hybrid_logits",
    "kl_per_token",
    "nmse",
    "read_sites",
]
