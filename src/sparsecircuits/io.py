"""Atomic file writes and output-directory handling shared by every command."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sparsecircuits.errors import UserError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` then rename the temporary file onto `path`, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path, what: str = "file") -> Any:
    """Read a JSON file, turning a missing or corrupt file into a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} is not valid JSON: {path} ({e})") from None


# ---- output folders this project owns --------------------------------------------------------------
#
# Every output folder a command creates holds MARKER_FILE: {"project": "sparsecircuits", "kind": KIND, ...}.
# `--force` replaces only such a folder of the same kind, and then removes only the entries the project
# writes there (OWNED_ENTRIES[kind], shell patterns), so a user's own files beside them survive. Folders made
# before the marker existed are recognised by what the project wrote into them (`legacy_kind`).

MARKER_FILE = ".sparsecircuits.json"
PROJECT = "sparsecircuits"
_RUN_ENTRIES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "metrics.jsonl",
    "checkpoints",
    "cache",
    "bridges.json",
    "bridges.safetensors",
)
OWNED_ENTRIES: dict[str, tuple[str, ...]] = {
    "run": _RUN_ENTRIES,
    "import": _RUN_ENTRIES,
    "dataset": ("tokenizer.json", "train.bin", "val.bin", "meta.json"),
    "demo": (
        "data",
        "sparse",
        "dense",
        "circuits",
        "eval.json",
        "natural.jsonl",
        "demo.json",
        "report.json",
        "report.html",
    ),
    "prune": ("summary.json", "*.circuit.json"),
    "frontier": (
        "frontier.json",
        "frontier.md",
        "fig3_frontier.png",
        "fig2_loss_vs_edges.png",
        "models",
        "cells",
        "circuits",
    ),
}
# Hidden files the project writes beside its entries: atomic-write temporaries and the marker itself.
_OWNED_HIDDEN = (MARKER_FILE, ".*.tmp", ".*.old")


def _read_json_object(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _is_run_config(config: dict | None) -> bool:
    """A config.json this project wrote for a model: a "model" section ModelConfig accepts."""
    from sparsecircuits.model.config import ModelConfig

    if not config or not isinstance(config.get("model"), dict):
        return False
    try:
        ModelConfig.from_dict(config["model"])
    except (UserError, TypeError, ValueError):
        return False
    return True


def legacy_kind(out: Path) -> str | None:
    """The kind of project output in a folder written before markers existed, or None.

    run/import: config.json with a valid "model" section beside model.safetensors, checkpoints/ or
    tokenizer.json (import: config.json also has the importer's "source" record); dataset: meta.json with
    content_hash and vocab_size beside train.bin; demo: demo.json naming its models; frontier: frontier.json
    with "models" (a sweep stopped before it: cells/NAME/model.json, or a run in models/NAME); prune:
    summary.json with "tasks_total", or a circuit file with "nodes" and "model". Anything else is not ours.
    """
    config = _read_json_object(out / "config.json")
    written = ("model.safetensors", "checkpoints", "tokenizer.json")  # what a run holds beside its config
    if _is_run_config(config) and any((out / name).exists() for name in written):
        return "import" if isinstance(config.get("source"), dict) else "run"
    meta = _read_json_object(out / "meta.json")
    if meta and {"content_hash", "vocab_size"} <= set(meta) and (out / "train.bin").is_file():
        return "dataset"
    for kind, name, key in (
        ("demo", "demo.json", "models"),
        ("frontier", "frontier.json", "models"),
        ("prune", "summary.json", "tasks_total"),
    ):
        found = _read_json_object(out / name)
        if found and key in found:
            return kind
    cells = [_read_json_object(p) for p in sorted(out.glob("cells/*/model.json"))[:1]]
    if any(c and {"val_loss", "nonzero_params"} <= set(c) for c in cells) or any(
        legacy_kind(m) == "run" for m in sorted(out.glob("models/*"))[:1] if m.is_dir()
    ):
        return "frontier"  # a sweep stopped before its first frontier.json
    for circuit in sorted(out.glob("*.circuit.json"))[:1]:
        found = _read_json_object(circuit)
        if found and {"nodes", "model"} <= set(found):
            return "prune"
    return None


def output_kind(out: str | Path) -> str | None:
    """The kind of project output in folder `out` (from its marker, else `legacy_kind`), or None."""
    out = Path(out)
    marker = _read_json_object(out / MARKER_FILE)
    if marker and marker.get("project") == PROJECT and marker.get("kind") in OWNED_ENTRIES:
        return marker["kind"]
    return legacy_kind(out) if out.is_dir() else None


def mark_output_dir(out: str | Path, kind: str, **info: Any) -> None:
    """Write the marker that makes `out` recognisable as this project's `kind` output."""
    from sparsecircuits import __version__

    if kind not in OWNED_ENTRIES:
        raise ValueError(f"unknown output kind {kind!r}")
    marker = {"project": PROJECT, "kind": kind, "code_version": __version__, **info}
    atomic_write_json(Path(out) / MARKER_FILE, marker)


def _owned(name: str, kind: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) for pat in OWNED_ENTRIES[kind] + _OWNED_HIDDEN)


