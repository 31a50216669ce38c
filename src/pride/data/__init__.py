"""Data: sources -> validated rows -> (per stage) token rows.

`load_rows` reads every configured source, applies column maps, validates and normalises
each row (bad rows raise or are counted, per `on_bad_row`), takes each source's fraction,
optionally removes exact duplicates, shuffles by seed and holds out an eval split.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Literal

from pride.config import DataSettings, SourceSettings
from pride.data.rows import (Conversation, LabeledCompletion, PreferencePair, RowError, detect_kind, map_columns,
                             normalize)
from pride.data.sources import BadRow, read_source
from pride.errors import PrideError

Want = Literal["conversation", "preference", "unpaired", "any"]
UNPAIR_CHUNK = 1000  # TRL's unpair_preference_dataset maps in batches of datasets' default size


@dataclass
class Rows:
    train: list
    eval: list
    stats: dict = field(default_factory=dict)


def read_rows(src: SourceSettings, want: Want, on_bad_row: str, stats: dict) -> list:
    """All usable rows of one source, normalised. Raises on the first bad row unless skipping."""
    out: list = []
    layout = None
    for where, raw in read_source(src):
        try:
            if isinstance(raw, BadRow):
                raise RowError("<row>", raw.problem)
            row = map_columns(raw, src.columns)
            if layout is None:
                layout = detect_kind(row)
                _check_layout(layout, want, src)
                if want == "unpaired" and layout == "prompt_completion":
                    layout = "unpaired"
            item = normalize(row, layout)
        except RowError as e:
            problem = str(e).replace("field '<row>': ", "")
            if on_bad_row == "error":
                raise PrideError(f"{where}: {problem}") from None
            stats["skipped_bad_rows"] = stats.get("skipped_bad_rows", 0) + 1
            examples = stats.setdefault("bad_row_examples", [])
            if len(examples) < 5:
                examples.append(f"{where}: {problem}")
            continue
        item.where = where
        out.append(item)
    if not out:
        raise PrideError(f"{src.path}: no usable rows")
    return out


def _check_layout(layout: str, want: Want, src: SourceSettings) -> None:
    if want == "conversation" and layout == "prompt":
        raise PrideError(f"{src.path}: has prompt-only rows; this stage needs conversations with assistant turns")
    if want == "conversation" and layout == "preference":
        raise PrideError(f"{src.path}: has preference rows (chosen/rejected); this stage needs conversations "
                         "('messages' or 'prompt'+'completion')")
    if want == "unpaired" and layout not in ("preference", "prompt_completion"):
        raise PrideError(f"{src.path}: has {layout} rows; this stage needs unpaired feedback ('prompt', 'completion', "
                         "'label') or preference pairs ('prompt', 'chosen', 'rejected'), which it splits")
    if want == "preference" and layout != "preference":
        raise PrideError(f"{src.path}: has {layout} rows; this stage needs preference rows "
                         "('prompt', 'chosen', 'rejected')")


def take_fraction(rows: list, fraction: float, rng: random.Random) -> list:
    if fraction >= 1.0:
        return rows
    n = max(1, math.floor(len(rows) * fraction))
    idx = sorted(rng.sample(range(len(rows)), n))
    return [rows[i] for i in idx]


def dedup(rows: list) -> tuple[list, int]:
    seen, out = set(), []
    for r in rows:
        k = r.key()
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out, len(rows) - len(out)


def load_rows(data: DataSettings | None, want: Want, seed: int, in_memory: dict[str, list] | None = None) -> Rows:
    """`in_memory`: rows already validated for a source path (an online round's pairs, also
    written to that file), used instead of reading it."""
    if data is None:
        raise PrideError("missing required key 'data' (this stage reads data.sources)")
    in_memory = in_memory or {}
    stats: dict = {"sources": []}
    rng = random.Random(seed)

    def gather(sources: list[SourceSettings]) -> list:
        rows: list = []
        for src in sources:
            got = in_memory[src.path] if src.path in in_memory else read_rows(src, want, data.on_bad_row, stats)
            taken = take_fraction(got, src.fraction, rng)
            stats["sources"].append({"path": src.path, "rows": len(got), "used": len(taken)})
            rows += taken
        return rows

    train = gather(data.sources)
    if data.dedup:
        train, removed = dedup(train)
        stats["duplicates_removed"] = removed
    if data.shuffle:
        rng.shuffle(train)
    if data.max_rows is not None:
        train = train[: data.max_rows]
    evals: list = []
    if data.eval_sources:
        evals = gather(data.eval_sources)
    elif data.eval_fraction > 0:
        n_eval = max(1, round(len(train) * data.eval_fraction))
        if n_eval >= len(train):
            raise PrideError(f"data.eval_fraction={data.eval_fraction} leaves no training rows ({len(train)} rows)")
        evals, train = train[:n_eval], train[n_eval:]
    if want == "unpaired":
        train, evals = unpair(train), unpair(evals)
    stats["train_rows"], stats["eval_rows"] = len(train), len(evals)
    return Rows(train, evals, stats)


def unpair(rows: list) -> list[LabeledCompletion]:
    """Preference pairs as unpaired feedback, as TRL's `unpair_preference_dataset` splits them: per
    chunk of 1000 rows, every chosen answer (desirable) in order, then every rejected one; a pair's
    two halves stay on the side of the eval split they were drawn to. Unpaired rows keep their place
    among the chosen ones."""
    out: list[LabeledCompletion] = []
    for start in range(0, len(rows), UNPAIR_CHUNK):
        chunk = rows[start:start + UNPAIR_CHUNK]
        pairs = [r for r in chunk if isinstance(r, PreferencePair)]
        out += [LabeledCompletion(r.prompt, r.chosen, True, f"{r.where} (chosen)") if isinstance(r, PreferencePair)
                else r for r in chunk]
        out += [LabeledCompletion(r.prompt, r.rejected, False, f"{r.where} (rejected)") for r in pairs]
    return out


__all__ = ["Conversation", "LabeledCompletion", "PreferencePair", "Rows", "dedup", "load_rows", "read_rows", "take_fraction",
           "unpair"]
