"""Device selection, autocast and the torchrun / DDP environment.

Under `torchrun` (RANK and WORLD_SIZE in the environment) every process trains a replica with DDP: gloo on
the CPU, NCCL on CUDA. Without torchrun, world_size is 1 and nothing here touches torch.distributed.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sparsecircuits.errors import UserError


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_env() -> DistEnv:
    """Read the torchrun environment (or a single process when absent)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistEnv()
    return DistEnv(
        int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    )


def resolve_device(name: str | torch.device, env: DistEnv | None = None) -> torch.device:
    """The one device resolver of every command: "auto" -> CUDA when available, else CPU; "cpu", "cuda" or
    "cuda:N" (checked against the GPUs present). Under DDP on CUDA each process takes cuda:LOCAL_RANK."""
    env = env or DistEnv()
    name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" or re.fullmatch(r"cuda:\d+", name):
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} requested but CUDA is not available")
        if name == "cuda":
            name = f"cuda:{env.local_rank}"
        index, count = int(name.split(":")[1]), torch.cuda.device_count()
        if index >= count:
            raise UserError(f"device {name!r} requested but only {count} CUDA device(s) are present")
        torch.cuda.set_device(torch.device(name))
    elif name != "cpu":
        raise UserError(f"unknown device {name!r}; expected auto, cpu, cuda or cuda:N")
    return torch.device(name)


def init_distributed(env: DistEnv, device: torch.device) -> None:
    if env.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.barrier()


def autocast(device: torch.device, dtype: str = "auto") -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (matmuls in bf16, master weights and optimizer state stay fp32); plain fp32 on
    the CPU unless dtype="bfloat16" asks for CPU autocast too."""
    use_bf16 = dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
