"""`pride data inspect`: show rendered rows with the trained tokens highlighted, plus counts.

Like axolotl's `preprocess --debug`: the quickest way to see that a template and a mask
do what you think before paying for a run.
"""

from __future__ import annotations

import statistics

from rich.console import Console
from rich.table import Table
from rich.text import Text

from pride.chat import ChatFormat
from pride.config import Config
from pride.data import Conversation, PreferencePair, load_rows
from pride.models import load_chat


def render_tokens(tokenizer, ids: list[int], mask: list[bool]) -> Text:
    """Untrained tokens dim, trained tokens highlighted; token boundaries kept exact."""
    text = Text()
    for tid, trained in zip(ids, mask):
        piece = tokenizer.decode([tid])
        text.append(piece, style="bold black on green" if trained else "dim")
    return text


def inspect(cfg: Config, n: int = 3, console: Console | None = None) -> dict:
    console = console or Console()
    tokenizer, fmt = load_chat(cfg.model)
    rows = load_rows(cfg.data, want="any", seed=cfg.seed)
    console.print(f"[bold]template[/]: {fmt.name}   [bold]train_on[/]: {cfg.data.train_on}")
    for i, row in enumerate(rows.train[:n]):
        console.rule(f"row {i}: {row.where}")
        for label, ids, mask in _encode(fmt, row, cfg.data.train_on):
            if label:
                console.print(f"[bold]{label}[/]")
            console.print(render_tokens(tokenizer, ids, mask))
    lengths, trained = [], []
    for row in rows.train:
        for _, ids, mask in _encode(fmt, row, cfg.data.train_on):
            lengths.append(len(ids))
            trained.append(sum(mask))
    counts = {
        "train_rows": len(rows.train),
        "eval_rows": len(rows.eval),
        "skipped_bad_rows": rows.stats.get("skipped_bad_rows", 0),
        "duplicates_removed": rows.stats.get("duplicates_removed", 0),
        "sequences": len(lengths),
        "tokens": sum(lengths),
        "trained_tokens": sum(trained),
        "tokens_per_sequence_mean": round(statistics.fmean(lengths), 1) if lengths else 0,
        "tokens_per_sequence_max": max(lengths, default=0),
        "over_max_length": sum(1 for n_ in lengths if n_ > cfg.train.max_length),
        "no_trained_tokens": sum(1 for t in trained if t == 0),
    }
    table = Table(title="counts", show_header=False)
    for k, v in counts.items():
        table.add_row(k, str(v))
    console.print(table)
    for example in rows.stats.get("bad_row_examples", []):
        console.print(f"[yellow]skipped[/] {example}")
    return counts


def _encode(fmt: ChatFormat, row, train_on):
    if isinstance(row, Conversation):
        enc = fmt.encode(row.messages, train_on)
        return [("", enc.ids, enc.mask)]
    assert isinstance(row, PreferencePair)
    prompt = fmt.encode_prompt(row.prompt)
    out = []
    for label, completion in (("chosen", row.chosen), ("rejected", row.rejected)):
        comp = fmt.encode_completion(row.prompt, completion)
        out.append((label, prompt + comp, [False] * len(prompt) + [True] * len(comp)))
    return out
