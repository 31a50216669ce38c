"""`pride dpo`: the DPO loss family on preference pairs, through the one training loop.

Chosen and rejected sequences of a micro-batch go through the model in one forward (the
prompt computed once where that is cheaper, `data.packing.collate_shared`); their summed
completion log-probs feed `pride.losses.preference_loss`. Reference log-probs are
precomputed once (default, `pride.reference`) and ride on the samples into each batch, so
no reference model is held during training; `preference.reference=live` keeps one (or,
with LoRA, disables the adapter) for comparison. Online rounds train through
`train_preference` too, with the pairs they built.
"""

from __future__ import annotations

import time

import torch

from pride import reference
from pride.config import PreferenceSettings
from pride.data import Rows, load_rows
from pride.data.packing import Batch, Sample
from pride.data.preference import tokenize_pairs
from pride.errors import PrideError
from pride.logps import attention_weight, pair_logps, takes_block_mask
from pride.losses import LOSSES, NEEDS_WIN_PROB, PROB_COLUMNS, REFERENCE_FREE, preference_loss
from pride.models import attention_backend, disable_dropout
from pride.train.stage import StageContext

METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected", "nll_loss")


class PreferenceObjective:
    """The loss of one micro-batch; reference log-probs and win probabilities come with the batch
    (`seq_ref_logps`, `seq_win_prob`) unless a live reference computes them."""

    metric_names = METRICS

    def __init__(self, settings: PreferenceSettings, live_reference=None, layout="repack",
                 attention_weight: float = 0.0):
        self.s = settings
        self.live_reference = live_reference  # callable(batch) -> token logps, or None
        self.layout = layout  # shared | repack | split (see data.packing.collate)
        self.attention_weight = attention_weight

    def units(self, rows: list[list[Sample]]) -> float:
        return float(len(rows))  # pairs

    def __call__(self, model, batch: Batch):
        pi_w, pi_l, len_w, len_l, c, r = pair_logps(model(**batch.inputs()), batch)
        ref_w = ref_l = None
        if self.s.loss_type not in REFERENCE_FREE:
            if self.live_reference is not None:
                with torch.no_grad():
                    rw, rl, *_ = pair_logps(self.live_reference(batch), batch)
                ref_w, ref_l = rw.detach(), rl.detach()
            else:
                if batch.seq_ref_logps is None:
                    raise PrideError(f"loss_type {self.s.loss_type!r} needs reference log-probs on every pair")
                ref_w, ref_l = batch.seq_ref_logps[c].float(), batch.seq_ref_logps[r].float()
        p_w = p_l = None
        if self.s.loss_type in NEEDS_WIN_PROB:
            p_w, p_l = batch.seq_win_prob[c].float(), batch.seq_win_prob[r].float()
        losses = preference_loss(
            self.s.loss_type, policy_chosen_logps=pi_w, policy_rejected_logps=pi_l,
            reference_chosen_logps=ref_w, reference_rejected_logps=ref_l, chosen_lengths=len_w,
            rejected_lengths=len_l, chosen_win_prob=p_w, rejected_win_prob=p_l, beta=self.s.beta,
            gamma=self.s.gamma, label_smoothing=self.s.label_smoothing, delta=self.s.delta)
        nll = -pi_w / len_w.clamp(min=1)
        if self.s.nll_weight:
            losses = losses + self.s.nll_weight * nll
        with torch.no_grad():
            if ref_w is None:  # SimPO: length-normalised implicit reward
                rew_w, rew_l = self.s.beta * pi_w / len_w, self.s.beta * pi_l / len_l
            else:
                rew_w, rew_l = self.s.beta * (pi_w - ref_w), self.s.beta * (pi_l - ref_l)
            metrics = {"rewards/chosen": rew_w.sum(), "rewards/rejected": rew_l.sum(),
                       "rewards/margins": (rew_w - rew_l).sum(), "rewards/accuracies": (rew_w > rew_l).float().sum(),
                       "logps/chosen": pi_w.sum(), "logps/rejected": pi_l.sum(), "nll_loss": nll.sum()}
        return losses.sum(), {k: v.detach() for k, v in metrics.items()}


