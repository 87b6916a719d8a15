"""Time `data build` on the standard-library corpus: walking/reading, tokenizer training, encoding, total.

Usage: python benchmarks/data_build.py [--synthetic MB] [--source PATH ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402
from sparsecircuits.data.build import BuildConfig, build_dataset  # noqa: E402
from sparsecircuits.tasks.tokens import REQUIRED_TOKENS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--source", action="append", type=Path, default=[])
    ap.add_argument("--synthetic", type=float, default=0.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        meta = build_dataset(
            BuildConfig(
                out=Path(tmp) / "ds",
                sources=args.source,
                synthetic_mb=args.synthetic,
                required_tokens=REQUIRED_TOKENS,
                progress=False,
            )
        )
    s, mb = meta["seconds"], (meta["bytes"]["train"] + meta["bytes"]["val"]) / 1e6
    rows = [
        {"stage": "walk+read", "seconds": s["read"], "MB/s": mb / max(s["read"], 1e-9)},
        {
            "stage": "tokenizer training",
            "seconds": s["tokenizer"],
            "MB/s": meta["bytes"]["train"] / 1e6 / s["tokenizer"],
        },
        {"stage": "encode+write", "seconds": s["encode"], "MB/s": mb / s["encode"]},
        {"stage": "total", "seconds": s["total"], "MB/s": mb / s["total"]},
    ]
    report("data_build", rows, {"corpus_mb": mb, "tokens": meta["tokens"], "target_total_seconds": 120})


if __name__ == "__main__":
    main()
