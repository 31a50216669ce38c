"""Online sampling: continuous batching against the static batches it replaced.

What an online DPO round asks of the engine: 64 prompts x K=5 samples, every sample seeded,
temperature 1, at most 256 new tokens, with `online.generation_batch_size` 16 (its default):
16 x 5 = 80 samples generated at a time. A random-init model says its end-of-turn token at
random, so answers end at very different lengths, as a policy's do.

* static batches: pride before continuous batching (the engine of commit 4e5ec82, read from
  git), called as the online loop called it then, a chunk of 16 prompts at a time: each
  chunk runs until its longest answer ends, its finished rows' slots left empty;
* continuous batching: the engine as it is, called as the online loop calls it now
  (`EngineSampler.stream`): all 64 prompts, 80 samples at a time, a waiting prompt's samples
  taking the slots of finished ones at the next step.

One thread, two model sizes: `tiny:llama` as the demo's online rounds run it (0.1M
parameters: a step costs mostly its fixed overhead, so rows decoded together are nearly
free) and the ~5M-parameter Llama of serve_load.py (a row's own compute weighs more).

    python benchmarks/online_sampling.py

Writes benchmarks/results/online_sampling.json and prints the table of BENCHMARKS.md.
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
REPEATS = 3  # each engine 3 times, the median reported


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
    start = time.perf_counter()
    for c in range(0, len(prompts), chunk):
        batch = object()
        engine.generate([module.Request(prompt_ids=ids, emit=emit, n=K, temperature=1.0, max_tokens=MAX_NEW,
                                        seeds=[1000 * (c + i) + k for k in range(K)], batch=batch)
                         for i, ids in enumerate(prompts[c:c + chunk])])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": sum(lengths), "tokens_per_s": sum(lengths) / seconds,
            "answer_tokens": {"min": min(lengths), "mean": sum(lengths) / len(lengths), "max": max(lengths)}}


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
        results[size] = {label: {**sorted(rs, key=lambda r: r["seconds"])[REPEATS // 2],
                                 "seconds_each": [r["seconds"] for r in rs]} for label, rs in runs.items()}
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(), "threads": 1,
            "prompts": PROMPTS, "generation_batch_size": CHUNK, "samples_per_prompt": K, "max_new_tokens": MAX_NEW}
    out = ROOT / "benchmarks" / "results" / "online_sampling.json"
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print("| model | engine | seconds (median of 3) | generated tokens | tokens/s | answer length min / mean / max |")
    print("|---|---|---|---|---|---|")
    for size, rows in results.items():
        for label, r in rows.items():
            a = r["answer_tokens"]
            print(f"| {size} | {label} | {r['seconds']:.1f} | {r['tokens']} | {r['tokens_per_s']:.0f} | "
                  f"{a['min']} / {a['mean']:.0f} / {a['max']} |")


if __name__ == "__main__":
    main()
