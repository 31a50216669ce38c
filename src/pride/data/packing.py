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

from pride.errors import PrideError

IGNORE = -100


@dataclass
class Sample:
    input_ids: list[int]
    labels: list[int]  # aligned targets: labels[t] is predicted at position t, IGNORE elsewhere
    seq: int = 0  # sequence id inside the example (DPO: 0 chosen, 1 rejected)
    example: int = 0  # index of the example the sample came from
    ref_logps: float | None = None  # DPO: the reference model's summed completion log-probs
    win_prob: float | None = None  # SPPO: the completion's estimated win probability
    margin: float | None = None  # reward models: the pair's margin (on both of its samples)
    advantage: float | None = None  # GRPO family: the sample's advantage over its group
    old_logps: list[float] | None = None  # GRPO family: per target, the sampling policy's log-prob
    ref_token_logps: list[float] | None = None  # GRPO family with beta > 0: per target, the reference's
    masked: bool | None = None  # GRPO family: a truncated completion that mask_truncated_completions leaves out

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_targets(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


@dataclass
class Batch:
    """One micro-batch as the model and the objectives see it (what `collate` returns).

    Targets are flat: `target_index` (positions of input_ids.view(-1) that carry a label),
    `target_ids`, and `target_seq` (which sequence each target belongs to). Per sequence:
    `seq_kind` (DPO: 0 chosen, 1 rejected), `seq_example`, and the precomputed columns
    `seq_ref_logps` / `seq_win_prob` when the samples carry them.
    """

    input_ids: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, T], restarting at every sample
    target_index: torch.Tensor
    target_ids: torch.Tensor
    target_seq: torch.Tensor
    n_seqs: int
    seq_kind: torch.Tensor
    seq_example: torch.Tensor
    n_tokens: int  # tokens of the data (a shared prompt counted for both sequences)
    n_slots: int  # B x T, padding included
    n_computed: int | None = None  # tokens actually run (fewer with shared prompts)
    part: torch.Tensor | None = None  # shared-prompt units: prompt / chosen / rejected / padding
    segment: torch.Tensor | None = None  # shared-prompt units: which unit
    seq_ref_logps: torch.Tensor | None = None
    seq_win_prob: torch.Tensor | None = None
    seq_margin: torch.Tensor | None = None
    seq_advantage: torch.Tensor | None = None
    seq_masked: torch.Tensor | None = None
    target_old_logps: torch.Tensor | None = None  # per target, in target order
    target_ref_logps: torch.Tensor | None = None

    def inputs(self) -> dict:
        """The keyword arguments of `pride.logps.TokenLogps`."""
        return {"input_ids": self.input_ids, "position_ids": self.position_ids, "target_index": self.target_index,
                "target_ids": self.target_ids, "part": self.part, "segment": self.segment}

    def to(self, device) -> "Batch":
        return Batch(**{f: (v.to(device) if torch.is_tensor(v) else v) for f, v in vars(self).items()})


def sequence_columns(samples: list[Sample]) -> dict:
    """Per-sequence values of a micro-batch, in the order of `target_seq` (as TRL's collator
    carries precomputed columns): kind, example, and the reference log-probs and win
    probabilities when every sample has them."""
    out = {"n_seqs": len(samples), "seq_kind": torch.tensor([s.seq for s in samples], dtype=torch.long),
           "seq_example": torch.tensor([s.example for s in samples], dtype=torch.long)}
    for name in ("ref_logps", "win_prob", "margin", "advantage", "masked"):
        values = [getattr(s, name) for s in samples]
        if samples and all(v is not None for v in values):
            out[f"seq_{name}"] = torch.tensor(values, dtype=torch.bool if name == "masked" else torch.float64)
    for name, column in (("old_logps", "target_old_logps"), ("ref_token_logps", "target_ref_logps")):
        values = [getattr(s, name) for s in samples]
        if samples and all(v is not None for v in values):  # samples in layout order: their targets' order
            out[column] = torch.tensor([x for v in values for x in v], dtype=torch.float32)
    return out


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
            raise PrideError(f"sample of {n} tokens exceeds row capacity {capacity}")
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


# parts of a shared-prompt unit: the prompt, then each answer its own part (a pair's chosen and
# rejected, a group's answers 1..K); a token sees the prompt and its own part only
PROMPT, CHOSEN, REJECTED, PADDING = 0, 1, 2, -1


def prompt_length(sample: Sample) -> int:
    """Tokens before the completion: the first labelled position predicts the completion's first token."""
    return next(t for t, y in enumerate(sample.labels) if y != IGNORE) + 1


