"""The demo models shipped with the repository (artifacts/demo), trained once for longer than a CPU demo can.

A few CPU minutes do not teach a small model to close quotes or count brackets, so `make demo` uses a sparse
and a dense model trained once on this project's development machine (the command is in
artifacts/demo/README.md) and checked against SHA256SUMS before use. `sparsecircuits demo --train` trains both
from scratch instead.

Layout: artifacts/demo/{sparse,dense}/{config.json,weights.safetensors,tables.safetensors,metrics.jsonl}, one
tokenizer.json for both (the corpus is rebuilt with it), and SHA256SUMS over all of them. The weights are in
the compact form of `compact.py` (nonzeros only, the bigram table in 8 bits); `install` expands them into an
ordinary run directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sparsecircuits.data.tokenizer import HASH_KEY
from sparsecircuits.errors import UserError
from sparsecircuits.experiments.compact import TABLES_FILE, WEIGHTS_FILE, read_compact, write_compact
from sparsecircuits.io import atomic_write_text, commit_dir, file_sha256, read_json, staging_dir

SHIPPED_DIR = Path(__file__).resolve().parents[3] / "artifacts" / "demo"
KINDS = ("sparse", "dense")
COPIED = ("config.json", "metrics.jsonl")  # as the run has them
SHIPPED_FILES = COPIED + (WEIGHTS_FILE, TABLES_FILE)
SUMS = "SHA256SUMS"
STORED_AS = "compact: nonzeros exact, dense tables in 8 bits with a scale per row (experiments/compact.py)"


def shipped_files() -> list[str]:
    """Paths relative to the artifact directory, in SHA256SUMS order."""
    return ["tokenizer.json"] + [f"{kind}/{name}" for kind in KINDS for name in SHIPPED_FILES]


def model_entry(kind: str) -> str:
    """The SHA256SUMS entry that identifies the shipped `kind` model (recorded by `install`)."""
    return f"{kind}/{WEIGHTS_FILE}"


def available(root: Path = SHIPPED_DIR) -> bool:
    return (root / SUMS).is_file()


def read_sums(root: Path = SHIPPED_DIR) -> dict[str, str]:
    """SHA256SUMS as {relative path: hex digest}."""
    sums = {}
    for line in (root / SUMS).read_text().splitlines():
        digest, _, rel = line.partition("  ")
        sums[rel] = digest
    return sums


def verify(root: Path = SHIPPED_DIR) -> None:
    """Raise UserError unless every shipped file is present and matches SHA256SUMS."""
    expected = read_sums(root)
    for rel in shipped_files():
        path = root / rel
        if rel not in expected:
            raise UserError(f"{root / SUMS} lists no hash for {rel}")
        if not path.is_file():
            raise UserError(f"shipped demo file missing: {path} (or run `sparsecircuits demo --train`)")
        if file_sha256(path) != expected[rel]:
            raise UserError(
                f"shipped demo file {path} does not match its SHA-256 in {root / SUMS}: "
                "restore it from git, or run `sparsecircuits demo --train`"
            )


def install(root: Path, kind: str, out: Path, data_dir: Path) -> Path:
    """Copy the shipped `kind` run (checked by `verify` first) to `out`, pointed at `data_dir` (a corpus built
    with the shipped tokenizer).

    The run's config keeps the data it was trained on under "trained_on".
    """
    from sparsecircuits.data.dataset import load_dataset
    from sparsecircuits.run import MODEL_FILE, save_tensors

    tmp = staging_dir(out, True, "run")
    try:
        for name in COPIED:
            shutil.copyfile(root / kind / name, tmp / name)
        save_tensors(read_compact(root / kind), tmp / MODEL_FILE)
        shutil.copyfile(root / "tokenizer.json", tmp / "tokenizer.json")
        config = read_json(tmp / "config.json", "shipped run config")
        meta = load_dataset(data_dir).meta
        config["trained_on"] = config.get("data")
        config["data"] = {
            "dir": str(data_dir.resolve()),
            "content_hash": meta["content_hash"],
            "vocab_size": meta["vocab_size"],
        }
        # verify() has checked the files against SHA256SUMS; record the model's entry, not a second hash.
        config["shipped"] = {
            "from": str(root),
            "sha256": read_sums(root)[model_entry(kind)],
            "weights": STORED_AS,
        }
        atomic_write_text(tmp / "config.json", json.dumps(config, indent=2) + "\n")
        commit_dir(tmp, out, "run")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def pack(runs: dict[str, Path], root: Path = SHIPPED_DIR) -> None:
    """Store finished `runs` ({"sparse": DIR, "dense": DIR}, same tokenizer) in `root`, weights compacted,
    and write SHA256SUMS."""
    from sparsecircuits.run import MODEL_FILE, load_tensors

    tokenizers = {(runs[k] / "tokenizer.json").read_bytes() for k in KINDS}
    if len(tokenizers) != 1:
        raise UserError("the sparse and dense runs must share one tokenizer")
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(runs["sparse"] / "tokenizer.json", root / "tokenizer.json")
    for kind in KINDS:
        (root / kind).mkdir(exist_ok=True)
        for name in COPIED:
            shutil.copyfile(runs[kind] / name, root / kind / name)
        write_compact(load_tensors(runs[kind] / MODEL_FILE, "model weights"), root / kind)
        (root / kind / MODEL_FILE).unlink(missing_ok=True)  # the full-size file of an earlier layout
        # SHA256SUMS covers the tokenizer of a shipped run (install, run.load_run): its config carries no hash
        config = read_json(root / kind / "config.json", "run config")
        config.pop(HASH_KEY, None)
        atomic_write_text(root / kind / "config.json", json.dumps(config, indent=2) + "\n")
    lines = [f"{file_sha256(root / rel)}  {rel}" for rel in shipped_files()]
    atomic_write_text(root / SUMS, "\n".join(lines) + "\n")
