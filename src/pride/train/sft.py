"""`pride sft`: supervised fine-tuning with packing and assistant-only loss."""

from __future__ import annotations

from pride.config import Config, write_resolved
from pride.data import load_rows
from pride.data.packing import Sample
from pride.data.sft import build_rows, tokenize_conversations
from pride.logps import TokenLogps
from pride.train.loop import make_accelerator, run_identity, train
from pride.io import write_json
from pride.train.stage import (console_for, exclusive_run_dir, finish_stage, load_for_training, prepare_run_dir,
                               seed_everything)


class SftObjective:
    """Negative log-likelihood summed over trained tokens (the loop divides by the step's total)."""

    metric_names = ()
    layout = "rows"  # already packed
    attention_weight = 0.0

    def units(self, rows: list[list[Sample]]) -> float:
        return float(sum(s.n_targets for row in rows for s in row))

    def __call__(self, model: TokenLogps, batch: dict):
        logps = model(**batch)
        return -logps.sum(), {}


def prepare_sft_rows(cfg: Config, fmt, rows: list) -> tuple[list[list[Sample]], dict]:
    samples, tok_stats = tokenize_conversations(rows, fmt, cfg.data.train_on, cfg.train.max_length,
                                                cfg.train.truncation, cfg.data.on_bad_row)
    packed, pack_stats = build_rows(samples, cfg.train.max_length, cfg.train.packing)
    return packed, {**tok_stats, **pack_stats}


@exclusive_run_dir
def run_sft(cfg: Config) -> dict:
    seed_everything(cfg.seed)
    acc = make_accelerator(cfg.train, cfg.output_dir, cfg.model.dtype)
    console = console_for(acc)
    run_dir = prepare_run_dir(cfg, acc, write_config=False)
    model, tokenizer, fmt = load_for_training(cfg, acc, console)
    data = load_rows(cfg.data, want="conversation", seed=cfg.seed)
    rows, stats = prepare_sft_rows(cfg, fmt, data.train)
    eval_rows, _ = prepare_sft_rows(cfg, fmt, data.eval) if data.eval else ([], {})
    stats.update({k: v for k, v in data.stats.items() if k != "bad_row_examples"})
    console.print(f"[bold]sft[/] {len(data.train)} conversations -> {stats['samples']} samples -> "
                  f"{stats['rows']} rows; packing efficiency {stats.get('packing_efficiency', 'n/a')}; "
                  f"truncated {stats['truncated']}, dropped {stats['dropped_too_long'] + stats['dropped_no_trained_tokens'] + stats['skipped_unrenderable']}"
                  f"{', skipped bad rows ' + str(stats['skipped_bad_rows']) if stats.get('skipped_bad_rows') else ''}")
    if acc.is_main_process:
        write_json(run_dir / "data_stats.json", stats)
    result = train(cfg.train, accelerator=acc, model=model, objective=SftObjective(), rows=rows,
                   eval_rows=eval_rows, pad_id=tokenizer.pad_token_id, run_dir=run_dir, seed=cfg.seed,
                   console=console, identity=run_identity(cfg), on_start=lambda: write_resolved(cfg, run_dir))
    return finish_stage(acc, result, tokenizer, run_dir, stats, console)


__all__ = ["SftObjective", "run_sft", "prepare_sft_rows"]
