"""`pride data inspect`: show rendered rows with the trained tokens highlighted, plus counts.

Like axolotl's `preprocess --debug`: the quickest way to see that a template and a mask
do what you think before paying for a run. The rows go through the same tokenization as
training (truncation included), and `--export FILE.jsonl` writes exactly those ids:
SFT `{"input_ids", "labels"}` (labels -100 where not trained, unshifted as in transformers),
preference `{"prompt_ids", "chosen_ids", "rejected_ids"}` (completions without the prompt), a
reward model's pairs (`--stage rm`, or a config with a `reward` section) `{"chosen_ids",
"rejected_ids"}` (each whole conversation, cut as `reward.max_length` and `truncation_side` say;
its last token, where the score is read, is the one marked), unpaired feedback (`--stage kto`, or a
config with a `kto` section) `{"prompt_ids", "completion_ids", "label"}`, shown with each row's label
and counted per label.
With `train.packing: split` each line is one training row cut from the stream of samples, with
`segment_lengths` (attention stays within a segment; a cut sample's target across the cut is -100).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from pride.config import Config
from pride.data import Conversation, PreferencePair, load_rows
from pride.data.packing import IGNORE
from pride.data.preference import tokenize_pairs
from pride.data.sft import tokenize_conversations
from pride.train.sft import prepare_sft_rows
from pride.io import write_jsonl
from pride.models import load_chat


TRAINED, UNTRAINED, SPECIAL = "bold black on green", "dim", "bold magenta"
OPEN, CLOSE = "⟦", "⟧"  # around trained spans when there is no colour (a pipe, a file, --color never)


def render_tokens(tokenizer, ids: list[int], mask: list[bool], color: bool = True) -> Text:
    """The tokens as text, token boundaries exact: trained ones highlighted (without colour: inside
    ⟦ ⟧), special tokens marked, each newline shown as ⏎ and kept as a line break (the data's
    own lines, never a wrap of the terminal's)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    text = Text()
    previous = False
    for tid, trained in zip(ids, mask):
        if not color and trained != previous:
            text.append(OPEN if trained else CLOSE)
        previous = trained
        piece = tokenizer.decode([tid]).replace("\n", "⏎\n")
        style = TRAINED if trained else SPECIAL if tid in special else UNTRAINED
        text.append(piece, style=style if color else None)
    if not color and previous:
        text.append(CLOSE)
    return text


def training_view(cfg: Config, fmt, rows: list, stage: str | None = None) -> tuple[str, list[dict]]:
    """Each kept row as training sees it (the `--export` lines). `stage` rm: a reward model's pairs,
    each conversation whole and cut as `reward.max_length` and `truncation_side` say."""
    convs = [r for r in rows if isinstance(r, Conversation)]
    pairs = [r for r in rows if isinstance(r, PreferencePair)]
    if stage == "kto":
        from pride.train.unpaired import tokenize_unpaired

        p = cfg.preference
        data = tokenize_unpaired(rows, fmt, p.max_length, p.max_prompt_length, on_bad_row=cfg.data.on_bad_row,
                                 header_in_completion=p.header_in_completion)
        return "kto", [{"prompt_ids": pr, "completion_ids": c, "label": rows[i].label}
                       for (pr, c), i in zip(data.ids, data.kept)]
    if pairs and stage == "rm":
        from pride.train.reward import tokenize_reward_pairs

        samples, _ = tokenize_reward_pairs(pairs, fmt, cfg.reward)
        return "rm", [{"chosen_ids": c.input_ids, "rejected_ids": r.input_ids} for c, r in samples]
    if pairs:
        s = cfg.preference
        data = tokenize_pairs(pairs, fmt, s.max_length, s.max_prompt_length, on_bad_row=cfg.data.on_bad_row,
                              keep_identical=s.keep_identical, header_in_completion=s.header_in_completion)
        return "preference", [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in data.ids]
    if cfg.train.packing == "split":  # training sees rows cut from the stream, not samples
        rows, _ = prepare_sft_rows(cfg, fmt, convs)
        return "sft", [{"input_ids": [t for s in row for t in s.input_ids],
                        "labels": [t for s in row for t in [IGNORE] + s.labels[:-1]],
                        "segment_lengths": [len(s) for s in row]} for row in rows]
    samples, _ = tokenize_conversations(convs, fmt, cfg.data.train_on, cfg.train.max_length, cfg.train.truncation,
                                        cfg.data.on_bad_row)
    return "sft", [{"input_ids": s.input_ids, "labels": [IGNORE] + s.labels[:-1]} for s in samples]


def inspect(cfg: Config, n: int = 3, console: Console | None = None, export: str | None = None,
            color: str = "auto", stage: str | None = None) -> dict:
    """`color`: auto (colour on a terminal, ⟦ ⟧ markers elsewhere), always, or never. `stage`: which
    stage's rows (sft, dpo, rm); default: rm when the config has a `reward` section, else by the rows."""
    console = console or Console(soft_wrap=True, force_terminal=True if color == "always" else None,
                                 no_color=color == "never")
    colored = color == "always" or (color == "auto" and console.is_terminal)
    tokenizer, fmt = load_chat(cfg.model)
    if stage is None and cfg.reward.model_fields_set:  # a reward model's config (pride rm): its own cut
        stage = "rm"
    if stage is None and cfg.kto.model_fields_set:  # unpaired feedback's config (pride kto)
        stage = "kto"
    rows = load_rows(cfg.data, want="unpaired" if stage == "kto" else "any", seed=cfg.seed)
    kind, lines = training_view(cfg, fmt, rows.train, stage)
    console.print(f"[bold]template[/]: {fmt.name}   [bold]train_on[/]: {cfg.data.train_on}")
    sequences = [_shown(kind, line) for line in lines]
    for i, seqs in enumerate(sequences[:n]):
        console.rule(f"row {i}")
        for label, ids, mask in seqs:
            if label:
                console.print(f"[bold]{label}[/]")
            console.print(render_tokens(tokenizer, ids, mask, colored), soft_wrap=True)
    if not colored:
        console.print(f"(trained tokens between {OPEN} {CLOSE}; ⏎ is a newline in the text)")
    flat = [s for seqs in sequences for s in seqs]
    lengths = [len(ids) for _, ids, _ in flat]
    trained = [sum(mask) for _, _, mask in flat]
    limit = {"preference": cfg.preference.max_length, "kto": cfg.preference.max_length,
             "rm": cfg.reward.max_length}.get(kind, cfg.train.max_length)
    counts = {
        "train_rows": len(rows.train),
        "kept_rows": len(lines),
        "eval_rows": len(rows.eval),
        "skipped_bad_rows": rows.stats.get("skipped_bad_rows", 0),
        "duplicates_removed": rows.stats.get("duplicates_removed", 0),
        "sequences": len(lengths),
        "tokens": sum(lengths),
        "trained_tokens": sum(trained),
        "tokens_per_sequence_mean": round(statistics.fmean(lengths), 1) if lengths else 0,
        "tokens_per_sequence_max": max(lengths, default=0),
        "at_max_length": sum(1 for n_ in lengths if n_ >= limit),
    }
    if kind == "kto":
        counts["desirable"] = sum(line["label"] for line in lines)
        counts["undesirable"] = len(lines) - counts["desirable"]
    table = Table(title="counts", show_header=False)
    for k, v in counts.items():
        table.add_row(k, str(v))
    console.print(table)
    for example in rows.stats.get("bad_row_examples", []):
        console.print(f"[yellow]skipped[/] {example}")
    if export:
        path = write_jsonl(Path(export), lines)
        console.print(f"exported {len(lines)} rows to {path}")
    return counts


def _shown(kind: str, line: dict) -> list[tuple[str, list[int], list[bool]]]:
    if kind == "sft":
        return [("", line["input_ids"], [x != IGNORE for x in line["labels"]])]
    if kind == "kto":
        p = line["prompt_ids"]
        label = "desirable (label true)" if line["label"] else "undesirable (label false)"
        return [(label, p + line["completion_ids"], [False] * len(p) + [True] * len(line["completion_ids"]))]
    if kind == "rm":  # a reward model scores the whole conversation at its last token
        return [(label, line[key], [False] * (len(line[key]) - 1) + [True])
                for label, key in (("chosen", "chosen_ids"), ("rejected", "rejected_ids"))]
    p = line["prompt_ids"]
    return [(label, p + line[key], [False] * len(p) + [True] * len(line[key]))
            for label, key in (("chosen", "chosen_ids"), ("rejected", "rejected_ids"))]
