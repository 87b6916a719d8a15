"""A built dataset directory: tokenizer.json, train.bin, val.bin and meta.json."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sparsecircuits.errors import UserError
from sparsecircuits.io import read_json

FILES = ("tokenizer.json", "train.bin", "val.bin", "meta.json")


@dataclass
class DatasetDir:
    path: Path
    meta: dict

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.json"

    @property
    def train_bin(self) -> Path:
        return self.path / "train.bin"

    @property
    def val_bin(self) -> Path:
        return self.path / "val.bin"


def load_dataset(path: str | Path) -> DatasetDir:
    """Open a dataset directory written by `sparsecircuits data build`, checking it is complete."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"data directory not found: {path}")
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise UserError(f"{path} is not a dataset directory (missing {', '.join(missing)}); run `data build`")
    meta = read_json(path / "meta.json", "dataset meta.json")
    for split in ("train", "val"):
        expected = meta.get("tokens", {}).get(split)
        actual = (path / f"{split}.bin").stat().st_size // 2
        if expected is not None and expected != actual:
            raise UserError(
                f"{split}.bin has {actual} tokens but meta.json says {expected}: rebuild the dataset"
            )
    return DatasetDir(path=path, meta=meta)