def collate_shared(rows: list[list[Sample]], pad_id: int, attention_weight: float = 0.0) -> Batch:
    """Pairs as `[prompt, chosen, rejected]`, the prompt computed once where that is cheaper.

    Rejected's positions continue from the prompt's end, as if it followed the prompt
    directly; `part` and `segment` let the model build the mask in which rejected sees the
    prompt but not chosen (`pride.logps.shared_prompt_mask`). The prompt's last position
    predicts the first token of both completions, so it appears twice among the targets.
    Units are re-packed into rows no longer than the longest unit (as `repack`).

    Sharing saves the prompt's tokens but makes one unit of P+C+R tokens, whose masked
    attention sdpa computes in full. `attention_weight` is the cost of one query-key pair
    relative to one token through the layer's matrices (`attention_weight(config)`); with it
    each micro-batch shares the prompts whose units fit the cheapest row width (`share_choice`).
    With 0 every prompt is shared.
    Counts: `n_tokens` is the tokens of the unshared layout (the data's own size, so
    tokens/s compare), `n_computed` the tokens actually run.
    """
    pairs = []
    for c, r in rows:
        p = prompt_length(c)
        if c.input_ids[:p] != r.input_ids[:p] or prompt_length(r) != p:
            raise PrideError("shared-prompt layout: chosen and rejected must start with the same prompt")
        pairs.append((c, r, p))
    units = build_units(pairs, share_choice(pairs, attention_weight))
    return lay_out_units(units, rows, pad_id)


def collate_groups(rows: list[list[Sample]], pad_id: int) -> Batch:
    """Groups (a prompt's K answers, one row each: the GRPO family) as `[prompt, answer 1, ..., answer K]`,
    the prompt computed once: each answer's positions continue from the prompt's end and it sees
    the prompt and itself only (the mask of `collate_shared`, with K answers). The prompt's last
    position predicts every answer's first token. Units re-packed into rows no longer than the
    longest unit."""
    units = []
    for row in rows:
        p = prompt_length(row[0])
        if any(s.input_ids[:p] != row[0].input_ids[:p] or prompt_length(s) != p for s in row):
            raise PrideError("group layout: a group's answers must start with the same prompt")
        units.append(_group_unit(row, p))
    return lay_out_units(units, rows, pad_id)


def _group_unit(samples: list[Sample], p: int):
    """`[prompt, answer 1, ..., answer K]`; answer j (part 1 + j) placed after the answers before it."""
    ids, pos, parts, targets, at = list(samples[0].input_ids[:p]), list(range(p)), [PROMPT] * p, [], p
    for j, s in enumerate(samples):
        n = len(s) - p
        ids += s.input_ids[p:]
        pos += list(range(p, p + n))
        parts += [1 + j] * n
        targets.append((s, lambda t, shift=at - p: t if t < p else t + shift))
        at += n
    return ids, pos, parts, targets


def lay_out_units(units: list[tuple], rows: list[list[Sample]], pad_id: int) -> Batch:
    """Units (ids, positions, parts, targets) packed into rows as a `Batch` with the shared-prompt mask's
    `part` and `segment`."""
    groups = pack_bfd([len(u[0]) for u in units], max(len(u[0]) for u in units))
    width = max(sum(len(units[i][0]) for i in g) for g in groups)
    ids = torch.full((len(groups), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(groups), width), dtype=torch.long)
    part = torch.full((len(groups), width), PADDING, dtype=torch.long)
    segment = torch.full((len(groups), width), -1, dtype=torch.long)
    t_index, t_ids, t_seq, seqs = [], [], [], []
    for b, group in enumerate(groups):
        at = 0
        for i in group:
            unit_ids, unit_pos, unit_part, targets = units[i]
            n = len(unit_ids)
            ids[b, at:at + n] = torch.tensor(unit_ids)
            pos[b, at:at + n] = torch.tensor(unit_pos)
            part[b, at:at + n] = torch.tensor(unit_part)
            segment[b, at:at + n] = i
            for sample, offsets in targets:
                labelled = [t for t, y in enumerate(sample.labels) if y != IGNORE]
                t_index += [b * width + at + offsets(t) for t in labelled]
                t_ids += [sample.labels[t] for t in labelled]
                t_seq += [len(seqs)] * len(labelled)
                seqs.append(sample)
            at += n
        if at < width:
            pos[b, at:] = torch.arange(width - at)
    return Batch(input_ids=ids, position_ids=pos, part=part, segment=segment,
                 target_index=torch.tensor(t_index, dtype=torch.long), target_ids=torch.tensor(t_ids, dtype=torch.long),
                 target_seq=torch.tensor(t_seq, dtype=torch.long), **sequence_columns(seqs),
                 n_tokens=sum(len(s) for row in rows for s in row), n_computed=sum(len(u[0]) for u in units),
                 n_slots=ids.numel())


def _shared_unit(c: Sample, r: Sample, p: int):
    """One unit `[prompt, chosen, rejected]`; rejected's positions continue from the prompt."""
    n_c, n_r = len(c) - p, len(r) - p
    targets = [(c, lambda t: t), (r, lambda t: t if t < p else t + n_c)]
    return (c.input_ids + r.input_ids[p:], list(range(p + n_c)) + list(range(p, p + n_r)),
            [PROMPT] * p + [CHOSEN] * n_c + [REJECTED] * n_r, targets)


def _single_unit(s: Sample, p: int, kind: int):
    """One answer after its own copy of the prompt (the unshared layout)."""
    return s.input_ids, list(range(len(s))), [PROMPT] * p + [kind] * (len(s) - p), [(s, lambda t: t)]


