"""Reading benchmark files: JSON lines with errors that name the file and line."""

from __future__ import annotations

from pathlib import Path

from pride.errors import PrideError
from pride.io import read_jsonl, read_jsonl_numbered

__all__ = ["read_jsonl", "read_objects"]


def read_objects(paths: list[Path], what: str) -> list[tuple[str, dict]]:
    """("file line N", object) for every line of every file; an empty set is an error."""
    out = []
    for p in paths:
        for n, row in read_jsonl_numbered(Path(p)):
            if not isinstance(row, dict):
                raise PrideError(f"{p} line {n}: expected a JSON object ({what}), got {type(row).__name__}")
            out.append((f"{p} line {n}", row))
    if not out:
        raise PrideError(f"{', '.join(map(str, paths))}: no {what}")
    return out
