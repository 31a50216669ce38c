"""Online objectives on this CPU: pride's GRPO and online DPO against TRL's, and pride's per-round overhead.

    python benchmarks/online_objectives.py                 # everything below, one run
    python benchmarks/online_objectives.py --only overhead
    python benchmarks/online_objectives.py --only compare --sides "pride kto"   # one side, merged into the results
    python benchmarks/online_objectives.py --tables          # print BENCHMARKS.md's tables from the results file

The model: the ~5M-parameter Llama of serve_load.py (byte-level tokenizer, ChatML), trained
by `pride sft` for 2 epochs on the demo's SFT rows, so it writes the demo's format but still
gets most answers wrong (held-out rule score about 0.2): room for the rounds to improve it,
and groups whose K scores differ. Built once into --work and reused.

1. **pride vs TRL** on the demo's task ("Write the word W n times."), its rule as the reward
   function, K=4 samples per prompt at temperature 1, at most 40 new tokens, 128 prompts,
   32 completions (8 prompts) per optimizer step, so 16 steps and 512 samples on every side,
   learning rate 1e-4, cosine schedule with 10% warmup, one thread each:
   * `pride grpo`: `online.objective: grpo`, 2 rounds of 64 prompts (pride's engine samples a
     round's prompts from the round's starting model; `save_every: 2`: round 1 hands its
     weights to round 2 in memory), DAPO's loss and TRL's defaults otherwise;
   * `trl grpo`: `GRPOTrainer` (trl, transformers' `generate`: no vLLM on a CPU), its
     defaults (loss `dapo`, `scale_rewards` group, epsilon 0.2, beta 0), each step sampling its
     own 8 prompts from the current policy;
   * `pride kto`: `online.objective: kto`, the same rounds and K=4 samples as `pride grpo`
     (512 samples): each sample above its prompt's mean score desirable, below undesirable,
     ties dropped; 32 rows per step, `kto` loss, beta 0.1 (no TRL side: TRL has no online KTO);
   * `pride dpo` and `trl online-dpo`: online DPO on the same 128 prompts, two samples each
     (256 samples a side): pride with K=2 (best vs worst of the two), TRL's experimental
     `OnlineDPOTrainer` (two completions per prompt, the reward function picks), beta 0.1,
     16 prompts (32 completions) per step, 8 steps.
   Each side runs in its own process (peak RSS is its own), alternating, `--repeats` times;
   reported: wall time per 100 prompts (median), peak RSS, and the held-out rule score of the
   trained model (300 held-out prompts, 4 samples each at temperature 0.7, as the demo scores)
   with its 95% bootstrap interval, from the first repeat (every repeat is the same seeded run).
2. **Per-round overhead** of `pride online` at 64 prompts, K=4: everything in a round but
   generating, judging, the old/reference log-probs pass and the training loop (model loads
   and saves, tokenization, file writes), from `iteration.json`, for 3 rounds saved every
   round (`save_every: 1`) and kept in memory (`save_every: 3`).

Writes benchmarks/results/online_objectives.json and prints the tables of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPE = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=8,
             num_key_value_heads=4)
K, MAX_NEW, PROMPTS, PER_STEP, LR = 4, 40, 128, 32, 1e-4


def build(work: Path) -> Path:
    """The SFT'd ~5M model and the prompt files (cached in `work`)."""
    from pride.demo.task import sft_rows
    from pride.io import write_jsonl

    model = work / "sft" / "model"
    if (model / "model.safetensors").exists():
        return model
    write_jsonl(work / "data" / "sft.jsonl", sft_rows(3000, 0))
    cfg = work / "sft.yaml"
    cfg.write_text(json.dumps({"model": {"path": "tiny:llama", "tiny": SHAPE},
                               "data": {"sources": [{"path": str(work / "data" / "sft.jsonl")}]},
                               "train": {"learning_rate": 1e-3, "epochs": 2, "micro_batch_size": 8, "max_length": 512,
                                         "warmup_ratio": 0.05}, "output_dir": str(work / "sft"), "seed": 0}))
    subprocess.run([sys.executable, "-m", "pride", "sft", str(cfg)], check=True, cwd=ROOT)
    return model


