"""`pride rm`: a reward model on preference pairs, through the one training loop.

As TRL's RewardTrainer: each pair's two whole conversations (chat template applied) go
through a sequence-classification model with one output in one forward, the score is read
at each conversation's last token, and the loss is Bradley-Terry (`pride.losses.bradley_terry`:
a `margin` column when the rows have one, and `reward.center_rewards_coefficient`). The
saved `model/` is an HF directory `AutoModelForSequenceClassification` loads, with the
tokenizer, chat template, `model_max_length` and `truncation_side` it was trained with, so
`online.judge.type: reward_model` and `pride eval` score a conversation as training did.
"""

from __future__ import annotations

import math

import torch

from pride.config import RewardSettings
from pride.data import load_rows
from pride.data.packing import Batch, Sample
from pride.errors import PrideError
from pride.losses import bradley_terry
from pride.scores import SequenceScores, conversation_ids, scored_sample, tokenizer_digest
from pride.train.stage import StageContext

METRICS = ("accuracy", "margin", "rewards/chosen", "rewards/rejected", "rewards/mean", "rewards/std")


class RewardObjective:
    """Bradley-Terry on the pairs of a micro-batch; metrics per pair (TRL's names)."""

    metric_names = METRICS
    layout = "repack"  # padding-free rows; each sequence scored at its own last token
    attention_weight = 0.0

    def __init__(self, settings: RewardSettings):
        self.s = settings

    def wrap(self, model, chunk_size: int):
        return SequenceScores(model)

    def units(self, rows: list[list[Sample]]) -> float:
        return float(len(rows))  # pairs

    def __call__(self, model, batch: Batch):
        scores = model(**batch.inputs())
        per_seq = scores.new_zeros(batch.n_seqs).index_add(0, batch.target_seq, scores)
        kind, example = batch.seq_kind, batch.seq_example
        c = (kind == 0).nonzero(as_tuple=True)[0]
        r = (kind == 1).nonzero(as_tuple=True)[0]
        c, r = c[example[c].argsort()], r[example[r].argsort()]
        margin = None if batch.seq_margin is None else batch.seq_margin[c].to(scores.dtype)
        chosen, rejected = per_seq[c], per_seq[r]
        losses = bradley_terry(chosen, rejected, margin, self.s.center_rewards_coefficient)
        with torch.no_grad():
            metrics = {"accuracy": (chosen > rejected).float().sum(), "margin": (chosen - rejected).sum(),
                       "rewards/chosen": chosen.sum(), "rewards/rejected": rejected.sum(),
                       "rewards/mean": (chosen + rejected).sum() / 2,
                       "rewards/std": (chosen ** 2 + rejected ** 2).sum() / 2}  # E[r^2] until `finish`
        return losses.sum(), metrics

    @staticmethod
    def finish(logged: dict, prefix: str = "") -> dict:
        """The per-pair means the loop reduced, with E[r^2] turned into the rewards' std."""
        mean, square = logged[f"{prefix}rewards/mean"], logged[f"{prefix}rewards/std"]
        logged[f"{prefix}rewards/std"] = math.sqrt(max(square - mean ** 2, 0.0))
        return logged


def tokenize_reward_pairs(pairs: list, fmt, s: RewardSettings, first_example: int = 0) -> tuple[list, dict]:
    """Each pair as [chosen, rejected] samples of whole conversations, cut as `s` says."""
    with_margin = [p.margin is not None for p in pairs]
    if any(with_margin) and not all(with_margin):
        bare = pairs[with_margin.index(False)]
        raise PrideError(f"{bare.where}: field 'margin': missing, where other rows have one (a margin applies to "
                         "every pair or none)")
    rows, truncated = [], 0
    for i, p in enumerate(pairs):
        (c, cut_c), (r, cut_r) = (conversation_ids(fmt, p.prompt, text, s.max_length, s.truncation_side)
                                  for text in (p.chosen, p.rejected))
        truncated += cut_c or cut_r
        rows.append([scored_sample(c, 0, first_example + i, p.margin), scored_sample(r, 1, first_example + i, p.margin)])
    return rows, {"pairs": len(pairs), "truncated": truncated, "margin": all(with_margin) and bool(pairs)}


def run_reward(cfg) -> dict:
    """`pride rm` (and a recipe's rm stage): train, then save the reward model with its tokenizer."""
    s = cfg.reward
    with StageContext.open(cfg) as ctx:
        rows = load_rows(cfg.data, want="preference", seed=cfg.seed)
        model, tokenizer, fmt = ctx.load_model(head="score")
        train_rows, stats = tokenize_reward_pairs(rows.train, fmt, s)
        eval_rows, _ = tokenize_reward_pairs(rows.eval, fmt, s, first_example=len(train_rows))
        stats.update(eval_pairs=len(eval_rows), **{k: v for k, v in rows.stats.items() if k != "bad_row_examples"})
        ctx.console.print(f"[bold]rm[/] {stats['pairs']} pairs ({stats['eval_pairs']} held out); truncated "
                          f"{stats['truncated']} to {s.max_length} tokens on the {s.truncation_side}"
                          f"{'; margins from the data' if stats['margin'] else ''}")
        if not train_rows:
            raise PrideError("no preference pair to train the reward model on")
        ctx.write_json("data_stats.json", stats)
        result = ctx.train(model, RewardObjective(s), train_rows, eval_rows, tokenizer.pad_token_id)
        tokenizer.model_max_length, tokenizer.truncation_side = s.max_length, s.truncation_side
        tokenizer.init_kwargs["truncation_side"] = s.truncation_side  # saved only from there
        unwrapped = ctx.acc.unwrap_model(result.prepared).model
        (unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped).config.update(
            {"pride_tokenizer": tokenizer_digest(tokenizer)})
        return ctx.finish(result, tokenizer, stats, "rm")


__all__ = ["RewardObjective", "run_reward", "tokenize_reward_pairs"]
