"""The README's demo table, regenerated from demo runs (`make readme-figures`), or checked.

    python benchmarks/readme_figures.py               # pride demo --seed 0/1/2, rewrite the table
    python benchmarks/readme_figures.py --check       # pride demo --seed 0, compare with its row

It also copies the first seed's scores.png and curves.png to docs/images/ (the README shows them).
The table and the sentence about it live between `<!-- demo-table:start -->` and
`<!-- demo-table:end -->` in README.md and are written only by this script, with the machine
that measured them.

The demo is deterministic on one machine, but not across CPUs: kernels differ in the last
bits between CPU generations and instruction sets, and sampling turns a last-bit difference
into another answer. Two machines that both report "AMD EPYC", AVX2 and 2 threads gave
different seed-0 rows (2026-11-22 and 2026-11-27), so no machine fingerprint can say when the
digits must match. `--check` (run by CI) therefore runs seed 0 and checks what the README
claims on every machine: DPO above SFT, and online DPO 2 and GRPO 2 above DPO, with intervals
that do not overlap, the learned judge's round 2 above online DPO 2 by that judge and below it by the rule,
and the untrained model at 0.000. Exit 1 when a claim fails.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
IMAGES = ROOT / "docs" / "images"
START, END = "<!-- demo-table:start -->", "<!-- demo-table:end -->"
COLUMNS = [("sft", "SFT"), ("dpo", "DPO"), ("online_dpo_1", "online DPO 1"), ("online_dpo_2", "online DPO 2"),
           ("sppo_2", "SPPO 2"), ("online_grpo_2", "GRPO 2"), ("online_rm_1", "learned judge 1"),
           ("online_rm_2", "learned judge 2")]
BRANCHES = (("online_dpo", "online DPO"), ("sppo", "SPPO"), ("online_grpo", "GRPO"))  # from DPO, equal samples


def run_demo(seed: int, out: Path) -> dict:
    """A fresh demo run: an earlier run's stages would be skipped as finished, timing nothing
    and showing what older code computed."""
    if out.exists():
        shutil.rmtree(out)
    subprocess.run([sys.executable, "-m", "pride", "demo", "--seed", str(seed), "--output", str(out)], check=True,
                   cwd=ROOT)
    return {r["stage"]: r for r in json.loads((out / "results.json").read_text())}


def row(seed: int, results: dict) -> str:
    def cell(stage):
        r = results[stage]
        return f"{r['score']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"

    wins = f"{results['dpo']['win_rate_vs_sft']['value']:.2f} / {results['online_dpo_2']['win_rate_vs_sft']['value']:.2f}"
    judged = " / ".join(f"{results[s]['learned_judge']:+.2f}" for s in ("dpo", "online_rm_1", "online_rm_2"))
    return f"| {seed} | " + " | ".join(cell(s) for s, _ in COLUMNS) + f" | {wins} | {judged} | {seconds(results)} |"


def seconds(results: dict) -> str:
    """Each branch's two rounds from DPO, in seconds (sampling, judging and training)."""
    return " / ".join(f"{sum(r['seconds'] for k, r in results.items() if k.startswith(b + '_')):.0f}"
                      for b, _ in BRANCHES)


def separated(results: dict, a: str, b: str, key: str = "ci") -> bool:
    return results[b][key][0] > results[a][key][1]


def gamed(results: dict) -> bool:
    """Over-optimising the learned judge: by round 2, the reward model scores the rounds it judged
    above the rounds the rule judged, and the rule scores them below (intervals apart both times)."""
    return (separated(results, "online_dpo_2", "online_rm_2", "learned_judge_ci")
            and separated(results, "online_rm_2", "online_dpo_2"))


def machine() -> dict:
    """The machine a table was measured on, as the README states it."""
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "aten": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def claims(results: dict) -> list[str]:
    """The README's claims that hold on every CPU, as failures found in one seed's results."""
    failed = []
    if not separated(results, "sft", "dpo"):
        failed.append("DPO does not beat SFT with non-overlapping intervals")
    if not separated(results, "dpo", "online_dpo_2"):
        failed.append("online DPO (round 2) does not beat DPO with non-overlapping intervals")
    if not separated(results, "dpo", "online_grpo_2"):
        failed.append("GRPO (round 2) does not beat DPO with non-overlapping intervals")
    if not gamed(results):
        failed.append("round 2 judged by the learned reward model is not above round 2 judged by the rule by that "
                      "model's score and below it by the rule's (intervals apart)")
    if f"{results['base']['score']:.3f}" != "0.000":
        failed.append(f"the untrained base model scores {results['base']['score']:.3f}, not 0.000")
    return failed


