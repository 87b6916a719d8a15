"""Training-step cost of a dense model vs the weight- and activation-sparse model of the same shape.

One step is split into its parts, each timed on its own (synchronising the GPU around each):
  fwd+bwd      forward and backward with AbsTopK off (plain dense compute; sparse weights are still
               stored and multiplied densely)
  act top-k    the extra time of forward+backward with AbsTopK on (measured as on minus off)
  optimizer    gradient-RMS clipping + AdamW step
  weight top-k projection of every sparsified tensor onto the target L0 (sparse model only)

Every part of every row is timed round-robin (one call of each per repetition), so a change in the machine's
load during the run hits all rows alike. Medians are reported; on a machine shared with other work, `--stat
min` (the least-disturbed repetition of each part) is the steadier estimate of the unloaded cost, and
OMP_WAIT_POLICY=PASSIVE avoids OpenMP's spinning workers, which made a loaded 2-core machine 8x slower.
Prints a table and writes JSON (default benchmarks/results/train_step.json).

    python benchmarks/train_step.py                 # the demo preset's shape, about a minute on a CPU
    python benchmarks/train_step.py --reference     # adds a row with the torch.topk AbsTopK and weight top-k
    python benchmarks/train_step.py --gpu-shape     # d_model 1024, 2 layers, batch 32 x 512, bf16
    python benchmarks/train_step.py --sink          # sparse model with attention sinks: fused vs reference
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from sparsecircuits.model import sink_attention
from sparsecircuits.model.config import ModelConfig
from sparsecircuits.model.gpt import GPT
from sparsecircuits.train import sparsity
from sparsecircuits.train.config import TrainConfig
from sparsecircuits.train.distributed import autocast, resolve_device
from sparsecircuits.train.sparsity import WeightSparsifier
from sparsecircuits.train.trainer import build_optimizer, clip_grad_rms_


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--d-head", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-ctx", type=int, default=128)
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument(
        "--l0", type=float, default=0.25, help="kept weight fraction of the sparse model (demo: 0.25)"
    )
    p.add_argument(
        "--afrac", type=float, default=0.5, help="AbsTopK kept fraction of the sparse model (demo: 0.5)"
    )
    p.add_argument("--iters", type=int, default=20, help="timed repetitions of each part")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--stat", default="median", choices=("median", "min"), help="summary of the repetitions")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    p.add_argument("--gpu-shape", action="store_true", help="d_model 1024, 2 layers, batch 32 x 512, bf16")
    p.add_argument(
        "--reference",
        action="store_true",
        help="add a sparse row with the torch.topk reference AbsTopK and weight top-k (CPU fast paths off)",
    )
    p.add_argument(
        "--sink",
        action="store_true",
        help="give the sparse model attention sinks; adds a row with the reference (explicit-probability) sink",
    )
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_step.json")
    args = p.parse_args()
    if args.gpu_shape:
        args.d_model, args.n_layer, args.batch_size, args.n_ctx, args.dtype = 1024, 2, 32, 512, "bfloat16"
    return args


def model_config(args: argparse.Namespace, afrac: float, sink: bool = False) -> ModelConfig:
    d = args.d_model
    return ModelConfig(
        vocab_size=args.vocab_size,
        n_layer=args.n_layer,
        d_model=d,
        n_head=d // args.d_head,
        d_head=args.d_head,
        d_mlp=4 * d,
        n_ctx=args.n_ctx,
        afrac=afrac,
        sink=sink,
    )


Flags = dict[tuple[object, str], object]


@contextlib.contextmanager
def patched(flags: Flags) -> Iterator[None]:
    """Set module attributes (e.g. a fast path's on/off switch) for the duration of the block."""
    saved = {key: getattr(*key) for key in flags}
    for (module, attr), value in flags.items():
        setattr(module, attr, value)
    try:
        yield
    finally:
        for (module, attr), value in saved.items():
            setattr(module, attr, value)


def time_round_robin(
    fns: dict[str, Callable[[], None]], device: torch.device, iters: int, warmup: int, stat: str = "median"
) -> dict[str, float]:
    """Median (or min) wall time of each fn() in seconds. Each repetition calls every fn once, in order, with
    the device synchronised around each call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for rep in range(warmup + iters):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if rep >= warmup:
                times[name].append(time.perf_counter() - t0)
    summary = statistics.median if stat == "median" else min
    return {name: summary(t) for name, t in times.items()}


def model_parts(
    args: argparse.Namespace, device: torch.device, sparse: bool, sink: bool, flags: Flags
) -> tuple[dict[str, Callable[[], None]], int]:
    """The timed parts of one row's training step (run in this order), and the model's parameter count.

    "plain" is forward+backward with AbsTopK off, "with_topk" with it on (it also leaves the gradients that
    "optimizer" steps on); "weight_topk" only for a sparse model. Each part runs under `flags`."""
    torch.manual_seed(0)
    afrac = args.afrac if sparse else 1.0
    model = GPT(model_config(args, afrac, sink)).to(device)
    plain = GPT(model_config(args, 1.0, sink)).to(device)  # same weights, AbsTopK off
    plain.load_state_dict(model.state_dict())
    cfg = TrainConfig(eps=0.1, lr=1e-3)
    opt, _ = build_optimizer(model, cfg, device)
    sparsifier = WeightSparsifier(model)
    if sparse:
        sparsifier.apply(args.l0)
    x = torch.randint(0, args.vocab_size, (args.batch_size, args.n_ctx + 1), device=device)

    def fwd_bwd(net: GPT) -> Callable[[], None]:
        def run() -> None:
            with autocast(device, args.dtype):
                logits = net(x[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
            net.zero_grad(set_to_none=True)
            loss.backward()

        return run

    def optimizer() -> None:
        clip_grad_rms_(list(model.parameters()), 1.0)
        opt.step()

    parts = {"plain": fwd_bwd(plain), "with_topk": fwd_bwd(model), "optimizer": optimizer}
    if sparse:
        parts["weight_topk"] = lambda: sparsifier.apply(args.l0)

    def under_flags(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            with patched(flags):
                fn()

        return run

    return {name: under_flags(fn) for name, fn in parts.items()}, model.num_params()


def row_result(t: dict[str, float], sparse: bool, tokens: int, params: int) -> dict[str, float]:
    """Median part times of one row -> the table's columns (seconds), tokens/s and parameter count."""
    parts = {"fwd_bwd": t["plain"]}
    parts["act_topk"] = max(0.0, t["with_topk"] - t["plain"]) if sparse else 0.0
    parts["optimizer"] = t["optimizer"]
    parts["weight_topk"] = t.get("weight_topk", 0.0)
    parts["step"] = sum(parts.values())
    parts["tokens_per_s"] = tokens / parts["step"]
    parts["params"] = params
    return parts


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    abstopk_module = sys.modules["sparsecircuits.model.abstopk"]
    reference_topk: Flags = {
        (abstopk_module, "USE_THRESHOLD_ON_CPU"): False,
        (sparsity, "USE_THRESHOLD_ON_CPU"): False,
    }
    specs = {"dense": (False, False, {}), "sparse": (True, args.sink, {})}
    if args.reference:
        specs["sparse-ref-topk"] = (True, args.sink, reference_topk)
    if args.sink:
        specs["sparse-ref-sink"] = (True, True, {(sink_attention, "USE_FUSED_SINK"): False})
    fns: dict[str, Callable[[], None]] = {}
    params: dict[str, int] = {}
    for row, (sparse, sink, flags) in specs.items():
        parts, params[row] = model_parts(args, device, sparse, sink, flags)
        fns.update({f"{row}/{part}": fn for part, fn in parts.items()})
    times = time_round_robin(fns, device, args.iters, args.warmup, args.stat)
    tokens = args.batch_size * args.n_ctx
    rows = {
        row: row_result(
            {key.split("/")[1]: t for key, t in times.items() if key.split("/")[0] == row},
            sparse,
            tokens,
            params[row],
        )
        for row, (sparse, _, _) in specs.items()
    }
    shape = (
        f"d_model {args.d_model}, {args.n_layer} layers, batch {args.batch_size} x {args.n_ctx}, "
        f"vocab {args.vocab_size}, {args.dtype}"
    )
    print(f"train step on {device} ({torch.get_num_threads()} CPU threads): {shape}")
    sinks = " + attention sinks" if args.sink else ""
    print(
        f"sparse = weights L0 {args.l0:g} + AbsTopK afrac {args.afrac:g}{sinks}; "
        f"times in ms ({args.stat} of {args.iters})"
    )
    header = f"{'model':<16}{'fwd+bwd':>10}{'act top-k':>11}{'weight top-k':>14}{'optimizer':>11}{'step':>10}{'tokens/s':>11}"
    print(header)
    print("-" * len(header))
    for name, r in rows.items():
        print(
            f"{name:<16}{r['fwd_bwd'] * 1e3:>10.1f}{r['act_topk'] * 1e3:>11.1f}{r['weight_topk'] * 1e3:>14.1f}"
            f"{r['optimizer'] * 1e3:>11.1f}{r['step'] * 1e3:>10.1f}{r['tokens_per_s']:>11.0f}"
        )
    print(f"sparse / dense step time: {rows['sparse']['step'] / rows['dense']['step']:.2f}x")
    if args.reference:
        ref = rows["sparse-ref-topk"]["step"] / rows["dense"]["step"]
        print(f"sparse with the reference top-k / dense step time: {ref:.2f}x")
    if args.sink:
        ref = rows["sparse-ref-sink"]["step"] / rows["sparse"]["step"]
        print(f"reference sink / fused sink step time: {ref:.2f}x")
    result = {
        "benchmark": "train_step",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seconds": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
