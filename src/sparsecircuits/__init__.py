"""sparsecircuits: train weight-sparse transformers on Python code and extract their circuits.

The names a notebook needs are importable from here (docs/api.md); they load on first use, so the command
line stays quick to start.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module it lives in
_API = {
    "load_run": "sparsecircuits.api",
    "load_circuit": "sparsecircuits.api",
    "prune": "sparsecircuits.api",
    "validate": "sparsecircuits.api",
    "task_prompts": "sparsecircuits.api",
    "run_with_cache": "sparsecircuits.api",
    "mean_activations": "sparsecircuits.api",
    "Circuit": "sparsecircuits.api",
    "get_task": "sparsecircuits.tasks",
    "all_tasks": "sparsecircuits.tasks",
    "evaluate_task": "sparsecircuits.tasks.evaluate",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'sparsecircuits' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
