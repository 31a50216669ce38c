"""How DPO's cost grows with sequence length and vocabulary size: pride (prompt shared and
not) and TRL, tokens/s and peak memory, drawn as benchmarks/scaling.png.

    python benchmarks/scaling.py                      # the sweep below, then the plot
    python benchmarks/scaling.py --plot-only          # redraw from benchmarks/results/scaling.json

Each point is `compare_trl.py --stage dpo --fixed-length L --vocab V` for one side: one pair
per step, 3 steps (the first untimed), every sequence L tokens (a quarter prompt), each side
in its own process under a memory cap, so running out of memory is recorded as such.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "scaling.json"
PLOT = HERE / "scaling.png"
LENGTHS = [512, 1024, 2048, 4096, 8192]  # at the 128k vocabulary
VOCABS = [32000, 128256, 256000]  # at 2048 tokens
SIDES = ["pride", "pride-unshared", "trl"]


def point(side: str, length: int, vocab: int, limit: float) -> dict:
    cmd = [sys.executable, str(HERE / "compare_trl.py"), "--stage", "dpo", "--shape", "small-128k", "--side", side,
           "--fixed-length", str(length), "--vocab", str(vocab), "--steps", "3", "--warmup", "1", "--batch", "1",
           "--rows", "4", "--memory-limit-gib", str(limit), "--out", f"runs/bench-scaling/{side}-{length}-{vocab}"]
    cmd += ["--share-all"] if side == "pride" else []  # the shared layout itself, not the choice between layouts
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:  # killed or crashed: recorded, not hidden
        return {"side": side, "fixed_length": length, "vocab": vocab, "failed": proc.stderr.strip()[-300:]}
    return json.loads(line[7:])


def plot(results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for col, (key, xs, fixed, label) in enumerate((("fixed_length", LENGTHS, ("vocab", 128256), "sequence length (tokens)"),
                                                    ("vocab", VOCABS, ("fixed_length", 2048), "vocabulary size"))):
        for side, style in zip(SIDES, ("o-", "s--", "^-")):
            rows = {r[key]: r for r in results if r["side"] == side and r.get(fixed[0]) == fixed[1]}
            for row, metric, name in ((0, "tokens_per_s", "tokens/s"), (1, "peak_memory_mib", "peak memory (MiB)")):
                pts = [(x, rows[x][metric]) for x in xs if x in rows and metric in rows[x]]
                ax = axes[row][col]
                if pts:
                    ax.plot(*zip(*pts), style, label=side)
                oom = [x for x in xs if x in rows and (rows[x].get("out_of_memory") or rows[x].get("failed"))]
                for x in oom:
                    ax.axvline(x, color="grey", alpha=0.3)
                    ax.annotate(f"{side}: out of memory", (x, ax.get_ylim()[1]), fontsize=7, rotation=90, va="top")
                ax.set_xscale("log", base=2)
                ax.set_xticks(xs, [str(x) for x in xs])
                ax.set_ylabel(name)
                ax.set_xlabel(label)
                ax.legend(fontsize=8)
    axes[0][0].set_title("DPO, small Llama-3-like model, vocabulary 128,256")
    axes[0][1].set_title("DPO, sequences of 2048 tokens")
    fig.suptitle("pride vs TRL on CPU (2 cores): one pair per step", fontsize=10)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--memory-limit-gib", type=float, default=20.0)
    args = ap.parse_args()
    if not args.plot_only:
        results = []
        grid = [(n, 128256) for n in LENGTHS] + [(2048, v) for v in VOCABS if v != 128256]
        for length, vocab in grid:
            for side in SIDES:
                r = point(side, length, vocab, args.memory_limit_gib)
                results.append(r)
                print(json.dumps(r), flush=True)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    plot(json.loads(RESULTS.read_text()))
    print(f"wrote {PLOT}")


if __name__ == "__main__":
    main()
