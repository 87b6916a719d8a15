"""A loaded run with its mean activations, and pruning one task end to end (search, validation, file)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click
import torch

from sparsecircuits.circuits.parallel import default_workers
from sparsecircuits.errors import UserError

if TYPE_CHECKING:
    from sparsecircuits.circuits.scoring import PromptSet


def pick_device(name: str) -> torch.device:
    """auto, cpu, cuda or cuda:N resolved by the one device resolver, train.distributed.resolve_device."""
    from sparsecircuits.train.distributed import resolve_device

    return resolve_device(name)


def pretraining_data(run, data_dir: str | Path | None = None):
    """The pretraining dataset of `run` (default: the one it was trained on), checked to be built with the
    run's tokenizer: a data.dataset.DatasetDir."""
    from sparsecircuits.data.dataset import load_dataset

    data_dir = data_dir or (run.config.get("data") or {}).get("dir")
    if not data_dir:
        raise UserError(
            f"{run.path}/config.json names no data directory: mean ablation needs pretraining data "
            "(pass --data DIR, built with this model's tokenizer)"
        )
    dataset = load_dataset(data_dir)
    dataset.check_built_with(run.path / "tokenizer.json", run.tokenizer, f"run {run.path}")
    return dataset


def task_prompts(run, task_name: str, n_pairs: int, split: str = "val", seed: int = 0):
    """A task's pairs tokenised for `run`: a scoring.PromptSet (tokens [2 n_pairs, T], last, correct, wrong,
    sign; rows 2i and 2i + 1 are pair i) on the model's device."""
    from sparsecircuits.circuits.scoring import from_task_batch
    from sparsecircuits.tasks.evaluate import encode_task

    batch = encode_task(task_name, run.tokenizer, n_pairs, split=split, seed=seed, n_ctx=run.model.cfg.n_ctx)
    return from_task_batch(batch).to(next(run.model.parameters()).device)


class PruneSession:
    """A loaded run with its mean activations: everything needed to prune or validate its tasks."""

    def __init__(
        self,
        model_dir: Path,
        device: str,
        mean_windows: int = 64,
        progress: bool = True,
        data_dir: Path | None = None,
        workers: int | None = None,
    ):
        from sparsecircuits.circuits.means import cached_means, model_content_hash
        from sparsecircuits.run import load_run

        self.run = load_run(model_dir, device)
        self.model = self.run.model
        self.progress = progress
        # threads scoring candidate circuits side by side (circuits/parallel.py); results do not depend on it
        self.workers = default_workers(device) if workers is None else max(1, workers)
        self.dataset = pretraining_data(self.run, data_dir)
        self.pretraining = str(self.dataset.val_bin)  # donors of the resample ablation
        if progress:
            click.echo(
                f"mean activations over {mean_windows} validation windows of {self.dataset.path} ...",
                err=True,
            )
        self.means = {
            k: v.to(device)
            for k, v in cached_means(self.model, self.run.path, self.dataset.val_bin, mean_windows).items()
        }
        self.model_info = {
            "path": str(self.run.path),
            "content_hash": model_content_hash(self.model),
            "config": self.run.config.get("model", {}),
        }

    def prompts(self, task_name: str, n_pairs: int, split: str, seed: int):
        """Tokenised prompts of a task split as a PromptSet on the model's device (task_prompts)."""
        return task_prompts(self.run, task_name, n_pairs, split, seed)

    def natural_prompts(self, task_name: str, records: list[dict]):
        """Prompts mined from real code (tasks.mine records of one task) as a PromptSet on the model's device.

        A is, per prompt, whichever of its two answers comes first among the task's candidates, so the
        calibration's bias still favours an answer, never the label.
        """
        from sparsecircuits.circuits.scoring import from_task_batch
        from sparsecircuits.tasks import get_task
        from sparsecircuits.tasks.mine import encode_mined

        task = get_task(task_name)
        batch = encode_mined(task.name, records, self.run.tokenizer, self.model.cfg.n_ctx)
        order = {c: i for i, c in enumerate(task.candidates)}
        a_is_correct = torch.tensor(
            [order.get(r["correct"], len(order)) <= order.get(r["wrong"], len(order)) for r in records]
        )
        a_ids = torch.where(a_is_correct, batch.correct, batch.wrong)
        return from_task_batch(batch, a_ids).to(next(self.model.parameters()).device)


def prune_one(
    session: PruneSession,
    task: str,
    cfg,
    budget: int,
    train_pairs: int,
    eval_pairs: int,
    do_validate: bool,
    sweep_targets: tuple[float, ...] = (),
    natural: list[dict] | None = None,
) -> dict:
    """Prune one task (with the search) and return the circuit dict.

    sweep_targets: also bisect the trained mask to each of these target losses and record the smallest
    circuit (nodes, edges, loss) for each under "sweep" (task loss against circuit size, the paper's Fig 2;
    the mask is trained once at cfg.target_loss and reused, which is cheaper than pruning per target).
    natural: records mined from real code for this task (tasks.mine); scored under validation["natural"].
    """
    from sparsecircuits.circuits.circuit import make_circuit
    from sparsecircuits.circuits.search import search

    # the held-out pairs are the training split's next ones after those the mask trains on (Task.pairs draws
    # the same sequence for any count), so they are distinct from them and from the validation pairs
    drawn = session.prompts(task, train_pairs + cfg.holdout_pairs, "train", cfg.seed)
    train = drawn.subset(torch.arange(2 * train_pairs))
    held_out = drawn.subset(torch.arange(2 * train_pairs, len(drawn))) if cfg.holdout_pairs else None
    evaluation = session.prompts(task, eval_pairs, "val", cfg.seed)
    result, rows = search(
        session.model,
        ablation_means(session.model, cfg.ablation, lambda: train, lambda: session.means),
        train,
        evaluation,
        cfg,
        budget,
        session.progress,
        log=lambda s: click.echo(s, err=True),
        pretraining=session.pretraining,
        workers=session.workers,
        held_out=held_out,
    )
    task_info = {
        "name": task,
        "split": "train",
        "n_pairs": train_pairs,
        "eval_split": "val",
        "eval_pairs": eval_pairs,
        "held_out_pairs": cfg.holdout_pairs,  # training-split pairs after the first n_pairs
    }
    circuit = make_circuit(session.model, session.model_info, task_info, result, rows)
    if (
        do_validate
    ):  # on the test split, with the calibration fitted on `evaluation` and stored in the circuit
        circuit["validation"] = validate_circuit(session, circuit, eval_pairs, natural=natural)
    if sweep_targets:
        circuit["sweep"] = target_sweep(session.model, result, sweep_targets)
    return circuit


