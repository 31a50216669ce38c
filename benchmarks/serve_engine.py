"""The engine before and after issue 34, side by side in one run: seeded requests that batch,
a prompt's n samples sharing one prefill.

"before" is pride at commit 453c5fc (a git worktree of it, put on PYTHONPATH), "after" the
working tree; both on the ~5M-parameter Llama of serve_load.py saved to a directory, every
server and process on one thread.

1. 16 clients, each sending 4 greedy chat completions with `seed: 0` (as `pride eval` seeds
   every request), 64 new tokens each (`ignore_eos`): generated tokens/s. "after" also with
   `--strict-seeds` (a lane per seeded request, as before), and unseeded for reference.
2. n=1 against n=8 samples (temperature 1) of one 1,504-token prompt with `max_tokens: 1` on
   `/v1/completions`: seconds, the median of 3.
3. Online sampling in process (`EngineSampler`, as a round calls it): 16 prompts of about 600
   tokens, K=4 seeded samples, 32 new tokens: seconds, median of 3, and whether the texts
   equal the "before" texts.
4. `pride eval` through `pride serve` (task_metrics, 64 prompts, 64 new tokens, its default 8
   requests in flight, every request seeded): wall seconds of the command, server start-up
   included.

    python benchmarks/serve_engine.py      # writes benchmarks/results/serve_engine.json
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = "453c5fc"
CLIENTS, PER_CLIENT, NEW = 16, 4, 64

SAMPLER = """
import json, sys, time, torch
torch.set_num_threads(1)
from pride.config import ModelSettings, OnlineSettings
from pride.models import load_model_and_tokenizer
from pride.online.samplers import EngineSampler
model, tok, fmt = load_model_and_tokenizer(ModelSettings(path=sys.argv[1]))
prompts = [[{"role": "user", "content": f"{i}: " + "tell me about the sea and the sky " * 17}] for i in range(16)]
seeds = [[1000 * i + k for k in range(4)] for i in range(16)]
sampler = EngineSampler(model, tok, fmt, OnlineSettings(samples_per_prompt=4, temperature=1.0, max_new_tokens=32))
sampler.sample(prompts[:1], seeds[:1])
times = []
for _ in range(3):
    t = time.perf_counter(); texts = sampler.sample(prompts, seeds); times.append(time.perf_counter() - t)
print(json.dumps({"seconds": sorted(times)[1], "texts": texts,
                  "prompt_tokens": len(fmt.encode_prompt(prompts[0]))}))
"""


def env_for(version: str, base_src: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if version == "before":
        env["PYTHONPATH"] = str(base_src)
    return env


def serve(version: str, base_src: Path, model_dir: Path, *flags: str):
    from pride.eval.hosting import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pride", "serve", str(model_dir), "--port", str(port), "--threads",
                             "1", "--model-name", "m", *flags], env=env_for(version, base_src),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import httpx

    for _ in range(600):
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def seeded_clients(url: str, seed: int | None) -> float:
    import openai

    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=600)

    def one_client(c: int) -> int:
        tokens = 0
        for r in range(PER_CLIENT):
            extra = {"seed": seed} if seed is not None else {}
            out = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"Client {c}, request {r}: say something."}],
                temperature=0, max_tokens=NEW, extra_body={"ignore_eos": True}, **extra)
            tokens += out.usage.completion_tokens
        return tokens

    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        tokens = sum(pool.map(one_client, range(CLIENTS)))
    return tokens / (time.perf_counter() - start)


def n_samples(url: str, prompt: str) -> dict:
    import openai

    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=600)
    out = {}
    for n in (1, 8):
        times = []
        for _ in range(3):
            t = time.perf_counter()
            client.completions.create(model="m", prompt=prompt, max_tokens=1, n=n, temperature=1.0, seed=1)
            times.append(time.perf_counter() - t)
        out[f"n={n} s"] = round(statistics.median(times), 3)
    return out


def main() -> None:
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from serve_load import build_model

    tmp = Path(tempfile.mkdtemp(prefix="pride-serve-engine-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tmp / "base"), BASE], check=True,
                   capture_output=True)
    base_src = tmp / "base" / "src"
    where = subprocess.run([sys.executable, "-c", "import pride; print(pride.__file__)"], env=env_for("before", base_src),
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(base_src)), where  # "before" really runs the old code
    try:
        model_dir = tmp / "model"
        build_model(model_dir)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
        prompt = ("The quick brown fox jumps over the lazy dog. " * 40)[:1503]
        prompt_tokens = len(tok(prompt)["input_ids"])
        results: dict = {}
        for version, flags in (("before", ()), ("after", ()), ("after --strict-seeds", ("--strict-seeds",))):
            code = "before" if version == "before" else "after"
            proc, url = serve(code, base_src, model_dir, *flags)
            try:
                r = {"16 seeded greedy clients, tokens/s": round(seeded_clients(url, 0))}
                if version != "after --strict-seeds":
                    r["16 unseeded greedy clients, tokens/s"] = round(seeded_clients(url, None))
                    r.update(n_samples(url, prompt))
                results[version] = r
                print(version, r, flush=True)
            finally:
                proc.terminate()
                proc.wait(30)
        texts = {}
        for version in ("before", "after"):
            out = subprocess.run([sys.executable, "-c", SAMPLER, str(model_dir)], env=env_for(version, base_src),
                                 capture_output=True, text=True, check=True)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            texts[version] = got["texts"]
            results[version]["online sampling in process, K=4, s"] = round(got["seconds"], 2)
            results[version]["online sampling prompt tokens"] = got["prompt_tokens"]
        same = sum(a == b for pa, pb in zip(texts["before"], texts["after"]) for a, b in zip(pa, pb))
        results["after"]["online sampling texts equal to before"] = f"{same} of {sum(map(len, texts['after']))}"
        refs = tmp / "references.jsonl"
        refs.write_text("".join(json.dumps({"prompt": f"Describe item {i} of the list, briefly.",
                                            "reference": f"Item {i} is a thing."}) + "\n" for i in range(64)))
        for version in ("before", "after"):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "pride", "eval", str(ROOT / "examples" / "configs" / "eval.yaml"),
                            f"model.path={model_dir}", f"eval.output_dir={tmp / ('eval-' + version)}",
                            f"eval.task_metrics.references={refs}", f"eval.generation.task_metrics.max_new_tokens={NEW}"],
                           env=env_for(version, base_src), check=True, capture_output=True, cwd=tmp)
            results[version]["pride eval (64 prompts through pride serve), s"] = round(time.perf_counter() - t, 1)
            print(version, "pride eval", results[version]["pride eval (64 prompts through pride serve), s"], flush=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "base")],
                       capture_output=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "torch": torch.__version__, "before": BASE, "threads": 1,
            "n-samples prompt tokens": prompt_tokens}
    (ROOT / "benchmarks" / "results" / "serve_engine.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    keys = list(dict.fromkeys(k for r in results.values() for k in r))
    print("| | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for k in keys:
        print(f"| {k} | " + " | ".join(str(r.get(k, "")) for r in results.values()) + " |")


if __name__ == "__main__":
    main()
