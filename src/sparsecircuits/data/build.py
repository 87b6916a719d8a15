"""`data build`: sources -> filtered documents -> BPE tokenizer -> train.bin / val.bin / meta.json."""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sparsecircuits import __version__
from sparsecircuits.data.corpus import CorpusStats, Document, default_source, read_documents, split_of
from sparsecircuits.data.shards import write_tokens
from sparsecircuits.data.synthetic import generate_programs
from sparsecircuits.data.tokenizer import HASH_KEY, eot_id, load_tokenizer, tokenizer_sha256, train_tokenizer
from sparsecircuits.errors import UserError
from sparsecircuits.io import atomic_write_json, check_output_dir, commit_dir, staging_dir

MAX_VOCAB = 2**16  # train.bin / val.bin hold uint16 token ids
MAX_SYNTHETIC_MB = 100_000.0


@dataclass
class BuildConfig:
    out: Path
    sources: list[Path] = field(default_factory=list)  # empty: the standard library (unless no_stdlib)
    no_stdlib: bool = False
    vocab_size: int = 2048
    val_fraction: float = 0.02
    synthetic_mb: float = 0.0
    seed: int = 0
    hf_dataset: str | None = None
    hf_column: str = "content"
    required_tokens: tuple[str, ...] = ()
    tokenizer: Path | None = (
        None  # reuse this tokenizer.json instead of training one (e.g. an imported model's)
    )
    force: bool = False
    progress: bool = True


def file_sources(cfg: BuildConfig) -> list[Path]:
    """The directories and files to walk: the given ones, else the standard library."""
    return cfg.sources or ([] if cfg.no_stdlib else [default_source()])


def collect_documents(cfg: BuildConfig, stats: CorpusStats) -> list[Document]:
    """Every kept document from the file sources, the synthetic generator and an optional HF dataset."""
    docs: list[Document] = []
    if file_sources(cfg):
        docs += read_documents(file_sources(cfg), stats, cfg.val_fraction)
    for i, text in enumerate(generate_programs(int(cfg.synthetic_mb * 1e6), cfg.seed)):
        rel = f"synthetic/{cfg.seed}/{i}"
        docs.append(Document("synthetic", rel, text, split_of(rel, cfg.val_fraction)))
    if cfg.hf_dataset:
        from sparsecircuits.data.hf import read_hf_dataset

        docs += read_hf_dataset(cfg.hf_dataset, cfg.hf_column, stats, cfg.val_fraction)
    return docs


def encode_split(tok, texts: list[str], progress: bool, desc: str, chunk: int = 64) -> np.ndarray:
    """Tokenize documents in chunks, with an end-of-text token after each. Returns [N] uint16."""
    eot = eot_id(tok)
    parts: list[np.ndarray] = []
    with tqdm(total=sum(map(len, texts)), unit="B", unit_scale=True, desc=desc, disable=not progress) as bar:
        for i in range(0, len(texts), chunk):
            batch = texts[i : i + chunk]
            for enc in tok.encode_batch(batch, add_special_tokens=False):
                parts.append(np.asarray(enc.ids + [eot], dtype=np.uint16))
            bar.update(sum(map(len, batch)))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def check_build_config(cfg: BuildConfig) -> None:
    """One-line UserError for the first bad setting, before anything is read or written."""
    if not (file_sources(cfg) or cfg.synthetic_mb or cfg.hf_dataset):
        raise UserError("nothing to build: --no-stdlib without --source, --synthetic or --hf-dataset")
    if not math.isfinite(cfg.synthetic_mb) or not 0 <= cfg.synthetic_mb <= MAX_SYNTHETIC_MB:
        raise UserError(
            f"--synthetic must be a number of MB in [0, {MAX_SYNTHETIC_MB}], got {cfg.synthetic_mb}"
        )
    if not math.isfinite(cfg.val_fraction) or not 0 < cfg.val_fraction < 1:
        raise UserError(f"--val-fraction must be in (0, 1), got {cfg.val_fraction}")
    if not 1 <= cfg.vocab_size <= MAX_VOCAB:
        raise UserError(
            f"--vocab-size must be in [1, {MAX_VOCAB}] (token ids are stored as uint16), got {cfg.vocab_size}"
        )
    if cfg.tokenizer is not None and not Path(cfg.tokenizer).is_file():
        raise UserError(f"tokenizer file not found: {cfg.tokenizer}")


