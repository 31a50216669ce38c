"""Serving under load: pride serve against transformers' own servers, side by side in one run.

A ~5M-parameter random-init Llama (byte-level tokenizer, Llama-3 chat template) is saved to a
model directory; each server is started on it as its own process with one thread
(OMP_NUM_THREADS=1, and `--threads 1` for pride), then 1, 8, 32 and 64 clients stream chat
completions at it (64 new tokens each, temperature 1), each client sending its next request
when the last is done. Measured per server and client count: generated tokens/s, p50/p95
latency and time to first token (TTFT: to the first chunk with text), and the server's peak
RSS (VmHWM). The first request of every client arrives at once, a burst whose prompts must
all be prefilled before the last of them gets a token: its TTFT is reported apart
(`burst_ttft_p95`); the other percentiles are over the requests after it (steady load).
"plain generate" is one `model.generate` call per request, one after another, in this
process (1 client).

    python benchmarks/serve_load.py                      # all servers, 1/8/32/64 clients
    python benchmarks/serve_load.py --servers pride --clients 64

Writes benchmarks/results/serve_load.json and prints the markdown table of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPE = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=8,
             num_key_value_heads=4)
NEW_TOKENS = 64
SERVERS = {
    "pride": lambda model, port: [sys.executable, "-m", "pride", "serve", model, "--port", str(port), "--threads", "1"],
    "transformers serve": lambda model, port: [sys.executable, "-m", "transformers.cli.transformers", "serve", model,
                                               "--port", str(port), "--device", "cpu"],
    "transformers serve --continuous-batching": lambda model, port: [
        sys.executable, "-m", "transformers.cli.transformers", "serve", model, "--port", str(port), "--device", "cpu",
        "--continuous-batching"],
}


def build_model(directory: Path) -> int:
    from pride.tiny import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer("llama")
    model = tiny_model("llama", seed=0, overrides=SHAPE, tokenizer=tok)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def messages(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Question {i}: tell me about the number {i * 7919 % 1000}."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one(client, base: str, name: str, i: int, tok) -> dict:
    body = {"model": name, "messages": messages(i), "max_tokens": NEW_TOKENS, "temperature": 1.0, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, text, usage = None, "", None
    async with client.stream("POST", base + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    first = first or time.perf_counter()
                    text += piece
    end = time.perf_counter()
    tokens = usage if usage is not None else len(tok(text, add_special_tokens=False)["input_ids"])
    return {"latency": end - start, "ttft": (first or end) - start, "tokens": tokens}


async def load(base: str, name: str, clients: int, requests: int, tok) -> dict:
    import httpx

    results: list[dict] = []
    counter = iter(range(requests))

    async def worker(client):
        first = True
        for i in counter:
            results.append({**await one(client, base, name, i, tok), "burst": first})
            first = False

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await one(client, base, name, 10_000, tok)  # warm-up
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - start
    return summarize(results, wall)


def summarize(results: list[dict], wall: float) -> dict:
    def pct(values, q):
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]

    steady = [r for r in results if not r.get("burst")] or results
    lat, ttft = [r["latency"] for r in steady], [r["ttft"] for r in steady]
    burst = [r["ttft"] for r in results if r.get("burst")]
    return {"requests": len(results), "tokens": sum(r["tokens"] for r in results), "wall_s": wall,
            "tokens_per_s": sum(r["tokens"] for r in results) / wall,
            "latency_p50": pct(lat, 50), "latency_p95": pct(lat, 95), "ttft_p50": pct(ttft, 50),
            "ttft_p95": pct(ttft, 95), "burst_ttft_p95": pct(burst, 95) if burst else None}


def peak_rss_gb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def run_server(label: str, model_dir: Path, clients: list[int], per_client: int, tok, log: Path) -> dict:
    import httpx

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as out:
        proc = subprocess.Popen(SERVERS[label](str(model_dir), port), env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"{label} exited: see {log}")
            time.sleep(0.2)
        name = httpx.get(base + "/v1/models").json()["data"][0]["id"] if label == "pride" else str(model_dir)
        rows = {}
        for n in clients:
            rows[n] = asyncio.run(load(base, name, n, max(per_client * n, 8), tok))
            print(f"  {label}, {n} clients: {rows[n]['tokens_per_s']:.0f} tok/s", flush=True)
        return {"clients": rows, "peak_rss_gb": peak_rss_gb(proc.pid)}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def plain_generate(model_dir: Path, requests: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    results = []
    for i in [10_000, *range(requests)]:  # the first is a warm-up
        ids = tok.apply_chat_template(messages(i), add_generation_prompt=True, return_tensors="pt", return_dict=True)
        start = time.perf_counter()
        out = model.generate(**ids, max_new_tokens=NEW_TOKENS, do_sample=True, temperature=1.0, top_p=1.0)
        end = time.perf_counter()
        if i != 10_000:
            results.append({"latency": end - start, "ttft": float("nan"), "tokens": out.shape[1] - ids["input_ids"].shape[1]})
    return {"clients": {1: summarize(results, sum(r["latency"] for r in results))}}


def table(results: dict, clients: list[int]) -> str:
    def cell(r, n, fmt):
        row = r["clients"].get(n)
        return fmt(row) if row else "-"

    head = [f"{n} client{'s' * (n > 1)}" for n in clients]
    lines = ["| server | tok/s: " + " / ".join(head) + " | p50 / p95 latency (s) | p50 / p95 TTFT (s) | "
             "TTFT p95 of the first burst (s) | peak RSS |", "|---" * 6 + "|"]
    for label, r in results.items():
        tps = " / ".join(cell(r, n, lambda x: f"{x['tokens_per_s']:.0f}") for n in clients)
        per = lambda key: " / ".join(cell(r, n, lambda x: f"{x[key]:.2f}" if x[key] == x[key] else "-")  # noqa: E731
                                     for n in clients)
        lat = "; ".join(f"{n}: " + cell(r, n, lambda x: f"{x['latency_p50']:.2f} / {x['latency_p95']:.2f}")
                        for n in clients)
        ttft = "; ".join(f"{n}: " + cell(r, n, lambda x: f"{x['ttft_p50']:.2f} / {x['ttft_p95']:.2f}"
                                         if x["ttft_p50"] == x["ttft_p50"] else "-") for n in clients)
        burst = per("burst_ttft_p95") if label != "plain generate" else "-"
        rss = f"{r['peak_rss_gb']:.2f} GB" if "peak_rss_gb" in r else "-"
        lines.append(f"| {label} | {tps} | {lat} | {ttft} | {burst} | {rss} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servers", nargs="+", default=["plain generate", *SERVERS], choices=["plain generate", *SERVERS])
    ap.add_argument("--clients", nargs="+", type=int, default=[1, 8, 32, 64])
    ap.add_argument("--per-client", type=int, default=6, help="requests per client at each level")
    ap.add_argument("--pride-args", default="", help="more `pride serve` flags, e.g. '--max-prefill-tokens 256'")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_load.json")
    args = ap.parse_args()
    from pride.tiny import tiny_tokenizer

    tok = tiny_tokenizer("llama")
    if args.pride_args:
        pride = SERVERS["pride"]
        SERVERS["pride"] = lambda model, port: pride(model, port) + args.pride_args.split()
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "llama-5m"
        params = build_model(model_dir)
        print(f"model: {params / 1e6:.1f}M parameters, {model_dir}", flush=True)
        for label in args.servers:
            print(label, flush=True)
            if label == "plain generate":
                results[label] = plain_generate(model_dir, max(args.per_client, 8))
            else:
                results[label] = run_server(label, model_dir, args.clients, args.per_client, tok,
                                            Path(tmp) / f"{label.split()[0]}-{len(results)}.log")
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "parameters": params, "new_tokens": NEW_TOKENS, "threads": 1}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(table(results, args.clients))


if __name__ == "__main__":
    main()