def prompts(n: int, seed: int) -> list[str]:
    from pride.demo.task import make_prompt

    rng = random.Random(seed)
    return [make_prompt(rng)[0] for _ in range(n)]


def reward(prompts, completions, **_) -> list[float]:
    """The demo's rule judge as a TRL reward function (conversational completions)."""
    from pride.demo.task import judge

    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    users = [p[-1]["content"] if isinstance(p, list) else p for p in prompts]
    return [judge(u, t.strip()) for u, t in zip(users, texts)]


# ---------------------------------------------------------------- one side, in its own process


def side_pride(objective: str, model: Path, work: Path, out: Path) -> None:
    from pride.cli import main

    rows = [{"prompt": p} for p in prompts(PROMPTS, 7)]
    data = work / "data" / "bench_prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    k = 2 if objective == "dpo" else K
    # a step's micro-batch: prompts (a group for grpo, a pair for dpo) or kto's rows (samples)
    per_step = PER_STEP if objective == "kto" else PER_STEP // k
    args = ["online", str(work / "empty.yaml"), f"model.path={model}", f"data.sources.0.path={data}",
            "data.shuffle=false", f"output_dir={out}", "online.iterations=2", "online.prompt_split=split",
            f"online.samples_per_prompt={k}", "online.temperature=1.0", f"online.max_new_tokens={MAX_NEW}",
            "online.generation_batch_size=16", "online.judge.function=online_objectives:judge_one",
            f"online.objective={objective}", "online.save_every=2", f"train.learning_rate={LR}",
            f"train.micro_batch_size={per_step}", "train.warmup_ratio=0.1", "seed=0"]
    assert main(args) == 0


def judge_one(prompt: str, response: str) -> float:
    from pride.demo.task import judge

    return judge(prompt, response)