def build_dataset(cfg: BuildConfig) -> dict:
    """Build a dataset directory at `cfg.out`. Returns its meta dict. Nothing is left half-written on error."""
    t0 = time.perf_counter()
    stats = CorpusStats()
    check_build_config(cfg)
    check_output_dir(cfg.out, "dataset", cfg.force, staged=True)  # a bad --out before the slow reading
    docs = collect_documents(cfg, stats)  # validate sources before touching the output path
    tmp = staging_dir(cfg.out, cfg.force, "dataset")
    try:
        meta = _build_into(cfg, docs, stats, tmp, t0)
        commit_dir(tmp, cfg.out, "dataset")
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _build_into(cfg: BuildConfig, docs: list[Document], stats: CorpusStats, tmp: Path, t0: float) -> dict:
    train = [d.text for d in docs if d.split == "train"]
    val = [d.text for d in docs if d.split == "val"]
    if not train or not val:
        raise UserError(
            f"the corpus is too small to split: {len(train)} training and {len(val)} validation documents"
        )
    t_read = time.perf_counter()
    tok = _tokenizer(cfg, train)
    t_tok = time.perf_counter()
    tok.save(str(tmp / "tokenizer.json"))
    ids = {
        "train": encode_split(tok, train, cfg.progress, "encode train"),
        "val": encode_split(tok, val, cfg.progress, "encode val"),
    }
    for split, arr in ids.items():
        write_tokens(tmp / f"{split}.bin", arr)
    t_enc = time.perf_counter()
    meta = {
        "format": "sparsecircuits-dataset/1",
        "code_version": __version__,
        "sources": [str(s) for s in file_sources(cfg)],
        "synthetic_mb": cfg.synthetic_mb,
        "hf_dataset": cfg.hf_dataset,
        "seed": cfg.seed,
        "val_fraction": cfg.val_fraction,
        "vocab_size": tok.get_vocab_size(),
        "tokenizer_source": str(cfg.tokenizer) if cfg.tokenizer else "trained",
        HASH_KEY: tokenizer_sha256(tmp / "tokenizer.json"),
        "eot_id": eot_id(tok),
        "required_tokens": list(cfg.required_tokens),
        "documents": {
            "train": len(train),
            "val": len(val),
            "synthetic": sum(d.source == "synthetic" for d in docs),
        },
        "files": {"seen": stats.files_seen, "kept": stats.files_kept, "bytes_kept": stats.bytes_kept},
        "skipped": dict(stats.skipped),
        "skipped_examples": stats.skipped_examples,
        "bytes": {"train": sum(map(len, train)), "val": sum(map(len, val))},
        "tokens": {s: int(len(a)) for s, a in ids.items()},
        "content_hash": _content_hash(tmp),
        "seconds": {
            "read": round(t_read - t0, 2),
            "tokenizer": round(t_tok - t_read, 2),
            "encode": round(t_enc - t_tok, 2),
            "total": round(time.perf_counter() - t0, 2),
        },
    }
    atomic_write_json(tmp / "meta.json", meta)
    return meta


def _tokenizer(cfg: BuildConfig, train: list[str]):
    """Train the BPE, or load the given one (whose missing required tokens are reported, not forced)."""
    if cfg.tokenizer is None:
        if cfg.progress:
            print(
                f"training BPE tokenizer ({cfg.vocab_size} tokens) on {len(train)} documents...", flush=True
            )
        return train_tokenizer(train, cfg.vocab_size, cfg.required_tokens)
    tok = load_tokenizer(cfg.tokenizer)
    eot_id(tok)  # documents are separated by it: fail early if the tokenizer lacks it
    missing = [s for s in cfg.required_tokens if len(tok.encode(s).ids) != 1]
    if missing and cfg.progress:
        print(
            f"note: {len(missing)} task tokens are not single tokens in {cfg.tokenizer} (e.g. {missing[0]!r}); "
            "tasks that need them cannot be evaluated with it",
            flush=True,
        )
    return tok


def _content_hash(d: Path) -> str:
    h = hashlib.sha256()
    for name in ("tokenizer.json", "train.bin", "val.bin"):
        with open(d / name, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()[:16]
