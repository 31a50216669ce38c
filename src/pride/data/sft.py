"""SFT data: conversations -> token samples (targets aligned) -> rows (packed or not)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pride.chat import ChatFormat
from pride.data.packing import Sample, pack_bfd, shift_targets, split_rows
from pride.data.rows import Conversation, RowError
from pride.errors import PrideError


@dataclass
class SftData:
    rows: list[list[Sample]]
    stats: dict = field(default_factory=dict)


def tokenize_conversations(convs: list[Conversation], fmt: ChatFormat, train_on: str, max_length: int,
                           truncation: str, on_bad_row: str = "error") -> tuple[list[Sample], dict]:
    """Encode each conversation; over-long ones are truncated (keep the start) or dropped.
    One the chat template cannot render stops the run naming its row, or is counted (skip)."""
    samples, truncated, dropped_long, dropped_empty, unrendered = [], 0, 0, 0, 0
    for i, conv in enumerate(convs):
        try:
            enc = fmt.encode(conv.messages, train_on)
        except RowError as e:
            if on_bad_row == "error":
                raise PrideError(f"{conv.where}: {e}") from None
            unrendered += 1
            continue
        ids, mask = enc.ids, enc.mask
        if len(ids) > max_length:
            if truncation == "drop":
                dropped_long += 1
                continue
            ids, mask = ids[:max_length], mask[:max_length]
            truncated += 1
        labels = shift_targets(ids, mask)
        if all(x == -100 for x in labels):
            dropped_empty += 1
            continue
        samples.append(Sample(ids, labels, example=i))
    stats = {"samples": len(samples), "truncated": truncated, "dropped_too_long": dropped_long,
             "dropped_no_trained_tokens": dropped_empty, "skipped_unrenderable": unrendered}
    return samples, stats


def build_rows(samples: list[Sample], max_length: int, packing: bool | str) -> tuple[list[list[Sample]], dict]:
    """Pack with best-fit-decreasing (packing=True), cut the stream of samples into full rows as
    LionAlignment does (packing="split", `packing.split_rows`), or one sample per row."""
    dropped: dict = {}
    if packing == "split":
        rows, dropped = split_rows(samples, max_length)
        if samples and not rows:
            raise PrideError(f"train.packing=split left no row: {sum(len(s) for s in samples)} tokens in "
                             f"{len(samples)} samples, and a row is train.max_length={max_length} tokens, kept only "
                             f"when at most 90% of it is untrained ({dropped['split_dropped_untrained_rows']} were "
                             "not); lower train.max_length, or use train.packing=true")
    elif packing:
        groups = pack_bfd([len(s) for s in samples], max_length)
        rows = [[samples[i] for i in g] for g in groups]
    else:
        rows = [[s] for s in samples]
    kept = [s for r in rows for s in r]
    tokens = sum(len(s) for s in kept)
    stats = {"rows": len(rows), "tokens": tokens, "trained_tokens": sum(s.n_targets for s in kept), **dropped}
    if packing and rows:
        stats["packing_efficiency"] = round(tokens / (len(rows) * max_length), 4)
    return rows, stats
