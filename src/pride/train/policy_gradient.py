"""Online rounds of the GRPO family and RLOO: every sample trained by its advantage, in the one loop.

A round's groups (a prompt's K samples with their rewards, `online/loop.py`) are tokenized as
DPO's pairs are (`ChatFormat.encode_pair`: the prompt as inference sees it, each answer as the
rest of the whole rendering). One no-grad pass of the round's starting model, the policy that
sampled, gives each completion token its old log-prob (the reference pass DPO has, per token),
so the importance ratio is exact however many optimizer steps the round takes; with
`online.grpo.beta` > 0 and `preference.reference_model` a second pass gives the reference's.
Advantages follow (`online/groups.py`: GRPOTrainer's or RLOOTrainer's), the groups with them
go to `groups.jsonl`, and `PolicyGradientObjective` trains through `train/loop.py` with the
loss of `losses.policy_gradient_loss` (or `losses.rloo_loss`), normalised as TRL normalises
that `loss_type`: the loop divides a step's loss by its units (completion tokens or sequences).
"""

from __future__ import annotations

import statistics
import time

import torch

from pride import reference
from pride.config import GrpoSettings
from pride.data.packing import Batch, Sample
from pride.data.preference import completion_sample, encode_cut
from pride.data.rows import RowError
from pride.errors import PrideError
from pride.io import write_jsonl
from pride.logps import TokenLogps, takes_block_mask
from pride.losses import PG_LOSSES, policy_gradient_loss, rloo_loss
from pride.models import disable_dropout
from pride.online.groups import advantages
from pride.train.stage import StageContext

GROUPS = "groups.jsonl"  # in the round's directory: each prompt's samples, rewards and advantages


