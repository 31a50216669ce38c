"""pride vs TRL on the same model, data, batch size, lengths and precision.

    python benchmarks/compare_trl.py --stage dpo --shape small-128k --device cpu --steps 12
    python benchmarks/compare_trl.py --stage dpo --data long-prompt ...
    python benchmarks/compare_trl.py --stage dpo --shape 1b --device cuda --attn flash_attention_2 --peak-tflops 989
    python benchmarks/compare_trl.py --stage kto --shape small-128k --device cpu --steps 12
    python benchmarks/compare_trl.py --stage rm --shape small-128k --device cpu --steps 12

Each side runs in its own subprocess (clean peak-memory numbers) and prints one JSON line:
tokens/s (non-padding tokens of the timed steps, counted as the data's own tokens: a
shared prompt counts for both sequences), seconds/step, peak memory (CUDA max allocated on
GPU, the process's own peak RSS, VmHWM, on CPU); the parent then prints the ratios. DPO runs
three sides: `pride` (prompt computed once), `pride-unshared` (`preference.share_prompt=false`)
and `trl`. KTO (`KTOTrainer`) and the reward model (`RewardTrainer`) run `pride` and `trl`.

* Model: a random-init Llama-3-like model (`--shape`, `--vocab`), identical on every side.
* Data: random-letter texts (`--data standard`: prompts 30-600 tokens, answers 10-800;
  `long-prompt`: prompts 500-2000, answers 50-400; `--fixed-length N`: every sequence N
  tokens, a quarter prompt), tokenized by the byte-level `tiny:llama` tokenizer, so one
  character is one token and every side sees the same token ids.
* TRL at its best on GPU: `padding_free` with flash-attention 2 and Liger kernels when
  installed; MFU = tokens/s x 6 x parameters / (`--peak-tflops` x 1e12), the usual
  model-FLOPs utilisation (pride skips the LM head at prompt positions, so its useful
  FLOPs per token are fewer than 6N: the same formula on both sides compares speed).
* SFT: packing on both sides (BFD into rows of --max-length), loss on answer tokens.
  DPO and KTO: reference log-probs precomputed on both sides (before the timed steps); KTO's
  rows are the answers of the DPO data (alternately the chosen and the rejected one, labelled
  so), and each step also runs its mismatched rows for the KL term without gradients (both
  sides; pride over the step's rows, TRL over the device batch: the same rows at one process).
  Tokens counted: the rows' own, not the mismatched ones. Reward model: each pair's two
  sequences (prompt + answer + EOS), the same token ids on both sides, a score head on the
  same model, no truncation.
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
    "body-32k": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                     num_key_value_heads=2, vocab_size=32000),  # the transformer body dominates, not the LM head
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, head_dim=64),
}
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def lengths(rng: random.Random, low: int, high: int) -> int:
    """Chat-like: log-uniform between low and high (many short, some long)."""
    return int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))


def text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(n))


DATA = {  # (prompt, answer) token ranges, log-uniform
    "standard": ((30, 600), (10, 800)),
    "long-prompt": ((500, 2000), (50, 400)),  # LION/UltraFeedback-style multi-turn prompts
}


def make_data(stage: str, n: int, seed: int, data: str = "standard", fixed_length: int | None = None) -> list[dict]:
    """Rows of random letters (one token each); `fixed_length`: every sequence exactly that long,
    a quarter of it prompt (the scaling sweep)."""
    rng = random.Random(seed)
    (p_lo, p_hi), (a_lo, a_hi) = DATA[data]
    rows = []
    for _ in range(n):
        if fixed_length:
            p_len = fixed_length // 4
            a_len = c_len = r_len = fixed_length - p_len - 1  # + EOS
        else:
            p_len, a_len, c_len, r_len = (lengths(rng, p_lo, p_hi), lengths(rng, a_lo, a_hi),
                                          lengths(rng, a_lo, a_hi), lengths(rng, a_lo, a_hi))
        prompt = text(rng, p_len)
        if stage == "sft":
            rows.append({"prompt": prompt, "completion": text(rng, a_len)})
        elif stage == "kto":  # unpaired: one answer per prompt, labels alternating
            good = len(rows) % 2 == 0
            rows.append({"prompt": prompt, "completion": text(rng, c_len if good else r_len), "label": good})
        else:
            rows.append({"prompt": prompt, "chosen": text(rng, c_len), "rejected": text(rng, r_len)})
    return rows


def build(shape: str, device: str, vocab: int | None = None, attn: str = "sdpa"):
    import torch

    from pride.tiny import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer("llama")
    tok.chat_template = None
    overrides = {**SHAPES[shape], **({"vocab_size": vocab} if vocab else {})}
    model = tiny_model("llama", seed=0, overrides=overrides, tokenizer=tok)
    model.set_attn_implementation(attn)
    model.config.use_cache = False
    return model.to(device), tok, torch


def peak_memory(torch, device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    # VmHWM: this process's own peak RSS (ru_maxrss keeps the parent's peak across fork and exec on Linux)
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("VmHWM"))) / 1024  # KiB -> MiB


def summarize(side, args, step_times, batch_tokens, accumulation, torch, extra=None) -> dict:
    w = args.warmup
    timed = step_times[w:]
    tokens = sum(batch_tokens[w * accumulation:len(step_times) * accumulation])
    seconds = timed[-1] - step_times[w - 1] if w > 0 else timed[-1] - step_times[0]
    n = len(timed) if w > 0 else len(timed) - 1
    return {"side": side, "stage": args.stage, "shape": args.shape, "device": args.device, "steps": n,
            "data": args.data, "fixed_length": args.fixed_length, "accumulation": accumulation, "vocab": args.vocab or SHAPES[args.shape].get("vocab_size"),
            "tokens_per_s": tokens / seconds, "seconds_per_step": seconds / n,
            "peak_memory_mib": peak_memory(torch, args.device), **(extra or {})}


# ------------------------------------------------------------------ pride


class Counted:
    """An objective that also records the non-padding tokens of every micro-batch it sees."""

    def __init__(self, objective, counts: list):
        self.objective, self.counts = objective, counts
        self.metric_names = objective.metric_names
        self.layout, self.attention_weight = objective.layout, objective.attention_weight
        self.computed: list[int] = []  # tokens actually run (fewer with shared prompts)

    def units(self, rows):
        return self.objective.units(rows)

    def __call__(self, model, batch):
        self.counts.append(batch.n_tokens)
        self.computed.append(batch.n_computed or batch.n_tokens)
        return self.objective(model, batch)

    def __getattr__(self, name):  # the objective's own hooks (wrap, prepare, finish)
        return getattr(self.objective, name)


def run_pride(args) -> dict:
    from pride.config import PreferenceSettings, TrainSettings
    from pride.data.packing import IGNORE, Sample
    from pride.data.preference import pair_samples
    from pride.data.sft import build_rows
    from pride.logps import attention_weight
    from pride.reference import attach, compute_pair_logps
    from pride.train.loop import make_accelerator, train
    from pride.train.preference import PreferenceObjective
    from pride.train.sft import SftObjective

    model, tok, torch = build(args.shape, args.device, args.vocab, args.attn)
    cfg = TrainSettings(learning_rate=1e-5, max_steps=args.steps, micro_batch_size=args.batch, warmup_ratio=0.0,
                        max_length=args.max_length, mixed_precision="bf16" if args.device == "cuda" else "no",
                        max_grad_norm=1.0, logging_steps=10**6, resume="never",
                        gradient_accumulation_steps=args.accumulation)
    acc = make_accelerator(cfg, args.out)
    eos = tok.eos_token_id

    def ids(s):
        return tok(s, add_special_tokens=False)["input_ids"]

    data = make_data(args.stage, args.rows, args.seed, args.data, args.fixed_length)
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
    elif args.stage == "kto":
        rows, objective, extra = kto_rows(args, acc, cfg, model, tok, data, ids)
    elif args.stage == "rm":
        from pride.config import RewardSettings
        from pride.models import with_score_head
        from pride.scores import scored_sample
        from pride.train.reward import RewardObjective

        model = with_score_head(model, 0).to(args.device)
        model.set_attn_implementation(args.attn)
        rows = [[scored_sample(ids(r["prompt"] + r["chosen"]) + [eos], 0, i),
                 scored_sample(ids(r["prompt"] + r["rejected"]) + [eos], 1, i)] for i, r in enumerate(data)]
        objective, extra = RewardObjective(RewardSettings()), {}
    else:
        rows = [pair_samples(ids(r["prompt"]), ids(r["chosen"]) + [eos], ids(r["rejected"]) + [eos], example=i)
                for i, r in enumerate(data)]
        layout = "shared" if args.side == "pride" else "repack"  # pride-unshared: each prompt twice
        weight = 0.0 if args.share_all else attention_weight(model.config)  # as run_preference: share where it pays
        ref = compute_pair_logps(acc, model, rows, tok.pad_token_id, batch_size=args.batch, layout=layout,
                                 attention_weight=weight)
        attach(rows, ref)
        objective = PreferenceObjective(PreferenceSettings(loss_type="sigmoid", beta=0.1), layout=layout,
                                        attention_weight=weight)
        extra = {"layout": layout + ("-all" if layout == "shared" and args.share_all else "")}
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
    extra["computed_fraction"] = round(sum(objective.computed) / sum(objective.counts), 4)
    return summarize(args.side, args, step_times, batch_tokens, args.accumulation, torch, extra)


def kto_rows(args, acc, cfg, model, tok, data, ids):
    """KTO's rows with their reference sums, and the reference sums of every mismatched pair the
    timed run meets, as `pride kto` precomputes them (`pride.train.unpaired`)."""
    from pride.config import KtoSettings
    from pride.data.preference import completion_sample
    from pride.reference import compute_pair_logps
    from pride.train.unpaired import MismatchedPairs, UnpairedData, UnpairedObjective, needed_pairs

    eos = tok.eos_token_id
    pc = [(ids(r["prompt"]), ids(r["completion"]) + [eos]) for r in data]
    rows = [[completion_sample(p, c, 0 if r["label"] else 1, i)] for i, ((p, c), r) in enumerate(zip(pc, data))]
    unpaired = UnpairedData(rows, list(range(len(rows))), ["ok"] * len(rows), ids=pc)
    pairs = MismatchedPairs([unpaired], max_length=10**9)
    wanted = needed_pairs(list(range(len(rows))), [], cfg, acc.num_processes, args.seed, kl=True)
    keys = [key for ex in sorted(wanted) for key in wanted[ex]]
    ref = compute_pair_logps(acc, model, pairs.reference_rows(keys), tok.pad_token_id, batch_size=args.batch,
                             layout="shared")
    values = {key: (c, kl) for key, c, kl in zip(keys, ref.chosen.tolist(), ref.rejected.tolist())}
    for row in rows:
        if row[0].example in wanted:
            row[0].ref_logps = values[wanted[row[0].example][0]][0]
    pairs.reference = {key: kl for key, (_, kl) in values.items()}
    return rows, UnpairedObjective(KtoSettings(), pairs), {"reference_pairs": len(keys)}


# ------------------------------------------------------------------ TRL


def run_trl(args) -> dict:
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback

    model, tok, torch = build(args.shape, args.device, args.vocab, args.attn)
    data = make_data(args.stage, args.rows, args.seed, args.data, args.fixed_length)
    step_times, batch_tokens = [], []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if state.global_step == 0 and args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()

        def on_step_end(self, a, state, control, **kw):
            if args.device == "cuda":
                torch.cuda.synchronize()
            step_times.append(time.perf_counter())

    import importlib.util

    gpu_best = {}
    if args.device == "cuda":  # TRL configured at its best
        gpu_best = {"use_liger_kernel": importlib.util.find_spec("liger_kernel") is not None}
        if args.attn == "flash_attention_2" and args.stage == "dpo":
            gpu_best["padding_free"] = True
    common = dict(output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=args.batch,
                  gradient_accumulation_steps=args.accumulation, learning_rate=1e-5, lr_scheduler_type="constant",
                  warmup_steps=0, logging_steps=10**6, save_strategy="no", report_to="none",
                  use_cpu=args.device == "cpu", bf16=args.device == "cuda", seed=args.seed,
                  dataloader_num_workers=0, max_grad_norm=1.0, **gpu_best)
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
    elif args.stage == "kto":
        cfg = trl.KTOConfig(precompute_ref_log_probs=True, beta=0.1, max_length=None,
                            precompute_ref_batch_size=args.batch, **common)
        trainer = trl.KTOTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(data), processing_class=tok,
                                 callbacks=[Timer()])
    elif args.stage == "rm":
        from pride.models import with_score_head

        model = with_score_head(model, 0).to(args.device)
        model.set_attn_implementation(args.attn)
        eos = tok.eos_token_id

        def ids(s):
            return tok(s, add_special_tokens=False)["input_ids"]

        enc = [{"chosen_ids": ids(r["prompt"] + r["chosen"]) + [eos], "rejected_ids": ids(r["prompt"] + r["rejected"])
                + [eos]} for r in data]
        cfg = trl.RewardConfig(max_length=None, **common)
        trainer = trl.RewardTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(enc), processing_class=tok,
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
    return summarize("trl", args, step_times, batch_tokens, args.accumulation, torch)


# ------------------------------------------------------------------ driver


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=["sft", "dpo", "kto", "rm"], default="dpo")
    ap.add_argument("--shape", choices=list(SHAPES), default="small-128k")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps, warm-up included")
    ap.add_argument("--warmup", type=int, default=2, help="steps left out of the timing")
    ap.add_argument("--batch", type=int, default=4,
                    help="per micro-batch: SFT packed rows, DPO and reward-model pairs, KTO rows")
    ap.add_argument("--accumulation", type=int, default=1, help="micro-batches per optimizer step (both sides)")
    ap.add_argument("--max-length", type=int, default=2048, help="SFT packed row length")
    ap.add_argument("--rows", type=int, default=256, help="synthetic rows generated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", choices=list(DATA), default="standard", help="prompt and answer lengths")
    ap.add_argument("--fixed-length", type=int, default=None, help="every sequence this long (scaling sweep)")
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary size (default: the shape's)")
    ap.add_argument("--attn", default="sdpa", help="attention implementation (flash_attention_2 on GPU)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak (bf16 dense) for MFU")
    ap.add_argument("--memory-limit-gib", type=float, default=None,
                    help="cap each side's address space: out of memory becomes a result, not a killed machine")
    ap.add_argument("--side", choices=["both", "pride", "pride-unshared", "trl"], default="both")
    ap.add_argument("--sides", nargs="+", choices=["pride", "pride-unshared", "trl"], default=None,
                    help="which sides the parent runs (default: all; pride-unshared is DPO only)")
    ap.add_argument("--share-all", action="store_true",
                    help="pride side: share every prompt (no per-micro-batch choice of layout)")
    ap.add_argument("--out", default="runs/bench")
    args = ap.parse_args()
    if args.side != "both":
        os.makedirs(args.out, exist_ok=True)
        if args.memory_limit_gib:
            limit = int(args.memory_limit_gib * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        if args.device == "cpu":
            import torch

            torch.set_num_threads(os.cpu_count() or 1)
        try:
            result = run_trl(args) if args.side == "trl" else run_pride(args)
        except (MemoryError, RuntimeError) as e:
            if not isinstance(e, MemoryError) and "memory" not in str(e).lower():
                raise
            result = {"side": args.side, "stage": args.stage, "fixed_length": args.fixed_length, "data": args.data,
                      "vocab": args.vocab or SHAPES[args.shape].get("vocab_size"), "out_of_memory": True,
                      "memory_limit_gib": args.memory_limit_gib}
        if args.peak_tflops and "tokens_per_s" in result:
            model, _, _ = build(args.shape, "cpu", args.vocab)
            params = sum(p.numel() for p in model.parameters())
            result["mfu"] = result["tokens_per_s"] * 6 * params / (args.peak_tflops * 1e12)
        print("RESULT " + json.dumps(result), flush=True)
        return
    results = {}
    sides = ("pride", "pride-unshared", "trl") if args.stage == "dpo" else ("pride", "trl")
    sides = [s for s in sides if args.sides is None or s in args.sides]
    argv = sys.argv[1:]
    if "--sides" in argv:  # the children run one side each
        i = argv.index("--sides")
        j = i + 1
        while j < len(argv) and not argv[j].startswith("--"):
            j += 1
        argv = argv[:i] + argv[j:]
    for side in sides:
        cmd = [sys.executable, __file__, *argv, "--side", side, "--out", os.path.join(args.out, side)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.exit(f"{side} side failed:\n{proc.stderr[-4000:]}")
        results[side] = json.loads(line[7:])
        print(json.dumps(results[side]), flush=True)
    if "pride" not in results or "trl" not in results:
        return
    p, t = results["pride"], results["trl"]
    print(json.dumps({"ratio": "pride/trl", "stage": args.stage, "shape": args.shape, "device": args.device,
                      "tokens_per_s": p["tokens_per_s"] / t["tokens_per_s"],
                      "peak_memory": p["peak_memory_mib"] / t["peak_memory_mib"]}), flush=True)
    if "pride-unshared" in results:
        u = results["pride-unshared"]
        print(json.dumps({"ratio": "shared/unshared", "stage": args.stage, "data": args.data,
                          "tokens_per_s": p["tokens_per_s"] / u["tokens_per_s"],
                          "peak_memory": p["peak_memory_mib"] / u["peak_memory_mib"]}), flush=True)


if __name__ == "__main__":
    main()