def run_preference(cfg) -> dict:
    """`pride dpo` (and a recipe's dpo stage): the pairs of data.sources."""
    with StageContext.open(cfg) as ctx:
        return train_preference(ctx, load_rows(cfg.data, want="preference", seed=cfg.seed))


def train_preference(ctx: StageContext, rows: Rows) -> dict:
    """Tokenize the pairs, attach reference log-probs and win probabilities, train, save."""
    cfg, console = ctx.cfg, ctx.console
    s = cfg.preference
    model, tokenizer, fmt = ctx.load_model()
    if s.disable_dropout:
        disable_dropout(model)
    layout = pair_layout(s, model, console)
    kinds = dict(on_bad_row=cfg.data.on_bad_row, keep_identical=s.keep_identical,
                 header_in_completion=s.header_in_completion)
    train_data = tokenize_pairs(rows.train, fmt, s.max_length, s.max_prompt_length, **kinds)
    eval_data = tokenize_pairs(rows.eval, fmt, s.max_length, s.max_prompt_length, first_example=len(train_data.rows),
                               **kinds)
    stats = {**train_data.stats, "eval_pairs": len(eval_data.rows),
             **{k: v for k, v in rows.stats.items() if k != "bad_row_examples"}}
    console.print(f"[bold]{s.loss_type}[/] {stats['pairs']} pairs -> {stats['kept']} kept (skipped: "
                  f"{stats['skipped_empty_completion']} empty completion, {stats['skipped_identical']} identical, "
                  f"{stats['skipped_unrenderable']} the template cannot render; "
                  f"truncated {stats['truncated']})")
    if not train_data.rows:
        raise PrideError("no preference pair left after truncation and filtering")
    ctx.write_json("data_stats.json", stats)

    live = None
    splits = [(train_data, rows.train, "reference_logps.parquet"),
              (eval_data, rows.eval, "reference_logps_eval.parquet")]
    if s.loss_type not in REFERENCE_FREE and s.reference == "live":
        live = reference.live(cfg, ctx.acc, model)
    elif s.loss_type not in REFERENCE_FREE:
        started = time.perf_counter()
        for data, pairs, name in splits:
            if data.rows:
                where = [p.where for p in pairs]
                reference.attach(data.rows, reference.precompute(ctx, model, tokenizer, data, where,
                                                                 ctx.run_dir / name, layout))
        ctx.timing["reference_s"] = time.perf_counter() - started
    if s.loss_type in NEEDS_WIN_PROB:
        for data, pairs, _ in splits:
            attach_probs(data.rows, [pairs[i] for i in data.kept], s.loss_type)

    objective = PreferenceObjective(s, live_reference=live, layout=layout, attention_weight=attention_weight(model.config))
    result = ctx.train(model, objective, train_data.rows, eval_data.rows, tokenizer.pad_token_id)
    return ctx.finish(result, tokenizer, stats, "dpo")


def attach_probs(rows: list[list[Sample]], pairs: list, loss_type: str) -> None:
    """SPPO's probabilities onto the samples: each answer's own win probability (`sppo`), or for
    `sppo_single` P(chosen beats rejected) on the chosen and 1 - P on the rejected."""
    kind = LOSSES[loss_type].probs
    for row, pair in zip(rows, pairs):
        if kind == "win":
            probs = (pair.chosen_win_prob, pair.rejected_win_prob)
        else:
            probs = (pair.chosen_probs, None if pair.chosen_probs is None else 1 - pair.chosen_probs)
        if None in probs:
            raise PrideError(f"{pair.where}: loss_type {loss_type!r} needs {PROB_COLUMNS[kind]} on every row")
        row[0].win_prob, row[1].win_prob = probs


def pair_layout(s: PreferenceSettings, model, console=None) -> str:
    """How pairs are laid out: prompts shared where the attention backend takes a block mask."""
    if s.share_prompt and takes_block_mask(model):
        return "shared"
    if s.share_prompt and console is not None:
        console.print(f"preference.share_prompt: {attention_backend(model)} cannot take the shared-prompt block mask; "
                      "each prompt is computed twice (padding-free rows)")
    return "repack" if s.padding_free else "split"