class PolicyGradientObjective:
    """One micro-batch of groups (a row is a prompt's samples) -> the loss summed over its units;
    metric sums that `finish` turns into means per completion token (clip fractions, KL) or per
    sequence (length). The prompt of a group is computed once (`layout` group) where the attention
    backend takes the block mask, else each sample runs alone (repack)."""

    attention_weight = 0.0

    def __init__(self, s: GrpoSettings, objective: str, temperature: float, max_completion_length: int,
                 layout: str = "group"):
        self.s, self.objective, self.layout = s, objective, layout
        self.temperature = temperature if temperature > 0 else 1.0  # greedy sampling: the model's own distribution
        self.max_completion_length = max_completion_length
        self.spec = PG_LOSSES["dapo" if objective == "rloo" else s.loss_type]
        self.per_token = objective != "rloo" and self.spec.units == "tokens"
        clip = ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean") \
            if objective == "rloo" or self.spec.clipped else ()
        self.metric_names = ("completion_length", *clip, *(("kl",) if s.beta and objective == "grpo" else ()),
                             "_tokens", "_seqs")

    def wrap(self, model, chunk_size: int):
        return TokenLogps(model, chunk_size, self.temperature)

    def units(self, rows: list[list[Sample]]) -> float:
        if self.per_token:  # DAPO, CISPO, VESPO: the step's completion tokens (masked ones excluded)
            return float(sum(s.n_targets for row in rows for s in row if not s.masked))
        return float(sum(len(row) for row in rows))  # sequences

    def __call__(self, model, batch: Batch):
        s = self.s
        logp = model(**batch.inputs()).float()
        seq, n = batch.target_seq, batch.n_seqs
        old = batch.target_old_logps.to(logp.device, logp.dtype)
        adv = batch.seq_advantage.to(logp.device, logp.dtype)
        keep = (~batch.seq_masked).to(logp.dtype)  # mask_truncated_completions: a masked sequence adds nothing
        w = keep[seq]
        lengths = torch.bincount(seq, minlength=n).to(logp.dtype)
        if self.objective == "rloo":
            lp_seq = logp.new_zeros(n).index_add(0, seq, logp * w)
            old_seq = logp.new_zeros(n).index_add(0, seq, old * w)
            loss = rloo_loss(lp_seq, old_seq, adv, s.epsilon, s.epsilon_high).sum()
            ratio, flag_adv, weights = torch.exp(lp_seq - old_seq).detach(), adv, keep * lengths  # per sequence
        else:
            ref = batch.target_ref_logps
            ref = None if ref is None else ref.to(logp.device, logp.dtype)
            if s.beta and ref is None:
                ref = old  # the reference is the round's starting policy: the old log-probs are its values
            token_loss, report = policy_gradient_loss(
                s.loss_type, logp=logp, old=old, adv_seq=adv, seq=seq, n_seqs=n, level=s.importance_sampling_level,
                epsilon=s.epsilon, epsilon_high=s.epsilon_high, delta=s.delta, beta=s.beta, ref=ref,
                sapo_temperatures=(s.sapo_temperature_pos, s.sapo_temperature_neg),
                vespo=(s.vespo_k_pos, s.vespo_lambda_pos, s.vespo_k_neg, s.vespo_lambda_neg))
            token_loss = token_loss * w
            loss = self._normalised(token_loss, seq, n, w)
            ratio, flag_adv, weights = report["ratio"], adv[seq], w
        eps_high = s.epsilon if s.epsilon_high is None else s.epsilon_high
        with torch.no_grad():
            metrics = {"completion_length": lengths.sum(), "_tokens": (keep * lengths).sum(),
                       "_seqs": torch.tensor(float(n), device=logp.device)}
            if "clip_ratio/low_mean" in self.metric_names:
                low = ((ratio < 1 - s.epsilon) & (flag_adv < 0)).to(logp.dtype)
                high = ((ratio > 1 + eps_high) & (flag_adv > 0)).to(logp.dtype)
                metrics.update({"clip_ratio/low_mean": (low * weights).sum(), "clip_ratio/high_mean": (high * weights).sum(),
                                "clip_ratio/region_mean": (torch.maximum(low, high) * weights).sum()})
            if "kl" in self.metric_names:
                metrics["kl"] = (report["kl"] * w).sum()
        return loss, metrics

    def _normalised(self, token_loss: torch.Tensor, seq: torch.Tensor, n: int, w: torch.Tensor) -> torch.Tensor:
        """The micro-batch's loss in the loop's units (see `PgLoss`): summed tokens; or per sequence its
        token mean (GRPO: of its unmasked tokens), sum, sum over the max completion length (Dr. GRPO),
        or n times the micro-batch's token mean (BNPO, as TRL: local to the micro-batch)."""
        spec = self.spec
        if spec.units == "tokens" or spec.per_seq == "sum":
            return token_loss.sum()
        if spec.per_seq == "mean":
            total = token_loss.new_zeros(n).index_add(0, seq, token_loss)
            return (total / token_loss.new_zeros(n).index_add(0, seq, w).clamp(min=1)).sum()
        if spec.per_seq == "max_len":
            return token_loss.sum() / self.max_completion_length
        return n * token_loss.sum() / w.sum().clamp(min=1)  # batch

    @staticmethod
    def finish(logged: dict, prefix: str = "") -> dict:
        """Sums per unit -> means: clip fractions and KL per trained completion token (the ratio of two
        sums the loop divided by the same units), completion length per sequence."""
        tokens, seqs = logged.pop(f"{prefix}_tokens"), logged.pop(f"{prefix}_seqs")
        for key in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "kl"):
            if f"{prefix}{key}" in logged:
                logged[f"{prefix}{key}"] = logged[f"{prefix}{key}"] / tokens if tokens else 0.0
        logged[f"{prefix}completion_length"] = logged[f"{prefix}completion_length"] / seqs if seqs else 0.0
        return logged


def tokenize_groups(groups: list[dict], fmt, max_length: int, max_prompt_length: int, where: str
                    ) -> tuple[list[list[Sample]], dict]:
    """Each group as a row of its samples (example: the group, seq: the sample's index in it), so a
    micro-batch holds whole groups (`train.micro_batch_size` counts prompts). A completion cut to
    nothing by `max_length` is left out and counted."""
    rows, cut, empty = [], 0, 0
    for g, group in enumerate(groups):
        try:
            short, completions, flags = encode_cut(fmt, group["prompt"], group["responses"], max_length,
                                                   max_prompt_length)
        except RowError as e:
            raise PrideError(f"{where} line {g + 1}: {e}") from None
        cut += sum(flags)
        row = []
        for j, kept in enumerate(completions):
            if not kept:
                empty += 1
                continue
            row.append(completion_sample(short, kept, seq=j, example=g))
        if row:
            rows.append(row)
    return rows, {"samples": sum(len(g["responses"]) for g in groups), "kept": sum(map(len, rows)),
                  "cut_to_max_length": int(cut), "skipped_empty_completion": empty}


