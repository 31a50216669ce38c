"""Reading benchmark files: JSON lines with errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path

from pride.errors import PrideError


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise PrideError(f"{path} line {n}: bad JSON ({e.msg})") from None
    return rows
