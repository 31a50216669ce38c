"""Read raw rows from one source, each with its location ("train.jsonl line 3").

jsonl and json are parsed here (so a broken line is reported by number, and a non-UTF-8
line too); parquet, arrow, saved datasets, dataset directories and hub ids go through
`datasets`. A row that cannot be read is yielded as a `BadRow` for the caller's
`on_bad_row` policy to raise or count.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pride.config import SourceSettings
from pride.errors import PrideError


@dataclass(frozen=True)
class BadRow:
    where: str
    problem: str


def read_source(src: SourceSettings) -> Iterator[tuple[str, dict | BadRow]]:
    """Yield (location, row) for every row of the source, or (location, BadRow)."""
    path = Path(src.path).expanduser()
    if path.exists():
        from pride.io import mark_inputs

        mark_inputs(path)
    if path.is_file():
        suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
        if suffix in (".jsonl", ".ndjson"):
            yield from _read_jsonl(path)
        elif suffix == ".json":
            yield from _read_json(path)
        elif suffix == ".csv":
            yield from _read_csv(path)
        elif suffix in (".parquet", ".arrow"):
            yield from _read_with_datasets(path, src, kind=suffix.lstrip("."))
        else:
            raise PrideError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .json, .parquet, .arrow or .csv)")
        return
    if path.is_dir():
        yield from _read_with_datasets(path, src, kind="dir")
        return
    check_local_source(src)
    yield from _read_with_datasets(None, src, kind="hub")


def check_local_source(src: SourceSettings, key: str = "data") -> None:
    """A source that names a local file (a path, or a name with a suffix) must exist; a hub id
    (`org/name`) is left to the loader."""
    if Path(src.path).expanduser().exists():
        return
    if src.path.startswith((".", "/", "~")) or src.path.count("/") > 1 or Path(src.path).suffix:
        raise PrideError(f"data file not found: {src.path}" + (f" ({key}.path)" if key != "data" else ""))


def _read_jsonl(path: Path) -> Iterator[tuple[str, dict | BadRow]]:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path} line {number}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield where, BadRow(where, f"not UTF-8 (byte {e.start})")
                continue
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                yield where, BadRow(where, f"bad JSON ({e.msg} at column {e.colno})")
                continue
            except RecursionError:
                yield where, BadRow(where, "JSON nested too deep")
                continue
            if not isinstance(row, dict):
                yield where, BadRow(where, f"expected a JSON object, got {type(row).__name__}")
                continue
            problem = unencodable(row, bool(_SURROGATE_ESCAPE.search(text)))
            yield where, (BadRow(where, problem) if problem else row)


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def unencodable(row, escaped: bool) -> str | None:
    """A lone surrogate escape (`"\\ud800"`) parses as JSON but is no Unicode text: no tokenizer can
    encode it. Paired escapes (a character outside the BMP) are fine. `escaped`: the JSON the row
    came from has a surrogate escape at all (`_SURROGATE_ESCAPE`); without one the check is free."""
    if not escaped:
        return None
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        return f"a lone surrogate {e.object[e.start:e.end]!r} in the text: not valid Unicode"
    return None


def _read_json(path: Path) -> Iterator[tuple[str, dict | BadRow]]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise PrideError(f"{path}: not UTF-8 (byte {e.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        # Many ".json" files are really JSON lines.
        if text.lstrip().startswith("{") and "\n" in text.strip():
            yield from _read_jsonl(path)
            return
        raise PrideError(f"{path} line {e.lineno}: bad JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise PrideError(f"{path}: JSON nested too deep") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))
    if not isinstance(data, list):
        raise PrideError(f"{path}: expected a JSON array of rows, got {type(data).__name__}")
    escaped = bool(_SURROGATE_ESCAPE.search(text))  # searched once, not once per row
    for i, row in enumerate(data):
        where = f"{path} row {i}"
        if not isinstance(row, dict):
            yield where, BadRow(where, f"expected a JSON object, got {type(row).__name__}")
        else:
            problem = unencodable(row, escaped)
            yield where, (BadRow(where, problem) if problem else row)


def _read_csv(path: Path) -> Iterator[tuple[str, dict | BadRow]]:
    """CSV with a header row; a row with too many or too few fields is reported by its line."""
    import csv

    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # Excel writes a BOM
            reader = csv.DictReader(f, strict=True)
            if not reader.fieldnames:
                raise PrideError(f"{path}: empty CSV (no header row)")
            for row in reader:
                where = f"{path} line {reader.line_num}"
                if None in row:
                    yield where, BadRow(where, f"{len(reader.fieldnames) + len(row[None])} fields, the header has "
                                               f"{len(reader.fieldnames)}")
                elif any(v is None for v in row.values()):
                    yield where, BadRow(where, f"{sum(v is not None for v in row.values())} fields, the header has "
                                               f"{len(reader.fieldnames)}")
                else:
                    yield where, row
    except UnicodeDecodeError as e:
        raise PrideError(f"{path}: not UTF-8 (byte {e.start})") from None
    except csv.Error as e:
        raise PrideError(f"{path} line {reader.line_num + 1}: malformed CSV ({e})") from None  # where the row starts


def _read_with_datasets(path: Path | None, src: SourceSettings, kind: str) -> Iterator[tuple[str, dict]]:
    import datasets

    name = str(path) if path is not None else src.path
    weights = kind == "dir" and (any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin")))
    if weights and (path / "config.json").is_file():
        raise PrideError(f"{name}: a model directory (config.json and weights), not data; data.sources[].path names "
                         "a data file (.jsonl, .json, .parquet, .arrow, .csv) or a dataset directory")
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # a file it cannot parse: pride's one line says so
    try:
        if kind in ("parquet", "arrow", "csv"):
            ds = datasets.load_dataset(kind, data_files=str(path), split="train")
        elif kind == "dir" and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if src.split not in ds:
                    raise PrideError(f"{name}: no split {src.split!r} (has: {', '.join(ds)})")
                ds = ds[src.split]
        else:
            from pride.hub import hub_reachable

            if kind == "hub" and not hub_reachable():
                try:  # the local datasets cache, without a minute of retries
                    ds = datasets.load_dataset(name, src.subset, split=src.split, download_mode="reuse_cache_if_exists")
                except Exception:  # noqa: BLE001 - any failure here means: not cached
                    raise PrideError(f"data.sources[].path={name}: not a local path, not in the datasets cache, and "
                                     "the hub cannot be reached (offline or HF_HUB_OFFLINE=1): download it where "
                                     "there is a connection and point the path at the file or directory") from None
            else:
                ds = datasets.load_dataset(name, src.subset, split=src.split)
    except PrideError:
        raise
    except (FileNotFoundError, ValueError, ConnectionError, OSError, datasets.exceptions.DatasetGenerationError) as e:
        cause = e.__cause__ if isinstance(e, datasets.exceptions.DatasetGenerationError) and e.__cause__ else e
        raise PrideError(f"{name}: could not load ({type(cause).__name__}: "
                         f"{str(cause).splitlines()[0] if str(cause) else ''})") from None
    finally:
        datasets.logging.set_verbosity(verbosity)
    label = f"{name}[{src.split}]" if kind in ("dir", "hub") else name
    for i, row in enumerate(ds):
        yield f"{label} row {i}", row