def layout_cost(lengths: list[int], attention_weight: float) -> float:
    """Tokens run plus weighted query-key pairs, with units packed into rows as `collate_shared` packs them."""
    groups = pack_bfd(lengths, max(lengths))
    width = max(sum(lengths[i] for i in g) for g in groups)
    return sum(lengths) + attention_weight * len(groups) * width ** 2


def share_choice(pairs: list[tuple[Sample, Sample, int]], attention_weight: float) -> list[bool]:
    """Which pairs of a micro-batch share their prompt.

    sdpa computes each packed row's whole masked block, so a row of width W costs W² query-key
    pairs whatever it holds: sharing saves a pair's prompt tokens for free while its unit
    (P+C+R) fits the width the unshared layout needs anyway (its longest sequence), and beyond
    that only if the saved tokens outweigh the wider rows. So: pick the row width W, from that
    floor up to the longest shared unit, that minimises `layout_cost`; pairs whose unit fits W share.
    """
    shared = [len(c) + len(r) - p for c, r, p in pairs]
    if attention_weight == 0:
        return [True] * len(pairs)
    floor = max(max(len(c), len(r)) for c, r, _ in pairs)
    options = [[n <= w for n in shared] for w in sorted({floor, *(n for n in shared if n > floor)})]
    return min(options, key=lambda share: layout_cost(unit_lengths(pairs, share), attention_weight))


def unit_lengths(pairs: list[tuple[Sample, Sample, int]], share: list[bool]) -> list[int]:
    """Token count of each unit `build_units` would make (a shared pair: P+C+R; else P+C and P+R)."""
    return [n for (c, r, p), s in zip(pairs, share) for n in ([len(c) + len(r) - p] if s else [len(c), len(r)])]


def build_units(pairs: list[tuple[Sample, Sample, int]], share: list[bool]) -> list[tuple]:
    """(ids, positions, parts, targets) per unit: a shared pair is one unit, any other two."""
    units = []
    for (c, r, p), s in zip(pairs, share):
        units += [_shared_unit(c, r, p)] if s else [_single_unit(c, p, CHOSEN), _single_unit(r, p, REJECTED)]
    return units


def collate(rows: list[list[Sample]], pad_id: int, flat: bool = False, layout: str = "rows",
            attention_weight: float = 0.0) -> Batch:
    """Rows of samples -> model inputs plus the targets the objective needs.

    layout: "rows" keeps the rows as given (SFT: already packed, or one sample each),
    "shared" computes each pair's prompt once (`collate_shared`), "group" each group's
    (`collate_groups`), "repack" re-packs the
    micro-batch's samples (see `repack`: padding-free pairs), "split"
    puts each sample in its own padded row. flat=True lays everything out as one row
    (flash-attention varlen: no padding at all). Returns input_ids/position_ids [B, T],
    target_index (flat positions carrying a label), target_ids, target_seq (which sample
    each target belongs to) and per-sample metadata.
    """
    if layout == "shared" and not flat:
        return collate_shared(rows, pad_id, attention_weight)
    if layout == "group" and not flat:
        return collate_groups(rows, pad_id)
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
    return Batch(input_ids=ids, position_ids=pos, target_index=target_index, target_ids=flat_labels[target_index],
                 target_seq=flat_seg[target_index], **sequence_columns(samples), n_tokens=sum(len(s) for s in samples),
                 n_slots=ids.numel())


def split_rows(samples: list[Sample], max_length: int, buffer: int = 1024) -> tuple[list[list[Sample]], dict]:
    """LionAlignment's SFT packing (`sft_data_processor.batch_split_long_data`): the samples, in
    order and `buffer` at a time, concatenated and cut into rows of exactly `max_length`
    tokens. A sample cut at a row's end goes on at the start of the next row as a segment of
    its own (attention stays within a sample, as their cu_seqlens keep it; their positions run
    on through the row where pride's restart per segment, the same under RoPE, which sees only
    distances); its target across the cut is dropped (they shift labels within a row). What is
    left of each `buffer` samples, less than a row, is dropped; so is a row with more than 90%
    of its tokens untrained (their `filter_element`). Returns the rows and what was dropped, counted."""
    rows: list[list[Sample]] = []
    tail_tokens = 0
    for start in range(0, len(samples), buffer):
        row: list[Sample] = []
        room = max_length
        for s in samples[start:start + buffer]:
            at = 0
            while at < len(s):
                take = min(room, len(s) - at)
                labels = s.labels[at:at + take]
                if at + take < len(s):  # cut: the next token lies in the next row
                    labels = labels[:-1] + [IGNORE]
                row.append(Sample(s.input_ids[at:at + take], labels, seq=s.seq, example=s.example))
                at, room = at + take, room - take
                if room == 0:
                    rows.append(row)
                    row, room = [], max_length
        tail_tokens += max_length - room if row else 0
    kept = [r for r in rows if sum(len(s) - s.n_targets for s in r) <= 0.9 * max_length]
    return kept, {"split_dropped_tail_tokens": tail_tokens, "split_dropped_untrained_rows": len(rows) - len(kept)}
