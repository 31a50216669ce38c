"""`pride sft`: supervised fine-tuning with packing and assistant-only loss."""

from __future__ import annotations

from pride.config import Config
from pride.data import load_rows
from pride.data.packing import Batch, Sample
from pride.data.sft import build_rows, tokenize_conversations
from pride.logps import TokenLogps
from pride.train.stage import StageContext


class SftObjective:
    """Negative log-likelihood summed over trained tokens (the loop divides by the step's total)."""

    metric_names = ()
    layout = "rows"  # already packed
    attention_weight = 0.0

    def units(self, rows: list[list[Sample]]) -> float:
        return float(sum(s.n_targets for row in rows for s in row))

    def __call__(self, model: TokenLogps, batch: Batch):
        logps = model(**batch.inputs())
        return -logps.sum(), {}


def prepare_sft_rows(cfg: Config, fmt, rows: list) -> tuple[list[list[Sample]], dict]:
    split = cfg.train.packing == "split"  # a long sample goes on over rows: nothing to truncate
    samples, tok_stats = tokenize_conversations(rows, fmt, cfg.data.train_on, 2**62 if split else cfg.train.max_length,
                                                cfg.train.truncation, cfg.data.on_bad_row)
    packed, pack_stats = build_rows(samples, cfg.train.max_length, cfg.train.packing)
    return packed, {**tok_stats, **pack_stats}


def run_sft(cfg: Config) -> dict:
    with StageContext.open(cfg) as ctx:
        model, tokenizer, fmt = ctx.load_model()
        data = load_rows(cfg.data, want="conversation", seed=cfg.seed)
        rows, stats = prepare_sft_rows(cfg, fmt, data.train)
        eval_rows, _ = prepare_sft_rows(cfg, fmt, data.eval) if data.eval else ([], {})
        stats.update({k: v for k, v in data.stats.items() if k != "bad_row_examples"})
        dropped = stats["dropped_too_long"] + stats["dropped_no_trained_tokens"] + stats["skipped_unrenderable"]
        split = (f"; split dropped {stats['split_dropped_tail_tokens']} tokens left under a row and "
                 f"{stats['split_dropped_untrained_rows']} rows over 90% untrained"
                 if "split_dropped_tail_tokens" in stats else "")
        ctx.console.print(f"[bold]sft[/] {len(data.train)} conversations -> {stats['samples']} samples -> "
                          f"{stats['rows']} rows; packing efficiency {stats.get('packing_efficiency', 'n/a')}; "
                          f"truncated {stats['truncated']}, dropped {dropped}{split}"
                          f"{', skipped bad rows ' + str(stats['skipped_bad_rows']) if stats.get('skipped_bad_rows') else ''}")
        ctx.write_json("data_stats.json", stats)
        result = ctx.train(model, SftObjective(), rows, eval_rows, tokenizer.pad_token_id)
        return ctx.finish(result, tokenizer, stats)


__all__ = ["SftObjective", "run_sft", "prepare_sft_rows"]
