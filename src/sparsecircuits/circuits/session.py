"""A loaded run with its mean activations, and pruning one task end to end (search, validation, file)."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from sparsecircuits.errors import UserError


def pick_device(name: str) -> torch.device:
    """auto, cpu, cuda or cuda:N resolved by the one device resolver, train.distributed.resolve_device."""
    from sparsecircuits.train.distributed import resolve_device

    return resolve_device(name)


class PruneSession:
    """A loaded run with its mean activations: everything needed to prune or validate its tasks."""

    def __init__(
        self,
        model_dir: Path,
        device: str,
        mean_windows: int = 64,
        progress: bool = True,
        data_dir: Path | None = None,
    ):
        from sparsecircuits.circuits.means import cached_means, model_content_hash
        from sparsecircuits.data.dataset import load_dataset
        from sparsecircuits.run import load_run

        self.run = load_run(model_dir, device)
        self.model = self.run.model
        self.progress = progress
        data_dir = data_dir or (self.run.config.get("data") or {}).get("dir")
        if not data_dir:
            raise UserError(
                f"{model_dir}/config.json names no data directory: mean ablation needs pretraining data "
                "(pass --data DIR, built with this model's tokenizer)"
            )
        self.dataset = load_dataset(data_dir)
        if progress:
            click.echo(f"mean activations over {mean_windows} validation windows of {data_dir} ...", err=True)
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
        """Tokenised prompts of a task split as a PromptSet on the model's device."""
        from sparsecircuits.circuits.scoring import from_task_batch
        from sparsecircuits.tasks import get_task
        from sparsecircuits.tasks.evaluate import encode_task

        task = get_task(task_name)
        batch = encode_task(
            task, self.run.tokenizer, n_pairs, split=split, seed=seed, n_ctx=self.model.cfg.n_ctx
        )
        return from_task_batch(batch).to(next(self.model.parameters()).device)


def prune_one(
    session: PruneSession,
    task: str,
    cfg,
    budget: int,
    train_pairs: int,
    eval_pairs: int,
    do_validate: bool,
    sweep_targets: tuple[float, ...] = (),
) -> dict:
    """Prune one task (with the search) and return the circuit dict.

    sweep_targets: also bisect the trained mask to each of these target losses and record the smallest
    circuit (nodes, edges, loss) for each under "sweep" (task loss against circuit size, the paper's Fig 2;
    the mask is trained once at cfg.target_loss and reused, which is cheaper than pruning per target).
    """
    from sparsecircuits.circuits.circuit import make_circuit
    from sparsecircuits.circuits.prune import Evaluator
    from sparsecircuits.circuits.search import search
    from sparsecircuits.circuits.validate import validate

    train = session.prompts(task, train_pairs, "train", cfg.seed)
    evaluation = session.prompts(task, eval_pairs, "val", cfg.seed)
    result, rows = search(
        session.model,
        session.means,
        train,
        evaluation,
        cfg,
        budget,
        session.progress,
        log=lambda s: click.echo(s, err=True),
    )
    evaluate = Evaluator(session.model, result.mask, evaluation, cfg.calibrate, cfg.seed)
    validation = None
    if do_validate:
        test = session.prompts(task, eval_pairs, "test", cfg.seed)
        validation = validate(session.model, session.means, result.gates, test, cfg.calibrate, seed=cfg.seed)
        validation["split"] = "test"
    task_info = {
        "name": task,
        "split": "train",
        "n_pairs": train_pairs,
        "eval_split": "val",
        "eval_pairs": eval_pairs,
    }
    circuit = make_circuit(session.model, session.model_info, task_info, result, evaluate, validation, rows)
    if sweep_targets:
        circuit["sweep"] = target_sweep(session.model, result, evaluate, sweep_targets)
    return circuit


def target_sweep(model, result, evaluate, targets: tuple[float, ...]) -> list[dict]:
    """Smallest top-k circuit of the trained mask for each target loss: [{target, nodes, edges, loss}]."""
    from sparsecircuits.circuits.edges import count_edges
    from sparsecircuits.circuits.prune import bisect_nodes

    params = model.state_dict()
    rows = []
    for target in sorted(targets, reverse=True):
        if target < result.full_score.loss:
            rows.append({"target": target, "reached": False, "full_model_loss": result.full_score.loss})
            continue
        k, best, _ = bisect_nodes(evaluate, result.mask, target)
        nodes = {loc: g.bool() for loc, g in result.mask.split(result.mask.top_k_gates(k)).items()}
        rows.append(
            {
                "target": target,
                "reached": True,
                "nodes": k,
                "edges": count_edges(params, model.cfg, nodes),
                "loss": best.loss,
            }
        )
    return rows
