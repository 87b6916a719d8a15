"""Store a trained sparse/dense pair in artifacts/demo, compacted, and write SHA256SUMS (artifacts/demo/README.md).

python scripts/pack_demo_models.py runs/art/sparse runs/art/dense --data runs/art/data

With --data, also prints each model's validation loss before and after packing (the bigram table is stored in
8 bits; everything else exactly).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from sparsecircuits.experiments.shipped import KINDS, SHIPPED_DIR, install, pack, verify
from sparsecircuits.run import load_run
from sparsecircuits.train.evaluate import validation_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sparse", type=Path)
    p.add_argument("dense", type=Path)
    p.add_argument("--out", type=Path, default=SHIPPED_DIR)
    p.add_argument("--data", type=Path, help="corpus to measure validation loss on, before and after packing")
    args = p.parse_args()
    runs = {"sparse": args.sparse, "dense": args.dense}
    pack(runs, args.out)
    verify(args.out)
    print((args.out / "SHA256SUMS").read_text(), end="")
    for path in sorted(args.out.rglob("*")):
        if path.is_file():
            print(f"{path.stat().st_size / 1e6:8.2f} MB  {path.relative_to(args.out)}")
    if args.data is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        for kind in KINDS:
            before = validation_loss(load_run(runs[kind]).model, args.data, n_batches=40, batch_size=16)
            packed = install(args.out, kind, Path(tmp) / kind, args.data)
            after = validation_loss(load_run(packed).model, args.data, n_batches=40, batch_size=16)
            print(f"{kind}: val loss {before:.5f} trained, {after:.5f} packed ({after - before:+.5f})")


if __name__ == "__main__":
    main()
