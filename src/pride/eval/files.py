"""Reading benchmark files: JSON lines with errors that name the file and line."""

from __future__ import annotations

from pathlib import Path

from pride.errors import PrideError
from pride.io import read_jsonl, read_jsonl_numbered

__all__ = ["read_jsonl", "read_objects", "check_key"]


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


def check_key(where: str, row: dict, field: str, kinds: tuple = (str, int), optional: bool = False) -> None:
    """A field that identifies (a question id, a model name): a string or an integer as `kinds`
    allows, never a list, object or boolean (which would be counted wrong or not at all)."""
    value = row.get(field)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, kinds):
        names = " or ".join({str: "a string", int: "an integer"}[k] for k in kinds)
        raise PrideError(f"{where}: field '{field}': expected {names}, got {value!r}")
