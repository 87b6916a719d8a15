"""Mean activation of every node over the pretraining distribution (or a task's prompts), with the exact forward
that is pruned."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from sparsecircuits.data.shards import iter_eval_batches
from sparsecircuits.io import atomic_write, user_cache_dir
from sparsecircuits.model import GPT

if TYPE_CHECKING:
    from sparsecircuits.circuits.scoring import PromptSet

TASK_MEAN_CHUNK = 64  # prompts per forward; each chunk is padded to its own longest, whatever the set's


def model_content_hash(model: GPT) -> str:
    """A short hash of every parameter and buffer (names, shapes, bytes): the cache key of derived data."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def mean_activations(
    model: GPT, bin_path: str | Path, n_windows: int = 64, batch_size: int = 8, n_ctx: int | None = None
) -> dict[str, Tensor]:
    """Mean over all tokens of `n_windows` held-out windows at every node location. Returns loc -> [width].

    Read with `GPT.run_with_cache` on the unchanged forward, so AbsTopK is applied exactly as when pruning.
    Each batch's activations at every location are held at once: [batch_size, n_ctx, width] per location.
    """
    n_ctx = n_ctx or model.cfg.n_ctx
    device = next(model.parameters()).device
    locations = model.node_locations()
    sums = {
        loc: torch.zeros(model.location_width(loc), dtype=torch.float64, device=device) for loc in locations
    }
    count = 0
    for batch in iter_eval_batches(bin_path, n_ctx, batch_size, max(1, n_windows // batch_size)):
        idx = batch[:, :-1].to(device)
        acts = model.run_with_cache(idx, locations, stop_at=locations[-1])
        for loc, x in acts.items():
            sums[loc] += x.detach().double().sum(dim=(0, 1))
        count += idx.numel()
    return {loc: (s / max(count, 1)).float() for loc, s in sums.items()}


@torch.no_grad()
def task_means(model: GPT, prompts: PromptSet) -> dict[str, Tensor]:
    """Mean over every token of task prompts, padding excluded (positions up to each prompt's `last`), at every
    node location: the values of the "task-mean" ablation. Returns loc -> [width].

    Both prompts of every pair count alike, so the mean carries no label. Chunks of TASK_MEAN_CHUNK prompts
    are each padded to their own longest, so the result does not depend on the padding of `prompts`.
    """
    locations = model.node_locations()
    device = prompts.tokens.device
    sums = {
        loc: torch.zeros(model.location_width(loc), dtype=torch.float64, device=device) for loc in locations
    }
    count = 0
    for start in range(0, len(prompts), TASK_MEAN_CHUNK):
        chunk = prompts.subset(torch.arange(start, min(start + TASK_MEAN_CHUNK, len(prompts)), device=device))
        real = torch.arange(chunk.tokens.shape[1], device=device)[None, :] <= chunk.last[:, None]  # [B, T]
        acts = model.run_with_cache(chunk.tokens, locations, stop_at=locations[-1])
        for loc, x in acts.items():
            sums[loc] += (x.double() * real[..., None]).sum(dim=(0, 1))
        count += int(real.sum())
    return {loc: (s / max(count, 1)).float() for loc, s in sums.items()}


def cached_means(
    model: GPT, run_dir: str | Path, bin_path: str | Path, n_windows: int = 64
) -> dict[str, Tensor]:
    """`mean_activations`, cached in RUN/cache/ under the model's content hash and the window count; where
    the run folder is read-only, in the user cache folder (io.user_cache_dir), else only in memory."""
    name = f"means-{model_content_hash(model)}-{n_windows}.safetensors"
    paths = [Path(run_dir) / "cache" / name, user_cache_dir() / "means" / name]
    for path in paths:
        if path.is_file():
            return load_file(str(path))
    means = mean_activations(model, bin_path, n_windows)
    tensors = {k: v.cpu().contiguous() for k, v in means.items()}
    for path in paths:
        try:
            atomic_write(path, lambda p: save_file(tensors, str(p)))
            break
        except OSError:
            continue
    return means
