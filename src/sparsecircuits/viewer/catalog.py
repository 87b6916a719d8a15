"""What the viewer may show: runs and circuit files found under the paths given on the command line.

Every run and circuit gets an opaque id (`ROOT:RELATIVE/PATH`). The server only ever looks entries up by
id in this catalog, so a request cannot name a file on its own: ids with `..`, absolute paths or unknown
ids are refused. Discovery never follows a symlink out of its root, and skips hidden folders,
`checkpoints/` and `cache/`.

A circuit file given directly on the command line also opens the run it names (`model.path`, or the
nearest enclosing run directory), so `view runs/demo/x.circuit.json` can still compute node details.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from sparsecircuits.errors import UserError

CIRCUIT_SUFFIX = ".circuit.json"
RUN_MARKERS = ("config.json", "model.safetensors")
SKIP_DIRS = frozenset({"checkpoints", "cache", "__pycache__", "node_modules"})
MAX_DEPTH = 8
MAX_FILES = 50_000


class Forbidden(Exception):
    """A request for something outside the given paths (HTTP 403)."""


class NotFound(Exception):
    """A well-formed request for something the catalog does not hold (HTTP 404)."""


@dataclass
class Entry:
    id: str
    kind: str  # "run" | "circuit"
    path: Path  # resolved
    summary: dict[str, Any] = field(default_factory=dict)


def is_run_dir(path: Path) -> bool:
    return all((path / name).is_file() for name in RUN_MARKERS)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def check_id(entry_id: str) -> None:
    """Refuse ids that try to climb out of a root: `..` segments, absolute paths, backslashes, NUL."""
    if not isinstance(entry_id, str) or not entry_id or "\x00" in entry_id or "\\" in entry_id:
        raise Forbidden("malformed id")
    _, _, rel = entry_id.partition(":")
    if rel.startswith("/") or ".." in PurePosixPath(rel).parts:
        raise Forbidden("path outside the viewer's roots")


class Catalog:
    """Runs and circuits under a fixed list of root paths (directories or circuit files)."""

    def __init__(self, paths: list[str | Path]):
        if not paths:
            raise UserError("no paths to view")
        self.roots: list[Path] = []
        for p in paths:
            path = Path(p)
            if not path.exists():
                raise UserError(f"path not found: {p}")
            if path.is_file() and not path.name.endswith(CIRCUIT_SUFFIX):
                raise UserError(f"not a run directory, circuit file or directory: {p}")
            self.roots.append(path.resolve())
        self._lock = threading.Lock()  # guards the two dicts below
        self._scan_lock = threading.Lock()  # one rescan at a time
        self.runs: dict[str, Entry] = {}
        self.circuits: dict[str, Entry] = {}
        self._summaries: dict[Path, tuple[tuple[float, int], dict[str, Any]]] = {}
        self.scan()

    # ---- discovery ------------------------------------------------------------------------------

    def scan(self) -> None:
        """Rediscover runs and circuits (cheap: called on every listing request)."""
        with self._scan_lock:
            self._scan()

    def _scan(self) -> None:
        runs: dict[str, Entry] = {}
        circuits: dict[str, Entry] = {}
        for i, root in enumerate(self.roots):
            for kind, path in _discover(root):
                entry = Entry(self._make_id(i, root, path), kind, path)
                (runs if kind == "run" else circuits)[entry.id] = entry
        for entry in circuits.values():
            entry.summary = self._circuit_summary(entry.path)
        for i, root in enumerate(self.roots):
            if root.is_file():
                linked = _run_named_by(root, circuits[self._make_id(i, root, root)].summary)
                if linked is not None and not any(e.path == linked for e in runs.values()):
                    entry = Entry(f"{i}:@run", "run", linked)
                    runs[entry.id] = entry
        for entry in runs.values():
            entry.summary = _run_summary(entry.path)
        with self._lock:
            self.runs, self.circuits = runs, circuits

    def _display_name(self, entry: Entry) -> str:
        """`ROOTNAME/relative/path` for entries found under a root; the path itself for a linked run."""
        index, _, rel = entry.id.partition(":")
        root = self.roots[int(index)]
        if rel == "@run" or root.is_file():
            return _display_path(entry.path)
        return f"{root.name}/{rel}" if rel else root.name

    def _make_id(self, i: int, root: Path, path: Path) -> str:
        base = root.parent if root.is_file() else root
        rel = path.relative_to(base).as_posix()
        return f"{i}:{'' if rel == '.' else rel}"

    def _circuit_summary(self, path: Path) -> dict[str, Any]:
        """Task, counts and loss of a circuit file (cached by mtime and size); {"error"} if unreadable."""
        try:
            stat = path.stat()
        except OSError:
            return {"error": "circuit file vanished"}
        key = (stat.st_mtime, stat.st_size)
        cached = self._summaries.get(path)
        if cached and cached[0] == key:
            return cached[1]
        summary = circuit_summary(path)
        self._summaries[path] = (key, summary)
        return summary

    # ---- lookup ---------------------------------------------------------------------------------

    def run(self, run_id: str) -> Entry:
        check_id(run_id)
        with self._lock:
            entry = self.runs.get(run_id)
        if entry is None:
            raise NotFound(f"no run {run_id!r}")
        return entry

    def circuit(self, circuit_id: str) -> Entry:
        check_id(circuit_id)
        with self._lock:
            entry = self.circuits.get(circuit_id)
        if entry is None:
            raise NotFound(f"no circuit {circuit_id!r}")
        return entry

    def run_of_circuit(self, circuit_id: str) -> Entry | None:
        """The catalog run a circuit was pruned from (by model.path, else an enclosing run directory)."""
        entry = self.circuit(circuit_id)
        with self._lock:
            by_path = {e.path: e for e in self.runs.values()}
        for candidate in _run_candidates(entry.path, entry.summary.get("model_path")):
            if candidate in by_path:
                return by_path[candidate]
        return None

    def listing(self) -> dict[str, Any]:
        """JSON for the sidebar: roots, runs (with their circuits) and circuits without a run."""
        self.scan()
        with self._lock:
            runs, circuits = dict(self.runs), dict(self.circuits)
        owner = {cid: (r.id if (r := self.run_of_circuit(cid)) else None) for cid in circuits}
        return {
            "roots": [str(r) for r in self.roots],
            "runs": [
                {
                    "id": r.id,
                    "name": self._display_name(r),
                    **r.summary,
                    "circuits": [_circuit_item(c) for c in circuits.values() if owner[c.id] == r.id],
                }
                for r in runs.values()
            ],
            "circuits": [_circuit_item(c) for c in circuits.values() if owner[c.id] is None],
        }


def _circuit_item(entry: Entry) -> dict[str, Any]:
    return {"id": entry.id, "name": entry.path.name, **entry.summary}


def _display_path(path: Path) -> str:
    try:
        return path.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def _discover(root: Path) -> list[tuple[str, Path]]:
    """(kind, resolved path) of every run directory and circuit file under root, without leaving it."""
    if root.is_file():
        return [("circuit", root)]
    found: list[tuple[str, Path]] = []
    seen = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS and depth < MAX_DEPTH
        )
        if is_run_dir(here) and _inside(here.resolve(), root):
            found.append(("run", here.resolve()))
        for name in sorted(filenames):
            seen += 1
            if seen > MAX_FILES:
                return found
            if name.endswith(CIRCUIT_SUFFIX) and not name.startswith("."):
                path = (here / name).resolve()  # a symlink may point anywhere: keep it only if it stays in
                if _inside(path, root) and path.is_file():
                    found.append(("circuit", path))
    return found


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _run_named_by(circuit_path: Path, summary: dict[str, Any]) -> Path | None:
    """The run directory a circuit file names (model.path), else its nearest enclosing run."""
    for candidate in _run_candidates(circuit_path, summary.get("model_path")):
        if is_run_dir(candidate):
            return candidate
    return None


def _run_candidates(circuit_path: Path, named: Any) -> list[Path]:
    """Resolved directories that may be a circuit's run: model.path (as given, from the cwd and from
    the circuit's folder), then the circuit's enclosing directories."""
    candidates: list[Path] = []
    if isinstance(named, str) and named:
        for base in (Path.cwd(), circuit_path.parent):
            candidates.append((base / named).resolve())
    candidates.extend(circuit_path.parents)
    return candidates


def circuit_summary(path: Path) -> dict[str, Any]:
    """A short description of a circuit file for listings."""
    data = _read_json(path)
    if not isinstance(data, dict) or not str(data.get("schema", "")).startswith("sparsecircuits.circuit/"):
        return {"error": "not a readable circuit file"}
    counts = data.get("counts") if isinstance(data.get("counts"), dict) else {}
    achieved = data.get("achieved") if isinstance(data.get("achieved"), dict) else {}
    task = data.get("task") if isinstance(data.get("task"), dict) else {}
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    return {
        "task": task.get("name"),
        "nodes": counts.get("nodes", len(data.get("nodes") or [])),
        "edges": counts.get("edges", len(data.get("edges") or [])),
        "loss": achieved.get("loss"),
        "target_loss": data.get("target_loss"),
        "model_path": model.get("path"),
    }


def _run_summary(path: Path) -> dict[str, Any]:
    config = _read_json(path / "config.json")
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict):
        return {"error": "config.json has no model section"}
    keys = ("n_layer", "d_model", "n_head", "d_head", "d_mlp", "n_ctx", "vocab_size")
    return {"model": {k: model[k] for k in keys if k in model}, "preset": config.get("preset")}