def owned_entries(out: str | Path, kind: str) -> list[Path]:
    """The entries of `out` that the project writes for `kind` (what `--force` may remove)."""
    out = Path(out)
    return sorted(p for p in out.iterdir() if _owned(p.name, kind)) if out.is_dir() else []


def check_writable(path: str | Path, what: str = "output") -> None:
    """UserError unless `path` (file or folder, existing or not) could be created or replaced.

    Probes an existing folder itself, else the nearest existing ancestor: a file there means the path cannot
    exist; otherwise a temporary file is created and removed in it, which is the honest test (os.access does
    not see read-only mounts for every user, nor what root may do)."""
    path = Path(path)
    ancestor = path if path.is_dir() else path.parent
    while not ancestor.exists():
        if ancestor == ancestor.parent:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"cannot write {what} {path}: {ancestor} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".sparsecircuits-probe.", dir=ancestor)
    except OSError as e:
        raise UserError(f"cannot write {what} {path}: {ancestor} is not writable ({e.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(path: str | Path, force: bool, what: str = "output file") -> Path:
    """Refuse before any work: `path` is a folder, exists without `force`, or cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory; give a file name")
    if path.exists() and not force:
        raise UserError(f"{what} {path} already exists (use --force to overwrite)")
    check_writable(path, what)
    return path


def check_output_dir(
    out: str | Path, kind: str, force: bool, resume: bool = False, staged: bool = False
) -> Path:
    """Refuse before any work an output folder that cannot be used for this project's `kind` output.

    A missing or empty folder is fine. A non-empty folder needs `force` (to replace) or `resume` (to go on
    with it), and either way must hold this project's `kind` output: a user's own folder is never touched.
    The folder must be writable, and with `staged` (built beside it, see `staging_dir`) its parent too.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output path exists and is not a directory: {out}")
    if out.is_dir() and any(out.iterdir()):
        found = output_kind(out)
        if not force and not resume:
            raise UserError(f"output directory already exists: {out} (use --force to overwrite)")
        if found is None:
            raise UserError(
                f"refusing to {'replace' if force else 'use'} {out}: it is not empty and holds no "
                f"sparsecircuits {kind} (no {MARKER_FILE}); choose another --out"
            )
        if found != kind:
            raise UserError(
                f"refusing to {'replace' if force else 'use'} {out}: it holds a sparsecircuits "
                f"{found}, not a {kind}; choose another --out"
            )
    check_writable(out, "output directory")
    if staged and out.is_dir():
        check_writable(out.resolve().parent / f".{out.name}.tmp", "output directory")
    return out


def check_output_files(out: str | Path, names: Iterable[str], force: bool, kind: str) -> Path:
    """Refuse before any work to write the files `names` into the folder `out` (e.g. prune's circuits and
    summary.json): `out` is a file, one of them exists without `force`, or with `force` the folder is not this
    project's `kind` output, or it cannot be written. Other files in `out` are never touched."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output path exists and is not a directory: {out}")
    clashes = [out / n for n in names if (out / n).exists()]
    if clashes and not force:
        raise UserError(f"{clashes[0]} already exists (use --force to overwrite)")
    if clashes and output_kind(out) != kind:
        raise UserError(
            f"refusing to overwrite {clashes[0]}: {out} holds no sparsecircuits {kind} output "
            f"(no {MARKER_FILE}); choose another --out"
        )
    check_writable(out, "output directory")
    return out


def clear_output_dir(out: str | Path, kind: str, keep: tuple[str, ...] = ()) -> None:
    """Remove the entries the project writes for `kind` from `out` (checked by `check_output_dir`), except
    the names in `keep`; anything else in it stays."""
    for p in owned_entries(out, kind):
        if p.name in keep:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def prepare_output_dir(out: str | Path, kind: str, force: bool, **info: Any) -> Path:
    """Check `out`, clear the project's old `kind` output with `force`, create it and write the marker."""
    out = check_output_dir(out, kind, force, resume=not force)
    if force:
        clear_output_dir(out, kind)
    out.mkdir(parents=True, exist_ok=True)
    mark_output_dir(out, kind, **info)
    return out


def staging_prefix(name: str) -> str:
    """Prefix of the hidden staging folder of output `name`, naming this host and process (`.NAME.HOST-PID.`),
    so a later run can tell the folder of a killed process from that of one still running."""
    return f".{name}.{socket.gethostname()}-{os.getpid()}."


def _process_gone(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def remove_stale_staging(parent: str | Path, name_pattern: str) -> list[Path]:
    """Remove the staging folders (`staging_prefix(NAME)` + random + `.tmp`, NAME matching the regular
    expression `name_pattern`) in `parent` whose process on this host no longer runs: what a killed build
    left. Folders of running processes and of other hosts stay. Returns the folders removed."""
    pattern = re.compile(rf"\.(?:{name_pattern})\.(?P<host>.+)-(?P<pid>[0-9]+)\.[A-Za-z0-9_]+\.tmp")
    parent, host, removed = Path(parent), socket.gethostname(), []
    if not parent.is_dir():
        return removed
    for p in parent.iterdir():
        m = pattern.fullmatch(p.name)
        if m and m["host"] == host and p.is_dir() and not p.is_symlink() and _process_gone(int(m["pid"])):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def staging_dir(out: str | Path, force: bool, kind: str | None = None) -> Path:
    """Return a fresh temporary directory beside `out`; `commit_dir` later moves it onto `out`.

    With a `kind` (a command's output folder) `check_output_dir` refuses a non-empty `out` unless `force`, and
    with `force` any folder that is not this project's `kind` output. Without one (a folder inside the
    project's own output, e.g. a checkpoint) a non-empty `out` just needs `force`. Either way a failed build
    never leaves a half-written output behind."""
    out = Path(out)
    if kind is not None:
        check_output_dir(out, kind, force, staged=True)
    elif out.exists() and not out.is_dir():
        raise UserError(f"output path exists and is not a directory: {out}")
    elif out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"output directory already exists: {out} (use --force to overwrite)")
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(parent, re.escape(out.name))  # left by a killed run of the same command
        return Path(tempfile.mkdtemp(prefix=staging_prefix(out.name), suffix=".tmp", dir=parent))
    except OSError as e:
        raise UserError(f"cannot write output directory {out}: {e.strerror}") from None


def commit_dir(tmp: Path, out: str | Path, kind: str | None = None) -> None:
    """Move a finished staging directory onto `out`.

    Without a `kind`, `out` is replaced whole. With one, the marker is written first; a missing or empty `out`
    is replaced in one rename, otherwise (checked by `staging_dir`: the project's own `kind` output) the
    project's old entries are removed and the new ones moved in one by one, and the user's other files in
    `out` stay where they are."""
    out = Path(out)
    if kind is not None:
        mark_output_dir(tmp, kind)
        if out.is_dir() and any(out.iterdir()):
            mark_output_dir(out, kind)  # stays recognisable if interrupted half way
            clear_output_dir(out, kind, keep=(MARKER_FILE,))
            for p in sorted(tmp.iterdir()):
                os.replace(p, out / p.name)
            tmp.rmdir()
            return
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def user_cache_dir() -> Path:
    """The user's cache folder for derived data: $SPARSECIRCUITS_CACHE, else $XDG_CACHE_HOME/sparsecircuits,
    else ~/.cache/sparsecircuits (used where a run folder is read-only)."""
    if os.environ.get("SPARSECIRCUITS_CACHE"):
        return Path(os.environ["SPARSECIRCUITS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sparsecircuits"


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
