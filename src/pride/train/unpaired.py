"""`pride kto`: unpaired feedback (one answer, thumbs up or down), through the one training loop.

A row is one answer to a prompt with its label (`LabeledCompletion`; preference pairs split into
a desirable and an undesirable row, as TRL splits them). Its reward is the summed log-ratio of
its completion tokens to the reference's; `losses.unpaired_loss` weighs it against KTO's
reference point z, the mean log-ratio of mismatched rows: prompt i with the completion of the
row before it. TRL forms those pairs and that mean per device batch, so its result moves with
the number of GPUs. Here they are formed over each optimizer step's rows on all processes (the
loop's `prepare` hook: one no-grad pass over the step's mismatched rows, reduced across ranks),
so `train.global_batch_size` gives the same training on any number of processes.

The loop's schedule is deterministic (`loop.planned_steps`), so every mismatched pair a run will
meet is known before it starts, and the reference's log-probs of each, and of each row's own
completion, are computed once and cached as DPO's are (`pride.reference.precompute`: a row with
its mismatched partner is a "pair" sharing the row's prompt).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from pride import reference
from pride.config import Config, TrainSettings
from pride.data import Rows, load_rows
from pride.data.packing import Batch, Sample
from pride.data.preference import PairData, completion_sample, encode_cut
from pride.data.rows import LabeledCompletion, RowError
from pride.errors import PrideError
from pride.logps import sequence_logps
from pride.losses import unpaired_loss
from pride.models import disable_dropout
from pride.train.loop import planned_steps
from pride.train.preference import pair_layout
from pride.train.stage import StageContext

METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected", "kl",
           "_desirable", "_undesirable")
DESIRABLE, UNDESIRABLE = 0, 1  # a sample's `seq`: its label, as DPO's chosen and rejected kinds


@dataclass
class UnpairedData:
    rows: list[list[Sample]]  # one row per kept input row: its one sample (seq: DESIRABLE or UNDESIRABLE)
    kept: list[int]  # input index of each kept row
    status: list[str]  # per input row: ok | empty_completion | unrenderable
    stats: dict = field(default_factory=dict)
    ids: list[tuple[list[int], list[int]]] = field(default_factory=list)  # kept: prompt, completion
    where: list[str] = field(default_factory=list)  # kept: the input row's file and line


def tokenize_unpaired(items: list[LabeledCompletion], fmt, max_length: int, max_prompt_length: int,
                      first_example: int = 0, on_bad_row: str = "error", header_in_completion: bool = False
                      ) -> UnpairedData:
    """As DPO's pairs (`tokenize_pairs`): the prompt as inference sees it, cut to its end within
    `max_prompt_length`; the completion, the rest of the whole rendering, cut to `max_length`."""
    rows, kept, status, ids, where = [], [], [], [], []
    truncated = 0
    for i, item in enumerate(items):
        try:
            short, (kept_ids,), (cut,) = encode_cut(fmt, item.prompt, [item.completion], max_length,
                                                    max_prompt_length, header_in_completion)
        except RowError as e:
            if on_bad_row == "error":
                raise PrideError(f"{item.where}: {e}") from None
            status.append("unrenderable")
            continue
        truncated += cut
        if not kept_ids:
            status.append("empty_completion")
            continue
        status.append("ok")
        kept.append(i)
        ids.append((short, kept_ids))
        where.append(item.where)
        kind = DESIRABLE if item.label else UNDESIRABLE
        rows.append([completion_sample(short, kept_ids, kind, first_example + len(kept) - 1)])
    labels = [items[i].label for i in kept]
    stats = {"rows": len(items), "kept": len(kept), "desirable": sum(labels), "undesirable": len(labels) - sum(labels),
             "truncated": int(truncated), "skipped_empty_completion": status.count("empty_completion"),
             "skipped_unrenderable": status.count("unrenderable")}
    return UnpairedData(rows, kept, status, stats, ids, where)


class MismatchedPairs:
    """Each row's prompt with another row's completion (KTO's KL rows), and the reference's
    summed log-probs of those completions, keyed by (row's example, partner's example)."""

    def __init__(self, data: list[UnpairedData], max_length: int):
        self.ids = {row[0].example: pc for d in data for row, pc in zip(d.rows, d.ids)}
        self.max_length = max_length
        self.reference: dict[tuple[int, int], float] = {}

    def sample(self, example: int, partner: int, index: int) -> Sample:
        """prompt of `example` + completion of `partner`, cut to max_length as TRL's collator cuts."""
        prompt, _ = self.ids[example]
        completion = self.ids[partner][1][:max(self.max_length - len(prompt), 0)]
        return completion_sample(prompt, completion, UNDESIRABLE, index)

    def reference_rows(self, pairs: list[tuple[int, int]]) -> list[list[Sample]]:
        """For the reference pass: per pair, [the row's own sample, its mismatched sample], one prompt."""
        rows = []
        for k, (example, partner) in enumerate(pairs):
            prompt, completion = self.ids[example]
            rows.append([completion_sample(prompt, completion, DESIRABLE, k), self.sample(example, partner, k)])
        return rows


def partners(examples: list[int]) -> list[tuple[int, int]]:
    """TRL's mismatch: (x_1, y_n), (x_2, y_1), ..., (x_n, y_{n-1}): row k with the completion before it."""
    return [(examples[k], examples[k - 1]) for k in range(len(examples))]


class UnpairedObjective:
    """One micro-batch of rows -> the summed (weighted) loss; units are rows, so a step's loss is
    TRL's mean over rows. `prepare` sets z for the step (or the eval set) before any loss."""

    metric_names = METRICS
    layout = "repack"
    attention_weight = 0.0

    def __init__(self, settings, pairs: MismatchedPairs | None):
        self.s, self.pairs = settings, pairs
        self.z = torch.zeros((), dtype=torch.float64)

    def units(self, rows: list[list[Sample]]) -> float:
        return float(len(rows))

    @torch.no_grad()
    def prepare(self, acc, wrapper, rows, mbs: list[list[int]], plan: list[tuple[list[int], float]], batch_for):
        """z over the rows of `mbs` (all ranks'): each rank runs the mismatched rows of its own
        micro-batches (and as many as the others, weight 0, so sharded models stay in step), the
        sums are reduced, and the mean is clamped at 0."""
        if self.pairs is None:  # apo_zero_unpaired: no reference point
            return
        partner = dict(partners([rows[i][0].example for mb in mbs for i in mb]))
        total = torch.zeros(2, dtype=torch.float64, device=acc.device)  # sum of log-ratios, rows
        for mb, weight in plan:
            examples = [rows[i][0].example for i in mb]
            kl_rows = [[self.pairs.sample(ex, partner[ex], k)] for k, ex in enumerate(examples)]
            batch = batch_for(list(range(len(kl_rows))), kl_rows)
            with acc.autocast():
                logps = wrapper(**batch.inputs())
            pi = sequence_logps(logps.float(), batch.target_seq, batch.n_seqs).double()
            ref = torch.tensor([self.pairs.reference[(examples[k], partner[examples[k]])]
                                for k in batch.seq_example.tolist()], dtype=torch.float64, device=acc.device)
            total += weight * torch.stack([(pi - ref).sum(), torch.tensor(float(len(mb)), device=acc.device,
                                                                          dtype=torch.float64)])
        total = acc.reduce(total, "sum") if acc.num_processes > 1 else total
        # TRL: (KL_logps - ref_KL_logps).mean(), detached, clamped at 0 (the KTO paper's z0, eq. 6)
        self.z = (total[0] / total[1]).clamp(min=0)

    def __call__(self, model, batch: Batch):
        s = self.s
        logp = model(**batch.inputs())
        pi = sequence_logps(logp.float(), batch.target_seq, batch.n_seqs)
        if batch.seq_ref_logps is None:
            raise PrideError("kto needs the reference log-probs of every row")
        r = pi - batch.seq_ref_logps.to(pi.device, pi.dtype)
        desirable = batch.seq_kind == DESIRABLE
        z = self.z.to(pi.device, pi.dtype)
        losses = unpaired_loss(s.loss_type, r, desirable, z, s.beta, s.desirable_weight, s.undesirable_weight)
        with torch.no_grad():
            good, bad = desirable.to(pi.dtype), (~desirable).to(pi.dtype)
            reward = s.beta * r.detach()
            metrics = {"rewards/chosen": (reward * good).sum(), "rewards/rejected": (reward * bad).sum(),
                       "rewards/margins": torch.zeros((), device=pi.device), "logps/chosen": (pi.detach() * good).sum(),
                       "logps/rejected": (pi.detach() * bad).sum(), "kl": z * batch.n_seqs,
                       "_desirable": good.sum(), "_undesirable": bad.sum()}
        return losses.sum(), metrics

    @staticmethod
    def finish(logged: dict, prefix: str = "") -> dict:
        """Sums per row -> TRL's means: rewards and log-probs per row of their label; the margin is
        the mean desirable reward less the mean undesirable one (when both are there)."""
        good, bad = logged.pop(f"{prefix}_desirable"), logged.pop(f"{prefix}_undesirable")
        for key, n in (("rewards/chosen", good), ("logps/chosen", good), ("rewards/rejected", bad),
                       ("logps/rejected", bad)):
            if n:
                logged[f"{prefix}{key}"] = logged[f"{prefix}{key}"] / n
            else:  # no row of this label in the step: no mean (TRL logs none either)
                logged.pop(f"{prefix}{key}")
        if good and bad:
            logged[f"{prefix}rewards/margins"] = logged[f"{prefix}rewards/chosen"] - logged[f"{prefix}rewards/rejected"]
        else:
            logged.pop(f"{prefix}rewards/margins")
        return logged


def run_unpaired(cfg: Config) -> dict:
    """`pride kto` (and a recipe's kto stage): the labelled rows of data.sources."""
    with StageContext.open(cfg) as ctx:
        return train_unpaired(ctx, load_rows(cfg.data, want="unpaired", seed=cfg.seed))


def train_unpaired(ctx: StageContext, rows: Rows) -> dict:
    """Tokenize, check the labels, precompute the reference's log-probs of every row and of every
    mismatched pair the run will meet, train, save."""
    cfg, console = ctx.cfg, ctx.console
    s, p = cfg.kto, cfg.preference
    if p.reference == "live":
        raise PrideError("preference.reference=live: kto precomputes its reference log-probs (of every row and of "
                         "every mismatched pair); leave preference.reference unset")
    if s.loss_type == "kto" and cfg.train.micro_batch_size * ctx.acc.num_processes * \
            cfg.train.gradient_accumulation_steps < 2:
        raise PrideError("kto.loss_type=kto estimates its KL term from each step's rows paired with one another: "
                         "a step of one row pairs it with itself. Set train.global_batch_size to 2 or more")
    model, tokenizer, fmt = ctx.load_model()
    if p.disable_dropout:
        disable_dropout(model)
    kinds = dict(on_bad_row=cfg.data.on_bad_row, header_in_completion=p.header_in_completion)
    train_data = tokenize_unpaired(rows.train, fmt, p.max_length, p.max_prompt_length, **kinds)
    eval_data = tokenize_unpaired(rows.eval, fmt, p.max_length, p.max_prompt_length,
                                  first_example=len(train_data.rows), **kinds)
    stats = {**train_data.stats, "eval_rows": len(eval_data.rows),
             **{k: v for k, v in rows.stats.items() if k not in ("bad_row_examples", "train_rows", "eval_rows")}}
    console.print(f"[bold]{s.loss_type}[/] {stats['rows']} rows -> {stats['kept']} kept: {stats['desirable']} "
                  f"desirable, {stats['undesirable']} undesirable (skipped: {stats['skipped_empty_completion']} "
                  f"empty completion, {stats['skipped_unrenderable']} the template cannot render; truncated "
                  f"{stats['truncated']})")
    check_labels(train_data.stats, s, console)
    ctx.write_json("data_stats.json", stats)

    kl = s.loss_type == "kto"
    pairs = MismatchedPairs([train_data, eval_data], p.max_length)
    wanted = needed_pairs([row[0].example for row in train_data.rows], [row[0].example for row in eval_data.rows],
                          cfg.train, ctx.acc.num_processes, cfg.seed, kl)
    started = time.perf_counter()
    values = reference_values(ctx, model, tokenizer, train_data, eval_data, wanted, pairs, pair_layout(p, model))
    ctx.timing["reference_s"] = time.perf_counter() - started
    for data in (train_data, eval_data):
        for row in data.rows:  # a row the run never meets (train.max_steps ends first) needs none
            if row[0].example in wanted:
                row[0].ref_logps = values[wanted[row[0].example][0]][0]
    pairs.reference = {key: value for key, (_, value) in values.items()}
    objective = UnpairedObjective(s, pairs if kl else None)
    result = ctx.train(model, objective, train_data.rows, eval_data.rows, tokenizer.pad_token_id)
    return ctx.finish(result, tokenizer, stats, "kto")


def check_labels(stats: dict, s, console) -> None:
    """Both labels are needed; warn as TRL's KTOTrainer warns (eq. 8 of the KTO paper) when the
    weighted ratio of desirable to undesirable rows lies outside [1, 4/3]."""
    good, bad = stats["desirable"], stats["undesirable"]
    if not good or not bad:
        have, lack = ("desirable", "undesirable") if good else ("undesirable", "desirable")
        raise PrideError(f"every training row is {have} ({good + bad} rows, no {lack} one): KTO learns from both "
                         f"labels; add rows labelled {'false' if lack == 'undesirable' else 'true'} (or train on "
                         "preference pairs, which give one of each)")
    if good == bad:
        return
    des_low, des_high = round(bad * s.undesirable_weight / good, 2), round(bad * s.undesirable_weight / good * 1.33, 2)
    und_low, und_high = round(good * s.desirable_weight / bad / 1.33, 2), round(good * s.desirable_weight / bad, 2)
    if not (des_low <= s.desirable_weight <= des_high or und_low <= s.undesirable_weight <= und_high):
        console.print(f"[yellow]warning[/]: {good} desirable and {bad} undesirable rows with weights "
                      f"{s.desirable_weight:g} and {s.undesirable_weight:g}: the KTO paper (eq. 8) recommends "
                      f"EITHER kto.desirable_weight in [{des_low}, {des_high}] OR kto.undesirable_weight in "
                      f"[{und_low}, {und_high}] (not both)")


def needed_pairs(examples: list[int], eval_examples: list[int], train: TrainSettings, world: int, seed: int, kl: bool
                 ) -> dict[int, list[tuple[int, int]]]:
    """Per row (example), the (example, partner) pairs the run meets: each step's mismatched pairs
    over the loop's schedule of the training rows (`examples`, in row order), and the eval set's
    over its whole order. Without a KL term, the row with itself (the reference pass then gives
    its own completion's sum)."""
    wanted: dict[int, list[tuple[int, int]]] = {}

    def add(pair):
        seen = wanted.setdefault(pair[0], [])
        if pair not in seen:
            seen.append(pair)

    if not kl:
        for ex in examples + eval_examples:
            add((ex, ex))
        return wanted
    for step in planned_steps(len(examples), train, world, seed):
        for pair in partners([examples[i] for mb in step for i in mb]):
            add(pair)
    for pair in partners(eval_examples):  # evaluation forms z over the whole eval set, in its order
        add(pair)
    return wanted


def reference_values(ctx, model, tokenizer, train: UnpairedData, eval_: UnpairedData,
                     wanted: dict[int, list[tuple[int, int]]], pairs: MismatchedPairs, layout: str
                     ) -> dict[tuple[int, int], tuple[float, float]]:
    """(example, partner) -> (reference sum of the row's own completion, of the partner's completion
    after the row's prompt), through DPO's cached reference pass (one file per split)."""
    out = {}
    where = {row[0].example: w for d in (train, eval_) for row, w in zip(d.rows, d.where)}
    for data, name in ((train, "reference_logps.parquet"), (eval_, "reference_logps_eval.parquet")):
        keys = [pair for row in data.rows for pair in wanted.get(row[0].example, [])]
        if not keys:
            continue
        pair_data = PairData(pairs.reference_rows(keys), list(range(len(keys))), ["ok"] * len(keys))
        labels = [where[a] if a == b else f"{where[a]} with the completion of {where[b]}" for a, b in keys]
        logps = reference.precompute(ctx, model, tokenizer, pair_data, labels, ctx.run_dir / name, layout)
        for k, key in enumerate(keys):
            out[key] = (float(logps.chosen[k]), float(logps.rejected[k]))
    return out


__all__ = ["UnpairedObjective", "run_unpaired", "train_unpaired", "tokenize_unpaired", "partners"]
