"""The files a published toolkit carries agree with pyproject.toml, and the docs map links to files that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def field(file: str, pattern: str) -> str:
    """The first group of `pattern` in a top-level line of `file` (tomllib is 3.11+, YAML is not a dependency)."""
    match = re.search(pattern, (ROOT / file).read_text(encoding="utf-8"), re.M)
    assert match, (file, pattern)
    return match.group(1)


def test_license_and_citation_match_pyproject():
    version = field("pyproject.toml", r'^version = "([^"]+)"$')
    assert field("pyproject.toml", r'^license = \{ text = "([^"]+)" \}$') == "MIT"
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License\n")
    assert field("CITATION.cff", r"^license: (.+)$") == "MIT"
    assert field("CITATION.cff", r"^version: (.+)$") == version
    cff = (ROOT / "CITATION.cff").read_text(encoding="utf-8")
    assert "Weight-sparse transformers have interpretable circuits" in cff and "2511.13653" in cff


def test_docs_index_links_exist_and_every_doc_is_mapped():
    index = ROOT / "docs" / "index.md"
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", index.read_text(encoding="utf-8"))
    missing = [t for t in targets if not (index.parent / t).exists()]
    assert targets and not missing, missing
    mapped = {(index.parent / t).resolve() for t in targets}
    unmapped = [
        p.name for p in sorted((ROOT / "docs").glob("*.md")) if p != index and p.resolve() not in mapped
    ]
    assert not unmapped, f"docs/index.md does not link {unmapped}"
    assert "docs/index.md" in (ROOT / "README.md").read_text(encoding="utf-8")