def train_groups(ctx: StageContext, groups: list[dict]) -> dict:
    """One round of `online.objective` grpo or rloo on `groups` ({prompt_id, prompt, responses,
    rewards, truncated}): tokenize, old (and reference) log-probs, advantages, train, save."""
    cfg, console, acc = ctx.cfg, ctx.console, ctx.acc
    s, objective = cfg.online.grpo, cfg.online.objective
    model, tokenizer, fmt = ctx.load_model()
    if cfg.preference.disable_dropout:
        disable_dropout(model)
    where = str(ctx.run_dir / GROUPS)
    rows, stats = tokenize_groups(groups, fmt, cfg.preference.max_length, cfg.preference.max_prompt_length, where)
    temperature = cfg.online.temperature if cfg.online.temperature > 0 else 1.0
    pad, batch, chunk = tokenizer.pad_token_id, cfg.preference.reference_batch_size, cfg.train.logps_chunk_size
    layout = group_layout(model)
    started = time.perf_counter()
    old = reference.token_logps(acc, model, rows, pad, batch, chunk, temperature, console, layout=layout)
    ref = None
    if s.beta:
        ref_model = reference.reference_policy(cfg, acc, model)
        ref = old if ref_model is None else reference.token_logps(acc, ref_model, rows, pad, batch, chunk, temperature,
                                                                  console, "reference log-probs", layout)
        del ref_model
    ctx.timing["reference_s"] = time.perf_counter() - started
    samples = [x for row in rows for x in row]  # in the order the passes return their values
    # RLOO's KL penalty in the reward: per sample, the sum of its (old - ref) token log-probs
    kl = [[0.0] * len(g["responses"]) for g in groups]
    for sample, o, r in zip(samples, old, ref or old):
        kl[sample.example][sample.seq] = sum(o) - sum(r)
    adv, flat = advantages([g["rewards"] for g in groups], objective, scale_rewards(cfg), kl, s.beta)
    for sample, values in zip(samples, old):
        g = groups[sample.example]
        sample.old_logps, sample.advantage = values, adv[sample.example][sample.seq]
        sample.masked = bool(s.mask_truncated_completions and g["truncated"][sample.seq])
    if ref is not None and ref is not old:
        for sample, values in zip(samples, ref):
            sample.ref_token_logps = values
    if s.drop_flat_groups:
        rows = [row for row in rows if not flat[row[0].example]]
    trained = [x for row in rows for x in row]
    stats.update(groups=len(groups), flat_groups=sum(flat), truncated=sum(sum(g["truncated"]) for g in groups),
                 masked=sum(bool(x.masked) for x in trained), trained_samples=len(trained))
    if acc.is_main_process:
        write_jsonl(ctx.run_dir / GROUPS, [{**g, "advantages": a, "flat": f} for g, a, f in zip(groups, adv, flat)])
    console.print(f"[bold]{objective}[/] {stats['groups']} prompts x {len(groups[0]['responses'])} samples: "
                  f"{stats['flat_groups']} flat (all scores equal){', dropped' if s.drop_flat_groups else ''}; "
                  f"{stats['truncated']} truncated{', masked' if s.mask_truncated_completions else ''}; "
                  f"{stats['trained_samples']} samples trained")
    if not trained or all(x.masked for x in trained):
        raise PrideError(f"{where}: no sample left to train on ({stats['flat_groups']} of {stats['groups']} prompts "
                         f"flat, {stats['masked']} masked): unset online.grpo.drop_flat_groups or "
                         "mask_truncated_completions, or raise online.temperature or online.max_new_tokens")
    ctx.write_json("data_stats.json", stats)
    objective_ = PolicyGradientObjective(s, objective, temperature, cfg.online.max_new_tokens, layout)
    result = ctx.train(model, objective_, rows, [], pad)
    return {**ctx.finish(result, tokenizer, stats, "grpo"), "round": round_metrics(groups, flat, stats)}


def group_layout(model) -> str:
    """A group's prompt computed once where the attention backend takes the block mask (as DPO's pairs)."""
    return "group" if takes_block_mask(model) else "repack"


def scale_rewards(cfg) -> str:
    """online.grpo.scale_rewards, or its objective's default (TRL's: group for GRPO, none for RLOO)."""
    s = cfg.online.grpo
    return s.scale_rewards or ("none" if cfg.online.objective == "rloo" else "group")


def round_metrics(groups: list[dict], flat: list[bool], stats: dict) -> dict:
    """What a round of the GRPO family reports beside its training curves (iteration.json)."""
    rewards = [r for g in groups for r in g["rewards"]]
    return {"reward_mean": statistics.fmean(rewards), "reward_std": statistics.stdev(rewards) if len(rewards) > 1 else 0.0,
            "flat_group_fraction": sum(flat) / len(groups), "truncated": stats["truncated"],
            "trained_samples": stats["trained_samples"]}


__all__ = ["PolicyGradientObjective", "train_groups", "tokenize_groups"]
