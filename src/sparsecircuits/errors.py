"""The one exception type for user mistakes: the CLI prints it as a single line and exits non-zero."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


class UserError(Exception):
    """Bad input from the user (a path, a name, a value). Never raised for a bug in our own code."""


def reject_unknown_keys(cls: type, d: Mapping[str, Any], what: str) -> None:
    """UserError naming the keys of `d` (sorted) that are not fields of the dataclass `cls`."""
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise UserError(f"{what}: unknown key(s) {', '.join(unknown)}")
