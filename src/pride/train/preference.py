"""`pride dpo`: the DPO loss family on preference pairs, through the one training loop.

Chosen and rejected sequences of a micro-batch go through the model in one forward,
re-packed into rows without padding; their summed completion log-probs feed
`pride.losses.preference_loss`. Reference log-probs are precomputed once (default) and
read from a table, so no reference model is held during training; `preference.reference=
live` keeps one (or, with LoRA, disables the adapter) for comparison.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from pride.config import Config, PreferenceSettings, write_resolved
from pride.data import load_rows
from pride.data.packing import Sample
from pride.data.preference import PairData, tokenize_pairs
from pride.errors import PrideError
from pride.logps import TokenLogps, attention_weight, sequence_logps
from pride.losses import NEEDS_WIN_PROB, REFERENCE_FREE, preference_loss
from pride.models import disable_dropout, load_model
from pride.reference import (PairLogps, cache_key, compute_pair_logps, model_fingerprint, read_cached, same_layout,
                             write_parquet)
from pride.train.loop import make_accelerator, run_identity, train
from pride.io import write_json
from pride.train.stage import (console_for, exclusive_run_dir, finish_stage, load_for_training, prepare_run_dir,
                               seed_everything)

METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected", "nll_loss")


@dataclass
class PairTables:
    """Per-pair values indexed by example id (train pairs first, then eval pairs)."""

    ref_chosen: torch.Tensor | None
    ref_rejected: torch.Tensor | None
    chosen_win_prob: torch.Tensor | None
    rejected_win_prob: torch.Tensor | None


class PreferenceObjective:
    metric_names = METRICS

    def __init__(self, settings: PreferenceSettings, tables: PairTables, live_reference=None, layout="repack",
                 attention_weight: float = 0.0):
        self.s = settings
        self.tables = tables
        self.live_reference = live_reference  # callable(batch) -> token logps, or None
        self.layout = layout  # shared | repack | split (see data.packing.collate)
        self.attention_weight = attention_weight

    def units(self, rows: list[list[Sample]]) -> float:
        return float(len(rows))  # pairs

    def pair_logps(self, token_logps: torch.Tensor, batch: dict):
        """Sequence sums and lengths, split into (chosen, rejected) aligned by pair."""
        seq = sequence_logps(token_logps.float(), batch["target_seq"], batch["n_seqs"])
        lengths = torch.bincount(batch["target_seq"], minlength=batch["n_seqs"])
        kind, example = batch["seq_kind"], batch["seq_example"]
        c = (kind == 0).nonzero(as_tuple=True)[0]
        r = (kind == 1).nonzero(as_tuple=True)[0]
        c, r = c[example[c].argsort()], r[example[r].argsort()]
        return seq[c], seq[r], lengths[c], lengths[r], example[c]

    def __call__(self, model, batch: dict):
        pi_w, pi_l, len_w, len_l, ex = self.pair_logps(model(**batch), batch)
        ref_w = ref_l = None
        if self.s.loss_type not in REFERENCE_FREE:
            if self.live_reference is not None:
                with torch.no_grad():
                    rw, rl, *_ = self.pair_logps(self.live_reference(batch), batch)
                ref_w, ref_l = rw.detach(), rl.detach()
            else:
                dev = pi_w.device
                ref_w = self.tables.ref_chosen.to(dev)[ex].float()
                ref_l = self.tables.ref_rejected.to(dev)[ex].float()
        p_w = p_l = None
        if self.s.loss_type in NEEDS_WIN_PROB:
            p_w = self.tables.chosen_win_prob.to(pi_w.device)[ex].float()
            p_l = self.tables.rejected_win_prob.to(pi_w.device)[ex].float()
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


def _win_probs(pairs: list, kept: list[int]) -> tuple[torch.Tensor, torch.Tensor] | None:
    probs = [(pairs[i].chosen_win_prob, pairs[i].rejected_win_prob) for i in kept]
    if not probs or any(p is None for pr in probs for p in pr):
        return None
    return torch.tensor([p[0] for p in probs]), torch.tensor([p[1] for p in probs])


def reference_logps(cfg: Config, acc, policy, tokenizer, data: PairData, where: list[str], path: Path,
                    console) -> PairLogps:
    """Load from the cache when it matches, else compute with the reference model and store."""
    ref_settings = cfg.model if cfg.preference.reference_model is None else cfg.model.model_copy(
        update={"path": cfg.preference.reference_model, "lora": None})
    key = cache_key(model_fingerprint(ref_settings, cfg.seed))
    cached = read_cached(path, data, key, warn=console.print)
    if cached is not None:
        console.print(f"reference log-probs: cached in {path}")
        if acc.is_main_process and not same_layout(path, data, where):  # re-align rows to this input
            write_parquet(path, data, cached, key, where)
        acc.wait_for_everyone()
        return cached
    if cfg.preference.reference_model is None:
        model = policy  # the starting policy is the reference: no second model in memory
    else:
        model = load_model(ref_settings, seed=cfg.seed, device=acc.device).to(acc.device)
    console.print(f"reference log-probs: computing for {len(data.rows)} pairs")
    ctx = model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()
    with ctx:
        out = compute_pair_logps(acc, model, data.rows, tokenizer.pad_token_id, cfg.preference.reference_batch_size,
                                 cfg.train.logps_chunk_size, pair_layout(cfg.preference, model),
                                 attention_weight(model.config))
    if model is not policy:
        del model
    if acc.is_main_process:
        write_parquet(path, data, out, key, where)
    acc.wait_for_everyone()
    return out


@exclusive_run_dir
def run_dpo(cfg: Config) -> dict:
    seed_everything(cfg.seed)
    s = cfg.preference
    acc = make_accelerator(cfg.train, cfg.output_dir, cfg.model.dtype)
    console = console_for(acc)
    run_dir = prepare_run_dir(cfg, acc, write_config=False)
    model, tokenizer, fmt = load_for_training(cfg, acc, console)
    model.to(acc.device)
    if s.disable_dropout:
        disable_dropout(model)
    layout = pair_layout(s, model, console)
    rows = load_rows(cfg.data, want="preference", seed=cfg.seed)
    train_data = tokenize_pairs(rows.train, fmt, s.max_length, s.max_prompt_length, on_bad_row=cfg.data.on_bad_row)
    eval_data = tokenize_pairs(rows.eval, fmt, s.max_length, s.max_prompt_length, first_example=len(train_data.rows),
                               on_bad_row=cfg.data.on_bad_row)
    stats = {**train_data.stats, "eval_pairs": len(eval_data.rows),
             **{k: v for k, v in rows.stats.items() if k != "bad_row_examples"}}
    console.print(f"[bold]{s.loss_type}[/] {stats['pairs']} pairs -> {stats['kept']} kept (skipped: "
                  f"{stats['skipped_empty_completion']} empty completion, {stats['skipped_identical']} identical, "
                  f"{stats['skipped_unrenderable']} the template cannot render; "
                  f"truncated {stats['truncated']})")
    if not train_data.rows:
        raise PrideError("no preference pair left after truncation and filtering")
    if acc.is_main_process:
        write_json(run_dir / "data_stats.json", stats)

    tables = PairTables(None, None, None, None)
    live = None
    if s.loss_type not in REFERENCE_FREE:
        if s.reference == "precomputed":
            parts = [reference_logps(cfg, acc, model, tokenizer, train_data, [r.where for r in rows.train],
                                     run_dir / "reference_logps.parquet", console)]
            if eval_data.rows:
                parts.append(reference_logps(cfg, acc, model, tokenizer, eval_data, [r.where for r in rows.eval],
                                             run_dir / "reference_logps_eval.parquet", console))
            tables.ref_chosen = torch.cat([p.chosen for p in parts])
            tables.ref_rejected = torch.cat([p.rejected for p in parts])
        else:
            live = _live_reference(cfg, acc, model)
    if s.loss_type in NEEDS_WIN_PROB:
        probs = [_win_probs(rows.train, train_data.kept)] + ([_win_probs(rows.eval, eval_data.kept)] if eval_data.rows else [])
        if any(p is None for p in probs):
            raise PrideError(f"loss_type {s.loss_type!r} needs chosen_win_prob and rejected_win_prob on every row")
        tables.chosen_win_prob = torch.cat([p[0] for p in probs])
        tables.rejected_win_prob = torch.cat([p[1] for p in probs])

    objective = PreferenceObjective(s, tables, live_reference=live, layout=layout,
                                    attention_weight=attention_weight(model.config))
    result = train(cfg.train, accelerator=acc, model=model, objective=objective, rows=train_data.rows,
                   eval_rows=eval_data.rows, pad_id=tokenizer.pad_token_id, run_dir=run_dir, seed=cfg.seed,
                   console=console, identity=run_identity(cfg), on_start=lambda: write_resolved(cfg, run_dir))
    return finish_stage(acc, result, tokenizer, run_dir, stats, console)


def pair_layout(s: PreferenceSettings, model, console=None) -> str:
    """How pairs are laid out: prompts shared where the attention backend takes a block mask."""
    attn = getattr(model.config, "_attn_implementation", "sdpa")
    if s.share_prompt and attn in ("sdpa", "eager"):
        return "shared"
    if s.share_prompt and console is not None:
        console.print(f"preference.share_prompt: {attn} cannot take the shared-prompt block mask; "
                      "each prompt is computed twice (padding-free rows)")
    return "repack" if s.padding_free else "split"


def _live_reference(cfg: Config, acc, policy):
    """A callable batch -> reference token log-probs, with a model held in memory."""
    s = cfg.preference
    if s.reference_model is None and hasattr(policy, "disable_adapter"):
        wrapper = TokenLogps(policy, cfg.train.logps_chunk_size)

        def with_adapter_off(batch):
            with policy.disable_adapter():
                return wrapper(**batch)

        return with_adapter_off
    if s.reference_model is None:
        ref = copy.deepcopy(policy).eval()  # the starting policy, frozen
    else:
        settings = cfg.model.model_copy(update={"path": s.reference_model, "lora": None,
                                                "gradient_checkpointing": False})
        ref = load_model(settings, seed=cfg.seed, device=acc.device).to(acc.device).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    wrapper = TokenLogps(ref, cfg.train.logps_chunk_size)
    return lambda batch: wrapper(**batch)
