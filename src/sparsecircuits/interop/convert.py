"""Convert one of the authors' released model directories into our run directory format.

Input (downloaded by the user, see docs/import.md): `beeg_config.json` and `final_model.pt`, plus the
tokenizer files `vocab.bpe` and `encoder.json`. Output: a run directory (`config.json`,
`model.safetensors`, `tokenizer.json`) that `sparsecircuits.run.load_run` opens like a trained run.
The output appears atomically: it is built in a staging directory, loaded back, then renamed.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sparsecircuits import __version__
from sparsecircuits.errors import UserError
from sparsecircuits.interop.openai_config import CONFIG_FILE, model_config_dict, parse_config
from sparsecircuits.interop.openai_tokenizer import has_openai_tokenizer, load_openai_tokenizer
from sparsecircuits.interop.openai_weights import WEIGHTS_FILE, convert_state_dict, read_state_dict
from sparsecircuits.io import atomic_write_json, commit_dir, file_sha256, read_json, staging_dir
from sparsecircuits.model.config import ModelConfig
from sparsecircuits.run import CONFIG_FILE as RUN_CONFIG
from sparsecircuits.run import MODEL_FILE, TOKENIZER_FILE, load_run, save_tensors

SOURCE_FORMAT = "openai-circuit-sparsity"
DATA_NOTE = (
    "Imported from the paper authors' release; their pretraining data is not available. Mean ablation "
    "(prune, validate) needs a token dataset in this run's tokenizer: set data.dir to one."
)


def find_tokenizer_dir(src: Path) -> Path:
    """Where `vocab.bpe` and `encoder.json` are: SRC itself, or a `tinypython/` folder in SRC or above it."""
    candidates = [src, src / "tinypython", src.parent / "tinypython", src.parent.parent / "tinypython"]
    for c in candidates:
        if has_openai_tokenizer(c):
            return c
    looked = ", ".join(str(c) for c in candidates)
    raise UserError(
        f"tokenizer files vocab.bpe and encoder.json not found (looked in {looked}); use --tokenizer DIR"
    )


def import_openai(
    src: str | Path,
    out: str | Path,
    tokenizer_dir: str | Path | None = None,
    force: bool = False,
    log: Callable[[str], None] = lambda s: None,
) -> Path:
    """Convert the authors' model directory `src` into the run directory `out`; return `out`."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise UserError(f"source directory not found: {src}")
    tmp = staging_dir(out, force, "import")  # refuses an existing RUN before any slow work
    try:
        _convert_into(src, tmp, tokenizer_dir, log)
        load_run(tmp)  # the result must open like any run (strict names and shapes)
        commit_dir(tmp, out, "import")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {out}")
    return out


def _convert_into(src: Path, tmp: Path, tokenizer_dir: str | Path | None, log: Callable[[str], None]) -> None:
    """Read and check the authors' files in `src`; write config, weights and tokenizer into `tmp`."""
    cfg = parse_config(read_json(src / CONFIG_FILE, f"authors' config {CONFIG_FILE}"))
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else find_tokenizer_dir(src)
    log(f"tokenizer from {tok_dir}")
    tokenizer = load_openai_tokenizer(tok_dir)
    log(f"reading {src / WEIGHTS_FILE}")
    weights = convert_state_dict(read_state_dict(src / WEIGHTS_FILE), cfg, src / WEIGHTS_FILE)
    model_cfg = ModelConfig.from_dict(model_config_dict(cfg, weights.added_positions, weights.logits_bias))
    if tokenizer.get_vocab_size() != model_cfg.vocab_size:
        raise UserError(
            f"the tokenizer in {tok_dir} has {tokenizer.get_vocab_size()} ids but {CONFIG_FILE} says "
            f"vocab_size {model_cfg.vocab_size}: wrong tokenizer for this model?"
        )
    save_tensors(weights.tensors, tmp / MODEL_FILE)
    tokenizer.save(str(tmp / TOKENIZER_FILE))
    config = {
        "model": model_cfg.to_dict(),
        "train": None,
        "data": {"note": DATA_NOTE},
        "source": _source_info(src, tok_dir, cfg.raw, cfg.notes + weights.notes),
        "tokenizer_sha256": file_sha256(tmp / TOKENIZER_FILE),  # load_run refuses a swapped tokenizer.json
        "code_version": __version__,
    }
    atomic_write_json(tmp / RUN_CONFIG, config)


def _source_info(src: Path, tok_dir: Path, raw: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    files = {
        name: {"sha256": file_sha256(path), "bytes": path.stat().st_size}
        for name, path in (
            (CONFIG_FILE, src / CONFIG_FILE),
            (WEIGHTS_FILE, src / WEIGHTS_FILE),
            ("vocab.bpe", tok_dir / "vocab.bpe"),
            ("encoder.json", tok_dir / "encoder.json"),
        )
    }
    return {
        "format": SOURCE_FORMAT,
        "path": str(src.resolve()),
        "name": src.resolve().name,
        "tokenizer_path": str(tok_dir.resolve()),
        "files": files,
        "beeg_config": raw,
        "notes": notes,
    }