def target_sweep(model, result, targets: tuple[float, ...]) -> list[dict]:
    """Smallest top-k circuit of the trained mask for each target loss: [{target, nodes, edges, loss}]."""
    from sparsecircuits.circuits.edges import count_edges
    from sparsecircuits.circuits.prune import bisect_nodes

    params = model.state_dict()
    rows = []
    for target in sorted(targets, reverse=True):
        if target < result.full_score.loss:
            rows.append({"target": target, "reached": False, "full_model_loss": result.full_score.loss})
            continue
        k, best, _ = bisect_nodes(result.evaluate, result.mask, target)
        nodes = {loc: g.bool() for loc, g in result.mask.split(result.mask.top_k_gates(k)).items()}
        rows.append(
            {
                "target": target,
                "reached": True,
                "nodes": k,
                "edges": count_edges(params, model.cfg, nodes),
                "loss": best.loss,
                "loss_raw": best.loss_raw,
            }
        )
    return rows


def ablation_means(
    model, ablation: str, train: Callable[[], PromptSet], pretraining: Callable[[], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor] | None:
    """The fixed values of `ablation` (ablations.ABLATIONS), loc -> [width]: under "task-mean" the means over
    train(), the pairs the mask trains on; under "mean" pretraining(); None where no mean is used. The one
    place an ablation's means are chosen (pruning, validation, Circuit.apply)."""
    from sparsecircuits.circuits.ablations import get_ablation
    from sparsecircuits.circuits.means import task_means

    kind = get_ablation(ablation).means
    if kind == "task":
        return task_means(model, train())
    return pretraining() if kind else None


def circuit_train_prompts(run, circuit: dict):
    """The pairs a circuit's mask trained on (the first `task.n_pairs` of its task's training split, with its
    seed) as a PromptSet: what the "task-mean" ablation averages over."""
    hyper = (circuit.get("pruning") or {}).get("hyperparameters") or {}
    task = circuit["task"]
    return task_prompts(run, task["name"], int(task.get("n_pairs", 256)), "train", int(hyper.get("seed", 0)))


def circuit_gates(circuit: dict, model) -> torch.Tensor:
    """0/1 per node of `model` for a circuit dict's node names, in node-location order: [n_nodes]."""
    from sparsecircuits.circuits.nodes import names_to_nodes

    nodes = names_to_nodes(circuit["nodes"], model.cfg)
    return torch.cat([nodes[loc].float() for loc in model.node_locations()])


def circuit_edge_gates(circuit: dict, model, means, gates: torch.Tensor):
    """The circuit's closed edges as fixed edge gates on `model` (edge_masks.EdgeGates), or None when the
    file keeps every edge of its nodes. gates: [n_nodes] from circuit_gates."""
    from sparsecircuits.circuits.edge_masks import stored_edge_gates
    from sparsecircuits.circuits.masks import NodeMask

    node_mask = NodeMask.for_model(model, means, circuit.get("ablation", "mean")).to(gates.device)
    return stored_edge_gates(circuit, model, node_mask, gates)


def validate_circuit(
    session: PruneSession,
    circuit: dict,
    n_pairs: int = 128,
    n_random: int = 5,
    natural: list[dict] | None = None,
) -> dict:
    """Validate a circuit dict on its task's test split with its recorded convention, ablation, seed and
    frozen calibration; natural: mined records of its task, scored under "natural". Returns the result."""
    from sparsecircuits.circuits.scoring import Calibration
    from sparsecircuits.circuits.validate import score_natural, validate

    gates = circuit_gates(circuit, session.model)
    means = ablation_means(
        session.model,
        circuit.get("ablation", "mean"),
        lambda: circuit_train_prompts(session.run, circuit),
        lambda: session.means,
    )
    edges = circuit_edge_gates(circuit, session.model, means, gates)
    task = circuit["task"]["name"]
    hyper = (circuit.get("pruning") or {}).get("hyperparameters") or {}
    seed = int(hyper.get("seed", 0))
    convention = circuit.get("loss_convention", "mean")
    ablation = circuit.get("ablation", "mean")
    calibration = Calibration.from_json(circuit["achieved"].get("calibration"))
    result = validate(
        session.model,
        means,
        gates,
        session.prompts(task, n_pairs, "test", seed),
        session.prompts(task, int(circuit["task"].get("eval_pairs", 64)), "val", seed),
        float(circuit["target_loss"]),
        calibration,
        bool(hyper.get("calibrate", True)),
        convention,
        ablation,
        session.pretraining,
        n_random,
        seed,
        edges,
    )
    if natural:
        natural_prompts = session.natural_prompts(task, natural)
        result["natural"] = score_natural(
            session.model,
            means,
            gates,
            natural_prompts,
            calibration,
            convention,
            ablation,
            session.pretraining,
            seed,
            edges,
        )
    return result