def block(runs: dict[int, dict], seconds: float) -> str:
    n = len(runs)
    dpo = sum(separated(r, "sft", "dpo") for r in runs.values())
    online = sum(separated(r, "dpo", "online_dpo_2") for r in runs.values())
    grpo = sum(separated(r, "dpo", "online_grpo_2") for r in runs.values())
    overlap = sum(not separated(r, "online_dpo_2", "online_grpo_2") and not separated(r, "online_grpo_2", "online_dpo_2")
                  for r in runs.values())
    base = max(r["base"]["score"] for r in runs.values())
    hacked = sum(gamed(r) for r in runs.values())
    below_dpo = sum(separated(r, "online_rm_2", "dpo") for r in runs.values())
    m = machine()
    lines = [START,
             f"Measured on one {m['cpu']} machine ({m['threads']} threads, ATen {m['aten']}, torch {m['torch']}; "
             f"{datetime.date.today()}; `pride demo --seed N`, about {seconds / 60:.1f} minutes each; regenerated by "
             f"`make readme-figures`): held-out score with its 95% bootstrap interval. DPO beats SFT with intervals "
             f"that do not overlap on {dpo} of {n} seeds, and online DPO (round 2) beats DPO so on {online} of {n}. "
             f"From the same DPO model, on the same prompts, K and judge (equal samples), GRPO's round 2 beats DPO "
             f"so on {grpo} of {n}, and its interval overlaps online DPO's round 2 on {overlap} of {n} (the last "
             f"column: seconds of each branch's two rounds, sampling, judging and training). "
             f"The untrained base model scores {base:.3f}. With the learned judge (a reward model trained on "
             f"the offline pairs), online DPO learns the judge's flaws: by round 2 the reward model scores its "
             f"held-out answers above those of the rounds the rule judged, while the rule scores them below, "
             f"intervals apart both times, on {hacked} of {n} seeds; their rule score even falls below DPO's, "
             f"where the rounds started, on {below_dpo} of {n}.",
             "",
             "The digits are that machine's: on another CPU the same seed gives other figures (kernels differ "
             "in the last bits between CPU generations and instruction sets, and sampling turns that into other "
             "answers; two machines that both report AMD EPYC gave different rows). What `make check-readme` "
             "checks, on whatever machine runs it, is the claim: seed 0's DPO above SFT, and online DPO 2 and GRPO 2 "
             "above DPO, with intervals apart, the learned judge's round 2 above online DPO 2 by that judge and below it "
             "by the rule, and the base model at 0.000.",
             "",
             "| seed | " + " | ".join(name for _, name in COLUMNS) + " | win rate vs SFT (DPO / online 2) | "
             "learned judge's score (DPO / learned 1 / learned 2) | seconds, 2 rounds (online DPO / SPPO / GRPO) |",
             "| --- |" + " --- |" * (len(COLUMNS) + 3)]
    lines += [row(seed, runs[seed]) for seed in sorted(runs)]
    return "\n".join(lines + [END])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="run seed 0 and compare with the README (for CI)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--output", default=str(ROOT / "runs" / "readme-figures"))
    args = ap.parse_args()
    text = README.read_text(encoding="utf-8")
    if START not in text or END not in text:
        print(f"{README}: no {START} ... {END} block", file=sys.stderr)
        return 2
    if args.check:
        results = run_demo(0, Path(args.output) / "seed-0")
        failed = claims(results)
        if failed:
            print("README.md's demo claims do not hold here (seed 0):\n- " + "\n- ".join(failed), file=sys.stderr)
            return 1
        print(f"README.md's demo claims hold here for seed 0 ({row(0, results)})")
        return 0
    import time

    runs, seconds = {}, []
    for seed in args.seeds:
        t = time.perf_counter()
        runs[seed] = run_demo(seed, Path(args.output) / f"seed-{seed}")
        seconds.append(time.perf_counter() - t)
    write_block(runs, sum(seconds) / len(seconds))
    first = Path(args.output) / f"seed-{args.seeds[0]}"
    for name in ("scores.png", "curves.png"):  # the README shows the first seed's figures
        IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(first / name, IMAGES / f"demo-{name}")
    print(f"wrote the demo table for seeds {args.seeds} into {README}, and seed {args.seeds[0]}'s figures into {IMAGES}")
    return 0


def write_block(runs: dict, seconds: float) -> None:
    """The block in README.md, read now (not when the runs started: edits made meanwhile stay)."""
    text = README.read_text(encoding="utf-8")
    new = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block(runs, seconds), text, flags=re.S)
    README.write_text(new, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
