"""A loaded run with its mean activations, and pruning one task end to end (search, validation, file)."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from sparsecircuits.errors import UserError


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available")
    return name


class PruneSession:
    """A loaded run with its mean activations: everything needed to prune or validate its tasks."""

    def __init__(self, model_dir: Path, device: str, mean_windows: int = 64, progress: bool = True):
        from sparsecircuits.circuits.means import cached_means, model_content_hash
        from sparsecircuits.data.dataset import load_dataset
        from sparsecircuits.run import load_run

        self.run = load_run(model_dir, device)
        self.model = self.run.model
        self.progress = progress
        data_dir = self.run.config.get("data", {}).get("dir")
        if not data_dir:
            raise UserError(f"{model_dir}/config.json names no data directory: mean ablation needs it")
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
    session: PruneSession, task: str, cfg, budget: int, train_pairs: int, eval_pairs: int, do_validate: bool
) -> dict:
    """Prune one task (with the search) and return the circuit dict."""
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
    return make_circuit(session.model, session.model_info, task_info, result, evaluate, validation, rows)
