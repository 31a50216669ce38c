"""pride vs TRL on the same model, data, batch size, lengths and precision.

    python benchmarks/compare_trl.py --stage dpo --shape small-128k --device cpu --steps 12

Each side runs in its own subprocess (clean peak-memory numbers) and prints one JSON line:
tokens/s (non-padding tokens of the timed steps), seconds/step, peak memory (CUDA max
allocated on GPU, peak RSS on CPU); the parent then prints the pride/TRL ratios.

* Model: a random-init Llama-3-like model (`--shape`), identical on both sides (same seed).
* Data: random-letter texts with chat-like lengths (prompts 30-600 tokens, answers 10-800),
  tokenized by the byte-level `tiny:llama` tokenizer, so one character is one token and
  both sides see exactly the same token ids; the model's vocabulary is Llama-3's 128,256.
* SFT: packing on both sides (BFD into rows of --max-length), loss on answer tokens.
  DPO: reference log-probs precomputed on both sides (before the timed steps).
* Timed: steps after --warmup; tokens are counted from the batches actually collated.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import time

SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    "small-128k": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
                       num_key_value_heads=2, vocab_size=128256),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, head_dim=64),
}
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def lengths(rng: random.Random, low: int, high: int) -> int:
    """Chat-like: log-uniform between low and high (many short, some long)."""
    return int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))


def text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(n))


def make_data(stage: str, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = text(rng, lengths(rng, 30, 600))
        if stage == "sft":
            rows.append({"prompt": prompt, "completion": text(rng, lengths(rng, 10, 800))})
        else:
            rows.append({"prompt": prompt, "chosen": text(rng, lengths(rng, 10, 800)),
                         "rejected": text(rng, lengths(rng, 10, 800))})
    return rows


def build(shape: str, device: str):
    import torch

    from pride.tiny import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer("llama")
    tok.chat_template = None
    model = tiny_model("llama", seed=0, overrides=SHAPES[shape], tokenizer=tok)
    model.config.use_cache = False
    return model.to(device), tok, torch


def peak_memory(torch, device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB


def summarize(side, args, step_times, batch_tokens, accumulation, torch, extra=None) -> dict:
    w = args.warmup
    timed = step_times[w:]
    tokens = sum(batch_tokens[w * accumulation:len(step_times) * accumulation])
    seconds = timed[-1] - step_times[w - 1] if w > 0 else timed[-1] - step_times[0]
    n = len(timed) if w > 0 else len(timed) - 1
    return {"side": side, "stage": args.stage, "shape": args.shape, "device": args.device, "steps": n,
            "tokens_per_s": tokens / seconds, "seconds_per_step": seconds / n,
            "peak_memory_mib": peak_memory(torch, args.device), **(extra or {})}


# ------------------------------------------------------------------ pride


class Counted:
    """An objective that also records the non-padding tokens of every micro-batch it sees."""

    def __init__(self, objective, counts: list):
        self.objective, self.counts = objective, counts
        self.metric_names = objective.metric_names
        self.layout = getattr(objective, "layout", "rows")

    def units(self, rows):
        return self.objective.units(rows)

    def __call__(self, model, batch):
        self.counts.append(batch["n_tokens"])
        return self.objective(model, batch)


def run_pride(args) -> dict:
    from pride.config import PreferenceSettings, TrainSettings
    from pride.data.packing import IGNORE, Sample
    from pride.data.preference import pair_samples
    from pride.data.sft import build_rows
    from pride.reference import compute_pair_logps
    from pride.train.loop import make_accelerator, train
    from pride.train.preference import PairTables, PreferenceObjective
    from pride.train.sft import SftObjective

    model, tok, torch = build(args.shape, args.device)
    cfg = TrainSettings(learning_rate=1e-5, max_steps=args.steps, micro_batch_size=args.batch, warmup_ratio=0.0,
                        max_length=args.max_length, mixed_precision="bf16" if args.device == "cuda" else "no",
                        max_grad_norm=1.0, logging_steps=10**6, resume="never")
    acc = make_accelerator(cfg, args.out)
    eos = tok.eos_token_id

    def ids(s):
        return tok(s, add_special_tokens=False)["input_ids"]

    data = make_data(args.stage, args.rows, args.seed)
    if args.stage == "sft":
        samples = []
        for i, r in enumerate(data):
            p, c = ids(r["prompt"]), ids(r["completion"]) + [eos]
            full = (p + c)[: args.max_length]
            labels = ([IGNORE] * (len(p) - 1) + c + [IGNORE])[: len(full) - 1] + [IGNORE]
            samples.append(Sample(full, labels, example=i))
        rows, stats = build_rows(samples, args.max_length, packing=True)
        objective = SftObjective()
        extra = {"packing_efficiency": stats["packing_efficiency"]}
    else:
        rows = [pair_samples(ids(r["prompt"]), ids(r["chosen"]) + [eos], ids(r["rejected"]) + [eos], example=i)
                for i, r in enumerate(data)]
        ref = compute_pair_logps(acc, model, rows, tok.pad_token_id, batch_size=args.batch)
        objective = PreferenceObjective(PreferenceSettings(loss_type="sigmoid", beta=0.1),
                                        PairTables(ref.chosen, ref.rejected, None, None))
        extra = {}
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step_times, batch_tokens = [], []
    objective = Counted(objective, batch_tokens)

    def on_step_end(step):
        if args.device == "cuda":
            torch.cuda.synchronize()
        step_times.append(time.perf_counter())

    train(cfg, accelerator=acc, model=model, objective=objective, rows=rows, eval_rows=None,
          pad_id=tok.pad_token_id, run_dir=args.out, seed=args.seed, on_step_end=on_step_end)
    return summarize("pride", args, step_times, batch_tokens, 1, torch, extra)


# ------------------------------------------------------------------ TRL


def run_trl(args) -> dict:
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback

    model, tok, torch = build(args.shape, args.device)
    data = make_data(args.stage, args.rows, args.seed)
    step_times, batch_tokens = [], []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if state.global_step == 0 and args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()

        def on_step_end(self, a, state, control, **kw):
            if args.device == "cuda":
                torch.cuda.synchronize()
            step_times.append(time.perf_counter())

    common = dict(output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=args.batch,
                  gradient_accumulation_steps=1, learning_rate=1e-5, lr_scheduler_type="constant",
                  warmup_steps=0, logging_steps=10**6, save_strategy="no", report_to="none",
                  use_cpu=args.device == "cpu", bf16=args.device == "cuda", seed=args.seed,
                  dataloader_num_workers=0, max_grad_norm=1.0)
    if args.stage == "sft":
        eos = tok.eos_token_id
        enc = []
        for r in data:
            p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
            c = tok(r["completion"], add_special_tokens=False)["input_ids"] + [eos]
            enc.append({"input_ids": (p + c)[: args.max_length],
                        "completion_mask": ([0] * len(p) + [1] * len(c))[: args.max_length]})
        cfg = trl.SFTConfig(packing=True, packing_strategy="bfd", max_length=args.max_length,
                            completion_only_loss=True, **common)
        trainer = trl.SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(enc), processing_class=tok,
                                 callbacks=[Timer()])
    else:
        cfg = trl.DPOConfig(precompute_ref_log_probs=True, beta=0.1, loss_type=["sigmoid"], max_length=None,
                            precompute_ref_batch_size=args.batch, **common)
        trainer = trl.DPOTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(data), processing_class=tok,
                                 callbacks=[Timer()])
    collate = trainer.data_collator

    def counting(examples):
        batch = collate(examples)
        if "attention_mask" in batch:
            batch_tokens.append(int(batch["attention_mask"].sum()))
        else:
            batch_tokens.append(int(batch["input_ids"].numel()))
        return batch

    trainer.data_collator = counting
    trainer.train()
    # the dataloader may collate one batch ahead of the step being run; counts are taken in order
    return summarize("trl", args, step_times, batch_tokens, 1, torch)


# ------------------------------------------------------------------ driver


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=["sft", "dpo"], default="dpo")
    ap.add_argument("--shape", choices=list(SHAPES), default="small-128k")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps, warm-up included")
    ap.add_argument("--warmup", type=int, default=2, help="steps left out of the timing")
    ap.add_argument("--batch", type=int, default=4, help="sequences (SFT: packed rows; DPO: pairs) per step")
    ap.add_argument("--max-length", type=int, default=2048, help="SFT packed row length")
    ap.add_argument("--rows", type=int, default=256, help="synthetic rows generated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--side", choices=["both", "pride", "trl"], default="both")
    ap.add_argument("--out", default="runs/bench")
    args = ap.parse_args()
    if args.side != "both":
        os.makedirs(args.out, exist_ok=True)
        if args.device == "cpu":
            import torch

            torch.set_num_threads(os.cpu_count() or 1)
        result = run_pride(args) if args.side == "pride" else run_trl(args)
        print("RESULT " + json.dumps(result), flush=True)
        return
    results = {}
    for side in ("pride", "trl"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--side", side, "--out", os.path.join(args.out, side)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.exit(f"{side} side failed:\n{proc.stderr[-4000:]}")
        results[side] = json.loads(line[7:])
        print(json.dumps(results[side]), flush=True)
    p, t = results["pride"], results["trl"]
    print(json.dumps({"ratio": "pride/trl", "stage": args.stage, "shape": args.shape, "device": args.device,
                      "tokens_per_s": p["tokens_per_s"] / t["tokens_per_s"],
                      "peak_memory": p["peak_memory_mib"] / t["peak_memory_mib"]}), flush=True)


if __name__ == "__main__":
    main()
