"""Find Python source files, apply the skip rules, drop duplicates, and split train/validation by path hash."""

from __future__ import annotations

import hashlib
import os
import sysconfig
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sparsecircuits.errors import UserError

MAX_FILE_BYTES = 1_000_000  # larger files are mostly generated tables, not code people write
SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", ".git", ".venv", "node_modules"}


@dataclass
class Document:
    """One source file that passed the filters."""

    source: str  # the source root it came from
    relpath: str  # path relative to that root, '/'-separated: the split key
    text: str
    split: str  # "train" or "val"


@dataclass
class CorpusStats:
    files_seen: int = 0
    files_kept: int = 0
    bytes_kept: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, path: str) -> None:
        self.skipped[reason] += 1
        examples = self.skipped_examples.setdefault(reason, [])
        if len(examples) < 5:
            examples.append(path)


def default_source() -> Path:
    """The standard-library source of the running interpreter: real Python code on every machine."""
    return Path(sysconfig.get_paths()["stdlib"])


def split_of(relpath: str, val_fraction: float = 0.02) -> str:
    """Deterministic split by a hash of the relative path, so a file never moves between splits."""
    h = int.from_bytes(hashlib.sha256(relpath.encode("utf-8")).digest()[:8], "big")
    return "val" if h % 1_000_000 < val_fraction * 1_000_000 else "train"


def find_python_files(root: Path) -> Iterator[Path]:
    """All `.py` files under `root` (or `root` itself), in a stable order, skipping vendored/cache dirs."""
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield Path(dirpath) / name


def check_sources(sources: list[Path]) -> None:
    for src in sources:
        if not src.exists():
            raise UserError(f"source does not exist: {src}")


def read_documents(
    sources: list[Path], stats: CorpusStats, val_fraction: float = 0.02, max_bytes: int = MAX_FILE_BYTES
) -> Iterator[Document]:
    """Yield the kept files of every source; record skipped files (and why) in `stats`."""
    check_sources(sources)
    seen_hashes: set[bytes] = set()
    for src in sources:
        n_before = stats.files_seen
        for path in find_python_files(src):
            stats.files_seen += 1
            rel = path.name if src.is_file() else path.relative_to(src).as_posix()
            doc = _read_one(path, rel, src, stats, seen_hashes, max_bytes)
            if doc is not None:
                doc.split = split_of(rel, val_fraction)
                stats.files_kept += 1
                stats.bytes_kept += len(doc.text.encode("utf-8"))
                yield doc
        if stats.files_seen == n_before:
            raise UserError(f"no Python files found in source: {src}")


def read_limited(path: Path, rel: str, stats: CorpusStats, max_bytes: int) -> bytes | None:
    """The file's bytes, or None (counted in `stats` as oversized or unreadable)."""
    try:
        if path.stat().st_size > max_bytes:
            stats.skip("oversized", rel)
            return None
        return path.read_bytes()
    except OSError:
        stats.skip("unreadable", rel)
        return None


def first_copy(data: bytes, rel: str, stats: CorpusStats, seen: set[bytes]) -> bool:
    """True the first time these exact bytes are seen (remembered in `seen`); a repeat counts as duplicate."""
    digest = hashlib.sha256(data).digest()
    if digest in seen:
        stats.skip("duplicate", rel)
        return False
    seen.add(digest)
    return True


def _read_one(
    path: Path, rel: str, src: Path, stats: CorpusStats, seen: set[bytes], max_bytes: int
) -> Document | None:
    data = read_limited(path, rel, stats, max_bytes)
    if data is None:
        return None
    if not data.strip():
        stats.skip("empty", rel)
        return None
    if b"\x00" in data:
        stats.skip("binary", rel)
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        stats.skip("non_utf8", rel)
        return None
    if not first_copy(data, rel, stats, seen):
        return None
    return Document(source=str(src), relpath=rel, text=text, split="train")