def side_trl(kind: str, model: Path, out: Path) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model)
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts(PROMPTS, 7)])
    common = dict(output_dir=str(out), learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=0.1,
                  num_train_epochs=1, use_cpu=True, report_to="none", save_strategy="no", logging_steps=4,
                  bf16=False, fp16=False, temperature=1.0, seed=0)
    if kind == "grpo":
        import trl

        args = trl.GRPOConfig(per_device_train_batch_size=PER_STEP, num_generations=K, max_completion_length=MAX_NEW,
                              **common)
        trainer = trl.GRPOTrainer(model=str(model), reward_funcs=reward, args=args, train_dataset=ds,
                                  processing_class=tok)
    else:
        from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

        args = OnlineDPOConfig(per_device_train_batch_size=PER_STEP // 2, beta=0.1, max_new_tokens=MAX_NEW, **common)
        trainer = OnlineDPOTrainer(model=str(model), reward_funcs=reward, args=args, train_dataset=ds,
                                   processing_class=tok)
    trainer.train()
    trainer.save_model(str(out / "model"))
    tok.save_pretrained(out / "model")


def run_side(name: str, model: Path, work: Path, out: Path) -> dict:
    """`name` in a fresh process: wall seconds, peak RSS and where its model went."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import online_objectives as b; "
            f"from pathlib import Path; import torch; torch.set_num_threads(1); "
            + (f"b.side_pride({name.split()[1]!r}, Path({str(model)!r}), Path({str(work)!r}), Path({str(out)!r}))"
               if name.startswith("pride") else
               f"b.side_trl({name.split()[1]!r}, Path({str(model)!r}), Path({str(out)!r}))")
            + "; print([line for line in open('/proc/self/status') if line.startswith('VmHWM')][0])")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "PRIDE_PROGRESS_SECONDS": "600"}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=work)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: {proc.stderr[-3000:]}")
    # VmHWM: this process's own peak RSS (ru_maxrss would report the parent's when that is higher: Linux
    # keeps it across fork and exec)
    peak = int(next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("VmHWM")))
    trained = out / ("iteration-2" if name.startswith("pride") else "") / "model"
    return {"seconds": seconds, "per_100_prompts": seconds / PROMPTS * 100, "peak_rss_mib": peak / 1024,
            "model": str(trained)}


def held_out(model: str) -> dict:
    import numpy as np

    from pride.demo.evaluate import bootstrap_ci, held_out_answers, rule_scores

    rng = random.Random(1_000_003)
    questions = [__import__("pride.demo.task", fromlist=["make_prompt"]).make_prompt(rng)[0] for _ in range(300)]
    per = rule_scores(questions, held_out_answers(model, questions, samples=4, seed=0))
    lo, hi = bootstrap_ci(per, seed=0)
    return {"score": float(np.mean(per)), "ci": [lo, hi]}


SIDES = ["pride grpo", "trl grpo", "pride kto", "pride dpo", "trl online-dpo"]


def compare(model: Path, work: Path, repeats: int, sides: list[str]) -> dict:
    runs: dict = {s: [] for s in sides}
    for r in range(repeats):
        for s in sides:  # alternating, so a slow minute of this shared machine hits every side alike
            runs[s].append(run_side(s, model, work, work / "runs" / s.replace(" ", "-")))
            if r == 0:
                runs[s][-1]["held_out"] = held_out(runs[s][-1]["model"])
            print(s, r, {k: v for k, v in runs[s][-1].items() if k != "model"}, flush=True)
    start = held_out(str(model))
    return {"sft_start": start, "sides": {s: {
        "per_100_prompts_median": statistics.median(x["per_100_prompts"] for x in v),
        "per_100_prompts": [round(x["per_100_prompts"], 1) for x in v],
        "peak_rss_mib_median": statistics.median(x["peak_rss_mib"] for x in v),
        "held_out": v[0]["held_out"]} for s, v in runs.items()}}


def overhead(model: Path, work: Path) -> dict:
    from pride.cli import main
    from pride.io import write_jsonl

    data = write_jsonl(work / "data" / "overhead_prompts.jsonl", [{"prompt": p} for p in prompts(64, 11)])
    out = {}
    for save_every in (1, 3):
        run = work / "runs" / f"overhead-save-every-{save_every}"
        import shutil

        shutil.rmtree(run, ignore_errors=True)
        assert main(["online", str(work / "empty.yaml"), f"model.path={model}", f"data.sources.0.path={data}",
                     f"output_dir={run}", "online.iterations=3", f"online.samples_per_prompt={K}",
                     "online.temperature=1.0", f"online.max_new_tokens={MAX_NEW}", "online.generation_batch_size=16",
                     "online.judge.function=online_objectives:judge_one", "online.objective=grpo",
                     f"online.save_every={save_every}", f"train.learning_rate={LR}", f"train.micro_batch_size={PER_STEP // K}",
                     "seed=0"]) == 0
        rounds = []
        for n in (1, 2, 3):
            info = json.loads((run / f"iteration-{n}" / "iteration.json").read_text())
            work_s = info["generate_s"] + info["judge_s"] + info["reference_s"] + info["loop_s"]
            whole = info["sample_s"] + info["judge_s"] + info["train_s"]
            rounds.append({"round": n, "seconds": round(whole, 2), "generate_s": info["generate_s"],
                           "judge_s": info["judge_s"], "reference_s": info["reference_s"], "loop_s": info["loop_s"],
                           "overhead_s": round(whole - work_s, 2), "overhead_share": round((whole - work_s) / whole, 3)})
        out[f"save_every_{save_every}"] = rounds
    return out


def tables(results: dict) -> str:
    """The tables of BENCHMARKS.md, from the results file."""
    m = results["machine"]
    lines = [f"{m['cpu']}, {m['cores']} cores, one thread a side; torch {m['torch']}, transformers "
             f"{m['transformers']}, trl {m['trl']}; {m['date']}; ~{results['model_parameters'] / 1e6:.1f}M parameters.", ""]
    if "compare" in results:
        c = results["compare"]
        start = c["sft_start"]
        lines += ["| side | samples | wall s per 100 prompts (median; each run) | peak RSS MiB | held-out rule score "
                  "[95% CI] |", "| --- | --- | --- | --- | --- |"]
        for side, v in c["sides"].items():
            samples = PROMPTS * (2 if "dpo" in side else K)
            h = v["held_out"]
            lines.append(f"| {side} | {samples} | {v['per_100_prompts_median']:.1f} ({', '.join(map(str, v['per_100_prompts']))}) | "
                         f"{v['peak_rss_mib_median']:.0f} | {h['score']:.3f} [{h['ci'][0]:.3f}, {h['ci'][1]:.3f}] |")
        lines += ["", f"The starting SFT model scores {start['score']:.3f} [{start['ci'][0]:.3f}, {start['ci'][1]:.3f}].", ""]
    if "overhead" in results:
        lines += ["| save_every | round | seconds | generate | judge | reference pass | training loop | overhead | share |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for key, rounds in results["overhead"].items():
            for r in rounds:
                lines.append(f"| {key.split('_')[-1]} | {r['round']} | {r['seconds']:.2f} | {r['generate_s']:.2f} | "
                             f"{r['judge_s']:.2f} | {r['reference_s']:.2f} | {r['loop_s']:.2f} | {r['overhead_s']:.2f} | "
                             f"{r['overhead_share']:.1%} |")
    return "\n".join(lines)


def machine() -> dict:
    import torch
    import trl
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "transformers": transformers.__version__,
            "trl": trl.__version__, "date": time.strftime("%Y-%m-%d")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-online-objectives"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=["compare", "overhead"], default=None)
    ap.add_argument("--sides", nargs="+", choices=SIDES, default=SIDES,
                    help="compare: which sides (the others' results stay as the results file has them)")
    ap.add_argument("--tables", action="store_true", help="print the tables from the results file, run nothing")
    args = ap.parse_args()
    if args.tables:
        print(tables(json.loads((ROOT / "benchmarks" / "results" / "online_objectives.json").read_text())))
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "empty.yaml").write_text("# from the command line\n")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    model = build(work)
    from safetensors import safe_open

    with safe_open(str(model / "model.safetensors"), framework="pt") as f:
        parameters = sum(f.get_slice(k).get_shape().numel() if hasattr(f.get_slice(k).get_shape(), "numel") else
                         __import__("math").prod(f.get_slice(k).get_shape()) for k in f.keys())
    results = {"machine": machine(), "model_parameters": parameters}
    if args.only in (None, "overhead"):
        import torch

        torch.set_num_threads(1)
        results["overhead"] = overhead(model, work)
        print(json.dumps(results["overhead"], indent=1), flush=True)
    if args.only in (None, "compare"):
        results["compare"] = compare(model, work, args.repeats, args.sides)
        print(json.dumps(results["compare"], indent=1), flush=True)
    path = ROOT / "benchmarks" / "results" / "online_objectives.json"
    earlier = json.loads(path.read_text()) if path.exists() and args.only else {}
    if "compare" in results and args.sides != SIDES and "compare" in earlier:  # one side again: keep the others'
        sides = {**earlier["compare"]["sides"], **results["compare"]["sides"]}
        results["compare"]["sides"] = {s: sides[s] for s in SIDES if s in sides}
        results["compare"]["runs_of"] = {**earlier["compare"].get("runs_of", {}),
                                         **{s: results["machine"]["date"] for s in args.sides}}
    path.write_text(json.dumps({**earlier, **results}, indent=1) + "\n")
    print(f"wrote {path}\n")
    print(tables({**earlier, **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
