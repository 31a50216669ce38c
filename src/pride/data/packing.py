"""Token samples -> rows -> micro-batches, padding-free.

A `Sample` is one tokenized sequence with its next-token targets already aligned
(`labels[t]` is the token that position t must predict, or -100), so no label can ever
cross into the next sample of a packed row. Rows hold one sample (padding-only batching)
or several (best-fit-decreasing packing); `collate` lays rows out with `position_ids`
restarting at every sample and no attention mask, which makes transformers build a
block-causal mask (sdpa/eager) or use flash-attention's varlen path. Padding at the end of
a row is one more segment with its own positions, so it never mixes with real tokens.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch

IGNORE = -100


@dataclass
class Sample:
    input_ids: list[int]
    labels: list[int]  # aligned targets: labels[t] is predicted at position t, IGNORE elsewhere
    seq: int = 0  # sequence id inside the example (DPO: 0 chosen, 1 rejected)
    example: int = 0  # index of the example the sample came from

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_targets(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def hash_samples(h, samples) -> None:
    """Feed samples' exact token ids and targets (int64) into hash `h`: the identity of
    tokenized data (the reference cache's pair keys, a run's data fingerprint)."""
    from array import array

    for s in samples:
        h.update(array("q", s.input_ids).tobytes())
        h.update(array("q", s.labels).tobytes())
    h.update(b"|")


def shift_targets(ids: list[int], mask: list[bool]) -> list[int]:
    """Per-position targets: position t predicts ids[t+1] when that token is trained."""
    return [ids[t + 1] if mask[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]


def pack_bfd(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing: indices grouped into rows of at most `capacity` tokens.

    Longest first, each into the fullest row that still has room (O(n log n) with a sorted
    list of free space). Deterministic: ties keep input order.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    free: list[tuple[int, int]] = []  # (free space, row id), sorted
    rows: list[list[int]] = []
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"sample of {n} tokens exceeds row capacity {capacity}")
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            space, row = free.pop(k)
            rows[row].append(i)
            if space - n > 0:
                bisect.insort(free, (space - n, row))
        else:
            rows.append([i])
            if capacity - n > 0:
                bisect.insort(free, (capacity - n, len(rows) - 1))
    return rows


def repack(rows: list[list[Sample]]) -> list[list[Sample]]:
    """Re-pack a micro-batch's samples into rows no longer than its longest sample.

    Removes most padding while never making a row longer than the padded layout would be
    (so sdpa's attention cost, quadratic in row length, does not grow).
    """
    samples = [s for row in rows for s in row]
    groups = pack_bfd([len(s) for s in samples], max(len(s) for s in samples))
    return [[samples[i] for i in g] for g in groups]


PROMPT, CHOSEN, REJECTED, PADDING = 0, 1, 2, 3  # parts of a shared-prompt pair


def prompt_length(sample: Sample) -> int:
    """Tokens before the completion: the first labelled position predicts the completion's first token."""
    return next(t for t, y in enumerate(sample.labels) if y != IGNORE) + 1


def collate_shared(rows: list[list[Sample]], pad_id: int) -> dict:
    """Pairs as `[prompt, chosen, rejected]`, the prompt computed once.

    Rejected's positions continue from the prompt's end, as if it followed the prompt
    directly; `part` and `segment` let the model build the mask in which rejected sees the
    prompt but not chosen (`pride.logps.shared_prompt_mask`). The prompt's last position
    predicts the first token of both completions, so it appears twice among the targets.
    Units are re-packed into rows no longer than the longest unit (as `repack`).
    Counts: `n_tokens` is the tokens of the unshared layout (the data's own size, so
    tokens/s compare), `n_computed` the tokens actually run.
    """
    units = []
    for c, r in rows:
        p = prompt_length(c)
        if c.input_ids[:p] != r.input_ids[:p] or prompt_length(r) != p:
            raise ValueError("shared-prompt layout: chosen and rejected must start with the same prompt")
        units.append((c, r, p, len(c) + len(r) - p))
    groups = pack_bfd([u[3] for u in units], max(u[3] for u in units))
    width = max(sum(units[i][3] for i in g) for g in groups)
    ids = torch.full((len(groups), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(groups), width), dtype=torch.long)
    part = torch.full((len(groups), width), PADDING, dtype=torch.long)
    segment = torch.full((len(groups), width), -1, dtype=torch.long)
    t_index, t_ids, t_seq, kinds, examples = [], [], [], [], []
    for b, group in enumerate(groups):
        at = 0
        for i in group:
            c, r, p, n = units[i]
            comp_c, comp_r = c.input_ids[p:], r.input_ids[p:]
            ids[b, at:at + n] = torch.tensor(c.input_ids[:p] + comp_c + comp_r)
            pos[b, at:at + n] = torch.cat([torch.arange(p + len(comp_c)), torch.arange(p, p + len(comp_r))])
            part[b, at:at + n] = torch.tensor([PROMPT] * p + [CHOSEN] * len(comp_c) + [REJECTED] * len(comp_r))
            segment[b, at:at + n] = i
            base = b * width + at
            for seq, (sample, start) in enumerate(((c, 0), (r, len(comp_c)))):
                # sample.labels[t] is what position t of prompt+completion predicts
                for t, y in enumerate(sample.labels):
                    if y == IGNORE:
                        continue
                    flat_t = t if t < p else p + start + (t - p)  # completion positions follow the prompt
                    t_index.append(base + flat_t)
                    t_ids.append(y)
                    t_seq.append(len(kinds) + seq)
            kinds += [c.seq, r.seq]
            examples += [c.example, r.example]
            at += n
        if at < width:
            pos[b, at:] = torch.arange(width - at)
    return {
        "input_ids": ids, "position_ids": pos, "part": part, "segment": segment,
        "target_index": torch.tensor(t_index, dtype=torch.long), "target_ids": torch.tensor(t_ids, dtype=torch.long),
        "target_seq": torch.tensor(t_seq, dtype=torch.long), "n_seqs": len(kinds),
        "seq_kind": torch.tensor(kinds, dtype=torch.long), "seq_example": torch.tensor(examples, dtype=torch.long),
        "n_tokens": sum(len(s) for row in rows for s in row), "n_computed": sum(u[3] for u in units),
        "n_slots": ids.numel(),
    }


def collate(rows: list[list[Sample]], pad_id: int, flat: bool = False, layout: str = "rows") -> dict:
    """Rows of samples -> model inputs plus the targets the objective needs.

    layout: "rows" keeps the rows as given (SFT: already packed, or one sample each),
    "shared" computes each pair's prompt once (`collate_shared`), "repack" re-packs the
    micro-batch's samples (see `repack`: padding-free pairs), "split"
    puts each sample in its own padded row. flat=True lays everything out as one row
    (flash-attention varlen: no padding at all). Returns input_ids/position_ids [B, T],
    target_index (flat positions carrying a label), target_ids, target_seq (which sample
    each target belongs to) and per-sample metadata.
    """
    if layout == "shared" and not flat:
        return collate_shared(rows, pad_id)
    if flat:
        rows = [[s for row in rows for s in row]]
    elif layout == "repack":
        rows = repack(rows)
    elif layout == "split":
        rows = [[s] for row in rows for s in row]
    width = max(sum(len(s) for s in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    seg = torch.full((len(rows), width), -1, dtype=torch.long)
    samples: list[Sample] = []
    for r, row in enumerate(rows):
        at = 0
        for s in row:
            n = len(s)
            ids[r, at:at + n] = torch.tensor(s.input_ids)
            pos[r, at:at + n] = torch.arange(n)
            labels[r, at:at + n] = torch.tensor(s.labels)
            seg[r, at:at + n] = len(samples)
            samples.append(s)
            at += n
        if at < width:  # trailing padding: its own segment, positions restart
            pos[r, at:] = torch.arange(width - at)
    flat_labels, flat_seg = labels.view(-1), seg.view(-1)
    target_index = (flat_labels != IGNORE).nonzero(as_tuple=True)[0]
    return {
        "input_ids": ids,
        "position_ids": pos,
        "target_index": target_index,
        "target_ids": flat_labels[target_index],
        "target_seq": flat_seg[target_index],
        "n_seqs": len(samples),
        "seq_kind": torch.tensor([s.seq for s in samples], dtype=torch.long),
        "seq_example": torch.tensor([s.example for s in samples], dtype=torch.long),
        "n_tokens": sum(len(s) for s in samples),
        "n_slots": ids.numel(),
    }
