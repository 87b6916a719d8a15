"""The Python entry points a notebook needs (docs/api.md), re-exported lazily by the package's top level.

    import sparsecircuits as sc
    run = sc.load_run("runs/demo/sparse")
    circuit = sc.prune("runs/demo/sparse", "single_double_quote", target_loss=0.3)
    with circuit.apply(run):
        ...  # run.model now runs with everything outside the circuit ablated

Everything here is a thin layer over the modules the commands use (circuits.session, circuits.prune,
circuits.validate); nothing computes a second way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from sparsecircuits.circuits.session import task_prompts
from sparsecircuits.errors import UserError
from sparsecircuits.run import Run, load_run

__all__ = [
    "Circuit",
    "load_circuit",
    "load_run",
    "mean_activations",
    "prune",
    "run_with_cache",
    "task_prompts",
    "validate",
]


def _session(run: str | Path | Run, data: str | Path | None = None, progress: bool = False):
    from sparsecircuits.circuits.session import PruneSession

    path = run.path if isinstance(run, Run) else Path(run)
    device = next(run.model.parameters()).device if isinstance(run, Run) else "cpu"
    return PruneSession(path, str(device), progress=progress, data_dir=Path(data) if data else None)


def mean_activations(run: Run, data: str | Path | None = None, windows: int = 64) -> dict[str, torch.Tensor]:
    """Each node location's mean over pretraining tokens (cached in the run folder): location -> [width].

    data: the pretraining dataset folder (default: the one the run was trained on).
    """
    from sparsecircuits.circuits.means import cached_means
    from sparsecircuits.circuits.session import pretraining_data

    return cached_means(run.model, run.path, pretraining_data(run, data).val_bin, windows)


def run_with_cache(run: Run, tokens: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """Activations at the named hook points for tokens [B, T] (no gradients): name -> [B, T, width]."""
    with torch.no_grad():
        return {k: v.detach() for k, v in run.model.run_with_cache(tokens, names).items()}


class Circuit:
    """A circuit file's content (docs/formats.md) with the operations a notebook wants."""

    def __init__(self, data: dict[str, Any], path: Path | None = None):
        self.data, self.path = data, path

    def __repr__(self) -> str:
        c = self.data["counts"]
        return f"Circuit({self.task!r}, {c['nodes']} nodes, {c['edges']} edges)"

    @property
    def task(self) -> str:
        return self.data["task"]["name"]

    @property
    def nodes(self) -> list[str]:
        return list(self.data["nodes"])

    @property
    def edges(self) -> list[dict]:
        return list(self.data["edges"])

    def summary(self) -> str:
        """The terminal summary `prune` and `validate` print: sizes, raw and calibrated scores, verdict."""
        from sparsecircuits.circuits.commands import score_lines

        return "\n".join(score_lines(self.data))

    def gates(self, model) -> torch.Tensor:
        """0/1 per node of `model`, in its node-location order: [n_nodes]."""
        from sparsecircuits.circuits.session import circuit_gates

        return circuit_gates(self.data, model)

    @contextmanager
    def apply(self, run: Run, means: dict[str, torch.Tensor] | None = None) -> Iterator[Any]:
        """Run `run.model` inside the with-block with every node outside the circuit ablated (the circuit's
        mean, task-mean or zero ablation; means default to `mean_activations(run)`, under task-mean to the
        means over the pairs its mask trained on; the resample ablations need donors per batch and are
        refused). Yields the model."""
        from sparsecircuits.circuits.edge_masks import stored_edge_gates
        from sparsecircuits.circuits.masks import NodeMask
        from sparsecircuits.circuits.session import ablation_means, circuit_train_prompts

        model = run.model
        ablation = self.data.get("ablation", "mean")
        if means is None:
            means = ablation_means(
                model, ablation, lambda: circuit_train_prompts(run, self.data), lambda: mean_activations(run)
            )
        mask = NodeMask.for_model(model, means, ablation).to(next(model.parameters()).device)
        gates = self.gates(model).to(mask.mu.device)
        with model.hooks(mask.hooks(gates)):  # a resample ablation: UserError, needs donors
            edges = stored_edge_gates(self.data, model, mask, gates)  # closed edges, if edges were pruned
            with edges.hooks(model) if edges is not None else nullcontext():
                yield model

    def save(self, path: str | Path, force: bool = False) -> Path:
        """Write the circuit file atomically; an existing file needs force=True."""
        from sparsecircuits.circuits.circuit_file import write_circuit

        path = Path(path)
        if path.exists() and not force:
            raise UserError(f"{path} already exists (pass force=True to overwrite)")
        write_circuit(path, self.data)
        self.path = path
        return path


def load_circuit(path: str | Path) -> Circuit:
    """Read a circuit file (schema 1 files are upgraded in memory)."""
    from sparsecircuits.circuits.circuit_file import read_circuit

    return Circuit(read_circuit(path), Path(path))


def prune(
    run: str | Path | Run,
    task: str,
    target_loss: float = 0.15,
    *,
    data: str | Path | None = None,
    budget: int = 1,
    train_pairs: int = 256,
    eval_pairs: int = 64,
    validate: bool = True,
    progress: bool = True,
    **options: Any,
) -> Circuit:
    """Prune `task` in a run (a folder or a loaded Run) to `target_loss`; returns the Circuit (not written).

    options: fields of circuits.prune.PruneConfig (steps, k_coef, lr, ablation, loss_convention, tie_qk,
    cleanup, ...), as the `prune` command's options.
    """
    from sparsecircuits.circuits.prune import PruneConfig
    from sparsecircuits.circuits.session import prune_one

    known = {f.name for f in fields(PruneConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(f"unknown pruning option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    cfg = PruneConfig(target_loss=target_loss, **options).validate()
    session = _session(run, data, progress)
    return Circuit(prune_one(session, task, cfg, budget, train_pairs, eval_pairs, validate))


def validate(
    circuit: Circuit, run: str | Path | Run | None = None, n_pairs: int = 128, n_random: int = 5
) -> dict:
    """Validate `circuit` on its task's test split (docs/circuits.md) and store the result in it; returns it.

    run: the run it was pruned from (default: the path recorded in the circuit).
    """
    from sparsecircuits.circuits.session import validate_circuit

    result = validate_circuit(_session(run or circuit.data["model"]["path"]), circuit.data, n_pairs, n_random)
    circuit.data["validation"] = result
    return result
