"""Copy a trained sparse/dense pair into artifacts/demo and write SHA256SUMS (see artifacts/demo/README.md).

python scripts/pack_demo_models.py runs/art/sparse runs/art/dense
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sparsecircuits.experiments.shipped import SHIPPED_DIR, pack, verify


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sparse", type=Path)
    p.add_argument("dense", type=Path)
    p.add_argument("--out", type=Path, default=SHIPPED_DIR)
    args = p.parse_args()
    pack({"sparse": args.sparse, "dense": args.dense}, args.out)
    verify(args.out)
    print((args.out / "SHA256SUMS").read_text(), end="")


if __name__ == "__main__":
    main()
