"""Online sampling: continuous batching against the static batches it replaced.

What an online DPO round asks of the engine: 64 prompts x K=5 samples, every sample seeded,
temperature 1, at most 256 new tokens, with `online.generation_batch_size` 16 (its default):
16 x 5 = 80 samples generated at a time. A random-init model says its end-of-turn token at
random, so answers end at very different lengths, as a policy's do.

* static batches: pride before continuous batching (the engine of commit 4e5ec82, read from
  git), called as the online loop called it then, a chunk of 16 prompts at a time: each
  chunk runs until its longest answer ends, its finished rows' slots left empty;
* continuous batching: the engine as it is, called as the online loop calls it now
  (`EngineSampler.stream`): all 64 prompts, 80 samples at a time, waiting prompts' samples
  prefilled once 5 slots are free and written into the finished rows' places in the cache.

Wall time on this shared 2-core machine varies by 10-20% from run to run, so each engine runs
5 times, alternating, and the table gives each run and the median; process CPU time is
recorded beside it.

One thread, two model sizes: `tiny:llama` as the demo's online rounds run it (0.1M
parameters: a step costs mostly its fixed overhead, so rows decoded together are nearly
free) and the ~5M-parameter Llama of serve_load.py (a row's own compute weighs more).

    python benchmarks/online_sampling.py

Writes benchmarks/results/online_sampling.json and prints the table of BENCHMARKS.md, and each
engine's forwards counted in one more (untimed) run: decode steps and the row-columns their
attention covered.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATIC_ENGINE = ("4e5ec82", "src/pride/serve/engine.py")
PROMPTS, CHUNK, K, MAX_NEW = 64, 16, 5, 256
REPEATS = 5  # each engine 5 times, alternating, the median reported


def static_engine_module():
    source = subprocess.run(["git", "-C", str(ROOT), "show", ":".join(STATIC_ENGINE)], check=True,
                            capture_output=True, text=True).stdout
    path = Path("/tmp") / f"pride_static_engine_{STATIC_ENGINE[0]}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("pride_static_engine", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def run(module, model, tok, prompts, chunk: int) -> dict:
    lengths = []

    def emit(event):
        if event[0] == "finish":
            lengths.append(event[3])

    extra = {"offline": True} if module.__name__ == "pride.engine" else {}
    engine = module.Engine(model, tok, max_batch_size=CHUNK * K, **extra)  # as EngineSampler makes it
    start, cpu = time.perf_counter(), time.process_time()
    for c in range(0, len(prompts), chunk):
        batch = object()
        engine.generate([module.Request(prompt_ids=ids, emit=emit, n=K, temperature=1.0, max_tokens=MAX_NEW,
                                        seeds=[1000 * (c + i) + k for k in range(K)], batch=batch)
                         for i, ids in enumerate(prompts[c:c + chunk])])
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"seconds": seconds, "cpu_seconds": cpu, "tokens": sum(lengths), "tokens_per_s": sum(lengths) / seconds,
            "tokens_per_cpu_s": sum(lengths) / cpu,
            "answer_tokens": {"min": min(lengths), "mean": sum(lengths) / len(lengths), "max": max(lengths)}}


def count_forwards(module, model, tok, prompts, chunk: int) -> dict:
    """One untimed run that counts the model's forwards: decode steps, the rows they decoded
    and the row-columns their attention covered (rows x cache width), and prefills."""
    counts = {"decode_steps": 0, "decoded_rows": 0, "attention_row_columns": 0, "prefill_forwards": 0}
    forward = model.forward

    def counting(*args, **kwargs):
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        if ids.shape[1] == 1:
            counts["decode_steps"] += 1
            counts["decoded_rows"] += ids.shape[0]
            counts["attention_row_columns"] += ids.shape[0] * mask.shape[1]
        else:
            counts["prefill_forwards"] += 1
        return forward(*args, **kwargs)

    model.forward = counting
    try:
        run(module, model, tok, prompts, chunk)
    finally:
        del model.forward  # the class's forward again
    return counts


def main() -> None:
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from serve_load import SHAPE

    import pride.engine
    from pride.tiny import tiny_model, tiny_tokenizer

    torch.set_num_threads(1)
    tok = tiny_tokenizer("llama")
    prompts = [tok.apply_chat_template([{"role": "user", "content": f"Prompt {i}: say something about {i * 37}."}],
                                       add_generation_prompt=True, tokenize=True, return_dict=False)
               for i in range(PROMPTS)]
    static = static_engine_module()
    results = {}
    for size, overrides in (("tiny:llama (the demo's)", {}), ("~5M Llama (serve_load.py)", SHAPE)):
        model = tiny_model("llama", seed=0, overrides=overrides, tokenizer=tok).eval()
        run(pride.engine, model, tok, prompts[:2], 2)  # warm-up
        runs: dict[str, list[dict]] = {}
        for _ in range(REPEATS):  # alternating, so a slow spell of the machine hits both
            runs.setdefault("static batches, 16 prompts a call (4e5ec82)", []).append(
                run(static, model, tok, prompts, CHUNK))
            runs.setdefault("continuous batching, 64 prompts in one call", []).append(
                run(pride.engine, model, tok, prompts, PROMPTS))
        results[size] = {label: {**sorted(rs, key=lambda r: r["tokens_per_s"])[REPEATS // 2],
                                 "tokens_per_s_each": [round(r["tokens_per_s"]) for r in rs],
                                 "tokens_per_cpu_s_median": sorted(r["tokens_per_cpu_s"] for r in rs)[REPEATS // 2]}
                         for label, rs in runs.items()}
        for label, (module, chunk) in {"static batches, 16 prompts a call (4e5ec82)": (static, CHUNK),
                                       "continuous batching, 64 prompts in one call": (pride.engine, PROMPTS)}.items():
            results[size][label]["forwards"] = count_forwards(module, model, tok, prompts, chunk)
        static_runs, continuous_runs = runs.values()
        results[size]["continuous / static, each repeat"] = [
            round(c["tokens_per_s"] / s["tokens_per_s"], 2) for s, c in zip(static_runs, continuous_runs)]
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(), "threads": 1,
            "prompts": PROMPTS, "generation_batch_size": CHUNK, "samples_per_prompt": K, "max_new_tokens": MAX_NEW}
    out = ROOT / "benchmarks" / "results" / "online_sampling.json"
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(f"| model | engine | tokens/s (median of {REPEATS}; each) | tokens per CPU second (median) | generated "
          "tokens | answer length min / mean / max |")
    print("|---|---|---|---|---|---|")
    for size, rows in results.items():
        for label, r in rows.items():
            if label.startswith("continuous / static"):
                continue
            a = r["answer_tokens"]
            print(f"| {size} | {label} | {r['tokens_per_s']:.0f} ({', '.join(map(str, r['tokens_per_s_each']))}) | "
                  f"{r['tokens_per_cpu_s_median']:.0f} | {r['tokens']} | {a['min']} / {a['mean']:.0f} / {a['max']} |")
    for size, rows in results.items():
        print(f"{size}: continuous / static tokens/s in each repeat: {rows['continuous / static, each repeat']}")
        for label, r in rows.items():
            if "forwards" in r:
                print(f"  {label}: {r['forwards']}")


if __name__ == "__main__":
    main()
