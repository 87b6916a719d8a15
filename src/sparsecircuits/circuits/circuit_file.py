"""The versioned `*.circuit.json` file: what was pruned, the nodes and edges, and how well it holds up.

Schema `sparsecircuits.circuit/1` (see docs/formats.md for every field). Node names are flat
`HOOK.INDEX` strings (`3.attn.v.17`, `0.mlp.post_act.460`) as in DESIGN.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparsecircuits.errors import UserError
from sparsecircuits.io import atomic_write_json, read_json

SCHEMA = "sparsecircuits.circuit/1"
REQUIRED_KEYS = ("schema", "model", "task", "ablation", "target_loss", "achieved", "nodes", "edges", "counts")


def write_circuit(path: str | Path, circuit: dict[str, Any]) -> None:
    """Atomically write a circuit dict (schema key added)."""
    circuit = {"schema": SCHEMA, **{k: v for k, v in circuit.items() if k != "schema"}}
    check_circuit(circuit, str(path))
    atomic_write_json(path, circuit)


def read_circuit(path: str | Path) -> dict[str, Any]:
    """Read and check a circuit file; a wrong or unknown schema is a UserError."""
    circuit = read_json(path, "circuit file")
    check_circuit(circuit, str(path))
    return circuit


def check_circuit(circuit: Any, where: str = "circuit") -> None:
    if not isinstance(circuit, dict) or circuit.get("schema") != SCHEMA:
        found = circuit.get("schema") if isinstance(circuit, dict) else type(circuit).__name__
        raise UserError(f"{where}: not a circuit file of schema {SCHEMA} (found {found!r})")
    missing = [k for k in REQUIRED_KEYS if k not in circuit]
    if missing:
        raise UserError(f"{where}: circuit file lacks {', '.join(missing)}")
