"""`pride demo`: the main job on the embedded default (a toy task, a tiny model, one CPU).

It runs the stages that exist so far: it writes the toy task's data (two-number addition),
shows one row through the tiny Llama's chat template with the trained tokens highlighted,
then fine-tunes `tiny:llama` on it with packing (SFT) and reports the loss curve.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from pride.config import load_config
from pride.demo.task import make_conversations


def run_demo(output: str) -> int:
    from pride.data.inspect import inspect
    from pride.train.sft import run_sft

    console = Console(soft_wrap=True)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "sft.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for row in make_conversations(2000, seed=0):
            f.write(json.dumps(row) + "\n")
    cfg = load_config(None, [
        "model.path=tiny:llama", "model.tiny.hidden_size=128", "model.tiny.intermediate_size=256",
        f"data.sources.0.path={data}", "data.eval_fraction=0.05", f"output_dir={out / 'sft'}",
        "train.learning_rate=3e-3", "train.epochs=2", "train.micro_batch_size=4", "train.max_length=512",
        "train.eval_steps=20", "train.save_steps=50", "seed=0",
    ])
    inspect(cfg, n=1, console=console)
    summary = run_sft(cfg)
    metrics = [json.loads(x) for x in (out / "sft" / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in metrics if "eval/loss" in m]
    console.print(f"[bold]SFT[/]: train loss {metrics[0]['loss']:.3f} -> {metrics[-1]['loss']:.3f}; "
                  f"held-out loss {evals[0]['eval/loss']:.3f} (step {evals[0]['step']}) -> "
                  f"{evals[-1]['eval/loss']:.3f} (step {evals[-1]['step']}); model: {summary['model']}")
    return 0
