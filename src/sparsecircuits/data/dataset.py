"""A built dataset directory: tokenizer.json, train.bin, val.bin and meta.json.

meta.json records the SHA-256 of tokenizer.json ("tokenizer_sha256"); `load_dataset` refuses a dataset
whose tokenizer was replaced since, and `DatasetDir.check_built_with` refuses one built by another
tokenizer than a run's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer

from sparsecircuits.data.tokenizer import (
    HASH_KEY,
    check_same_vocab,
    check_tokenizer_file,
    load_tokenizer,
    tokenizer_sha256,
)
from sparsecircuits.errors import UserError
from sparsecircuits.io import read_json

FILES = ("tokenizer.json", "train.bin", "val.bin", "meta.json")


@dataclass
class DatasetDir:
    path: Path
    meta: dict
    _tokenizer_sha256: str | None = field(default=None, repr=False)

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.json"

    @property
    def train_bin(self) -> Path:
        return self.path / "train.bin"

    @property
    def val_bin(self) -> Path:
        return self.path / "val.bin"

    @property
    def tokenizer_sha256(self) -> str:
        """SHA-256 of tokenizer.json (as recorded in meta.json, which load_dataset checked, or computed)."""
        if self._tokenizer_sha256 is None:
            self._tokenizer_sha256 = self.meta.get(HASH_KEY) or tokenizer_sha256(self.tokenizer_path)
        return self._tokenizer_sha256

    def check_built_with(self, tokenizer_file: Path, tokenizer: Tokenizer, what: str) -> None:
        """UserError unless this dataset was built with the tokenizer of `what` (its file `tokenizer_file`).

        The same file bytes pass at once; otherwise the vocabularies must agree (a tokenizer re-saved by
        `data build --tokenizer` may differ in its bytes only)."""
        if tokenizer_sha256(tokenizer_file) == self.tokenizer_sha256:
            return
        theirs = load_tokenizer(self.tokenizer_path)
        check_same_vocab(tokenizer, theirs, what, f"dataset {self.path} (built with another tokenizer)")


def load_dataset(path: str | Path) -> DatasetDir:
    """Open a dataset directory written by `sparsecircuits data build`, checking it is complete."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"data directory not found: {path}")
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise UserError(f"{path} is not a dataset directory (missing {', '.join(missing)}); run `data build`")
    meta = read_json(path / "meta.json", "dataset meta.json")
    if not isinstance(meta, dict):
        raise UserError(f"{path / 'meta.json'} is not a dataset meta.json (not a JSON object)")
    check_tokenizer_file(path / "tokenizer.json", meta.get(HASH_KEY), str(path / "meta.json"))
    for split in ("train", "val"):
        expected = meta.get("tokens", {}).get(split)
        actual = (path / f"{split}.bin").stat().st_size // 2
        if expected is not None and expected != actual:
            raise UserError(
                f"{split}.bin has {actual} tokens but meta.json says {expected}: rebuild the dataset"
            )
    return DatasetDir(path=path, meta=meta)
