"""`pride demo`: the main job on the embedded default (a toy task, a tiny model, one CPU).

The training stages are not built yet, so the demo shows what exists: it writes the toy
task's data, then renders it through the tiny Llama's chat template with the trained
tokens highlighted (`pride data inspect`).
"""

from __future__ import annotations

import json
from pathlib import Path

from pride.config import load_config, write_resolved
from pride.demo.task import make_conversations


def run_demo(output: str) -> int:
    from pride.data.inspect import inspect

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "sft.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for row in make_conversations(200, seed=0):
            f.write(json.dumps(row) + "\n")
    cfg = load_config(None, [f"model.path=tiny:llama", f"data.sources.0.path={data}", f"output_dir={out}"])
    write_resolved(cfg, out)
    inspect(cfg, n=2)
    print(f"demo data and config written to {out}")
    return 0
