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

    python benchmarks/online_sampling.py --servers

One round's sampling and judging through servers (issue 33), in one run on one machine, for
each of the two models above saved to a directory: a round of `SERVER_PROMPTS` prompts x K=4 seeded samples at
temperature 1, at most 64 new tokens, drawn (1) by the engine in process (`EngineSampler`),
(2) with `sampler: server` (`round_servers` starts `pride serve` on the directory; its start-up
is counted, and given apart), (3) with `sampler: openai` against a running `pride serve` at 1
and at 32 requests in flight; then the LLM judge (`LLMJudge`: every ordered pair of the K
answers, 12 requests a prompt of 700-1000 tokens) against a `pride serve` judge on the same
model, greedy, its answers capped at 256 tokens by `--max-tokens` (a judge writes its
reasons before the verdict; the random model never stops by itself) and prompts prefilled
8192 tokens a step (`--max-prefill-tokens`, a throughput server's setting, as vLLM's
max_num_batched_tokens), at 1 and 32 in flight. Prompts per second
for each. Writes benchmarks/results/online_servers.json and prints the table.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import os
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


SERVER_PROMPTS, SERVER_K, SERVER_NEW, JUDGED = 64, 4, 64, 8
JUDGE_SERVER = ["--max-tokens", "256", "--max-prefill-tokens", "8192"]


class _Ranks:
    """One process's Accelerator, as far as `round_servers` asks."""

    is_main_process = is_local_main_process = True
    process_index, num_processes = 0, 1

    def wait_for_everyone(self):
        pass


def servers() -> None:
    import tempfile

    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from serve_load import SHAPE

    from pride.tiny import tiny_model, tiny_tokenizer

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="pride-online-servers-"))
    tok = tiny_tokenizer("llama")
    every = {}
    for size, overrides in (("tiny:llama (the demo's)", {}), ("~5M Llama (serve_load.py)", SHAPE)):
        model_dir = tmp / str(len(every))
        model = tiny_model("llama", seed=0, overrides=overrides, tokenizer=tok)
        model.save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
        print(f"{size}: {sum(p.numel() for p in model.parameters())} parameters", flush=True)
        every[size] = server_round_figures(model_dir, tmp)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "torch": torch.__version__, "prompts": SERVER_PROMPTS,
            "samples_per_prompt": SERVER_K, "max_new_tokens": SERVER_NEW, "judged_prompts": JUDGED,
            "judge_server_flags": JUDGE_SERVER,
            "threads": "1 (this process, and each server's --threads 1)"}
    out = ROOT / "benchmarks" / "results" / "online_servers.json"
    out.write_text(json.dumps({"meta": meta, "results": every}, indent=1) + "\n")
    print("| model | phase | seconds | prompts | prompts/s |")
    print("|---|---|---|---|---|")
    for size, figures in every.items():
        for label, r in figures.items():
            if isinstance(r, dict) and "seconds" in r:
                print(f"| {size} | {label} | {r['seconds']:.1f} | {r['prompts']} | {r['prompts_per_s']:.2f} |")
    for size, figures in every.items():
        print(f"{size}: server start-up {figures['server start-up s']:.1f} s; " +
              "; ".join(f"{k}: {v:.1f}x" for k, v in figures["ratios"].items()))


def server_round_figures(model_dir: Path, tmp: Path) -> dict:
    from contextlib import contextmanager

    from pride.config import JudgeSettings, ModelSettings, OnlineSettings
    from pride.eval.hosting import hosted
    from pride.models import load_model_and_tokenizer
    from pride.online.judges import LLMJudge
    from pride.online.policy_servers import round_servers
    from pride.online.samplers import EngineSampler, OpenAISampler

    prompts = [[{"role": "user", "content": f"Prompt {i}: say something about {i * 37}."}] for i in range(SERVER_PROMPTS)]
    seeds = [[1000 * i + k for k in range(SERVER_K)] for i in range(SERVER_PROMPTS)]

    def settings(**kw):
        return OnlineSettings(samples_per_prompt=SERVER_K, temperature=1.0, max_new_tokens=SERVER_NEW, **kw)

    @contextmanager
    def pride_serve(name, *flags):
        with hosted(str(model_dir), name, "pride", model_dir / f"{name}.log", extra_args=["--threads", "1", *flags]) as url:
            yield url

    results = {}

    def timed(label, fn, prompts_done):
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
        results[label] = {"seconds": round(seconds, 2), "prompts": prompts_done,
                          "prompts_per_s": round(prompts_done / seconds, 2)}
        print(f"{label}: {seconds:.1f} s, {prompts_done / seconds:.2f} prompts/s", flush=True)
        return out

    model, tok, fmt = load_model_and_tokenizer(ModelSettings(path=str(model_dir)))
    in_process = EngineSampler(model, tok, fmt, settings())
    in_process.sample(prompts[:2], seeds[:2])  # warm-up
    samples = timed("sampler: transformers (the engine in process)", lambda: in_process.sample(prompts, seeds),
                    SERVER_PROMPTS)

    def server_round():
        start = time.perf_counter()
        with round_servers(_Ranks(), settings(sampler="server", server="pride", server_args=["--threads", "1"]),
                           str(model_dir), model_dir) as urls:
            results["server start-up s"] = round(time.perf_counter() - start, 2)
            return OpenAISampler(settings(sampler="server"), urls, "policy").sample(prompts, seeds)

    timed("sampler: server (pride serve started for the round)", server_round, SERVER_PROMPTS)
    with pride_serve("policy") as url:
        for c in (1, 32):
            sampler = OpenAISampler(settings(sampler="openai", sampler_url=url, sampler_concurrency=c), [url])
            timed(f"sampler: openai, {c} in flight (a running pride serve)", lambda: sampler.sample(prompts, seeds),
                  SERVER_PROMPTS)
    with pride_serve("judge", *JUDGE_SERVER) as url:
        for c in (1, 32):
            judge = LLMJudge(JudgeSettings(type="llm", url=url, model="judge", concurrency=c))
            timed(f"llm judge, {c} in flight (a pride serve judge)",
                  lambda: judge.judge(prompts[:JUDGED], samples[:JUDGED]), JUDGED)
    results["ratios"] = {
        "sampler: openai, 32 / 1 in flight": results["sampler: openai, 32 in flight (a running pride serve)"]
        ["prompts_per_s"] / results["sampler: openai, 1 in flight (a running pride serve)"]["prompts_per_s"],
        "llm judge, 32 / 1 in flight": results["llm judge, 32 in flight (a pride serve judge)"]["prompts_per_s"]
        / results["llm judge, 1 in flight (a pride serve judge)"]["prompts_per_s"]}
    return results


if __name__ == "__main__":
    servers() if "--servers" in sys.argv[1:] else main()
