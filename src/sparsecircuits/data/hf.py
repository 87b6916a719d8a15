"""Optional Hugging Face `datasets` source (the `datasets` extra). Works offline on local parquet/jsonl files."""

from __future__ import annotations

import os
from pathlib import Path

from sparsecircuits.data.corpus import CorpusStats, Document, split_of
from sparsecircuits.errors import UserError

LOCAL_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def _load(name_or_path: str):
    try:
        import datasets
    except ImportError:
        raise UserError(
            "--hf-dataset needs the optional 'datasets' package: pip install 'sparsecircuits[datasets]'"
        ) from None
    path = Path(name_or_path)
    if path.exists():
        files = sorted(p for p in (path.rglob("*") if path.is_dir() else [path]) if p.suffix in LOCAL_FORMATS)
        if not files:
            raise UserError(f"no .parquet, .jsonl, .json or .csv files in {path}")
        kinds = {LOCAL_FORMATS[p.suffix] for p in files}
        if len(kinds) > 1:
            raise UserError(f"{path} mixes file formats ({', '.join(sorted(kinds))}); use one")
        return datasets.load_dataset(kinds.pop(), data_files=[str(p) for p in files], split="train")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # never download at run time
    try:
        return datasets.load_dataset(name_or_path, split="train")
    except Exception as e:
        raise UserError(f"cannot load dataset {name_or_path!r} offline: {str(e).splitlines()[0]}") from None


def read_hf_dataset(
    name_or_path: str, column: str, stats: CorpusStats, val_fraction: float
) -> list[Document]:
    """Documents from the `column` of a Hugging Face dataset (local files or an already-cached hub dataset)."""
    ds = _load(name_or_path)
    if column not in ds.column_names:
        raise UserError(f"dataset has no column {column!r}; columns: {', '.join(ds.column_names)}")
    docs = []
    for i, text in enumerate(ds[column]):
        stats.files_seen += 1
        rel = f"hf/{name_or_path}/{i}"
        if not isinstance(text, str) or not text.strip():
            stats.skip("empty", rel)
            continue
        docs.append(Document(name_or_path, rel, text, split_of(rel, val_fraction)))
    return docs
