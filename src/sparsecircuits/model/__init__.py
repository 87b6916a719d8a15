"""The sparse GPT: config, the one forward pass with hook points, and AbsTopK."""

from sparsecircuits.model.abstopk import abstopk, abstopk_reference
from sparsecircuits.model.config import ModelConfig
from sparsecircuits.model.gpt import GPT, attention_probs
from sparsecircuits.model.locations import LAYER_HOOKS, NODE_LOCATIONS

__all__ = [
    "GPT",
    "LAYER_HOOKS",
    "NODE_LOCATIONS",
    "ModelConfig",
    "abstopk",
    "abstopk_reference",
    "attention_probs",
]
