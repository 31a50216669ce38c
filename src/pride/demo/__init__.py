"""`pride demo`: the whole LIONs pipeline on a toy task, on one CPU, in minutes.

The task ("Write the word W n times.") has a programmatic judge (`pride.demo.task`). The
demo builds a tiny random-init Llama, then runs, as a recipe (`DIR/recipe.yaml`, runnable
with `pride run`): SFT on imperfect demonstrations -> offline DPO (with an NLL term) on
pairs that cover only part of what the policy is asked -> two online DPO rounds (samples
from the policy, judged by the rule, best vs worst) and, from the same DPO model, two SPPO
rounds and two GRPO rounds (every sample trained by its advantage: the same prompts, K and
judge, so the three objectives are compared at equal samples); and the route real use takes, where the true goal is not a judge: a reward model
trained on the offline pairs (from SFT), and from DPO two online rounds judged by it.

Every stage is scored on held-out prompts that no stage trains on (sampled answers, mean rule
score, bootstrap 95% intervals, the win rate against SFT per prompt), and the same answers by
the learned reward model, so over-optimising it shows: its score up while the rule's falls.
Outputs: DIR/results.json, DIR/answers/<stage>.json (the answers and their scores, reused by a
re-run while the stage is unchanged), tables on screen and DIR/scores.png. The same seed gives
the same numbers.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

from pride.demo.evaluate import bootstrap_ci, held_out_answers, learned_scores, rule_scores, win_rate
from pride.demo.task import make_prompt, preference_rows, prompt_rows, sft_rows
from pride.io import write_json, write_jsonl, write_text
from pride.rundir import iteration_dir, model_dir, read_iteration

FULL = {"sft_rows": 3000, "sft_epochs": 10, "sft_micro_batch": 4, "pref_rows": 1000, "online_prompts": 400, "online_iterations": 2,
        "sppo_iterations": 2, "grpo_iterations": 2, "rm_iterations": 2, "eval_prompts": 300, "eval_samples": 4}
QUICK = {"sft_rows": 1200, "sft_epochs": 12, "sft_micro_batch": 4, "pref_rows": 400, "online_prompts": 120,
         "online_iterations": 2, "sppo_iterations": 1, "grpo_iterations": 1, "rm_iterations": 1, "eval_prompts": 100,
         "eval_samples": 2}
ROUNDS = (("online_dpo", "online_iterations"), ("sppo", "sppo_iterations"), ("online_grpo", "grpo_iterations"),
          ("online_rm", "rm_iterations"))


def demo_recipe(out: Path, size: dict, seed: int) -> dict:
    judge = {"type": "function", "function": "pride.demo.task:judge"}
    online = {"samples_per_prompt": 4, "temperature": 1.0, "max_new_tokens": 40, "generation_batch_size": 32,
              "judge": judge}
    return {
        "name": "pride-demo",
        "source": "pride's toy world; the stage order of LIONs (Yu et al. 2024): SFT -> offline DPO -> online DPO",
        "reproduces": "a model that gets better stage by stage, measured on held-out prompts",
        "output_dir": str(out),
        "seed": seed,
        "model": {"path": "tiny:llama"},
        "train": {"micro_batch_size": 8, "max_length": 512, "warmup_ratio": 0.1},
        "stages": [
            {"name": "sft", "type": "sft", "data": {"sources": [{"path": str(out / "data" / "sft.jsonl")}]},
             "train": {"learning_rate": 3e-3, "epochs": size["sft_epochs"], "warmup_ratio": 0.05,
                       "micro_batch_size": size["sft_micro_batch"]}},
            {"name": "dpo", "type": "dpo", "data": {"sources": [{"path": str(out / "data" / "preference.jsonl")}]},
             "train": {"learning_rate": 5e-5, "epochs": 1},
             "preference": {"loss_type": "sigmoid", "beta": 0.1, "nll_weight": 1.0}},
            {"name": "online_dpo", "type": "online", "data": {"sources": [{"path": str(out / "data" / "prompts.jsonl")}]},
             "train": {"learning_rate": 1e-4},
             "online": {**online, "iterations": size["online_iterations"]},
             "preference": {"loss_type": "sigmoid", "beta": 0.1, "nll_weight": 1.0}},
            {"name": "sppo", "type": "sppo", "from": "dpo",
             "data": {"sources": [{"path": str(out / "data" / "prompts.jsonl")}]},
             "train": {"learning_rate": 1e-4},
             "online": {**online, "iterations": size["sppo_iterations"]},
             "preference": {"beta": 0.05, "nll_weight": 1.0}},
            # GRPO on the same prompts, K and judge (DAPO's loss and dynamic sampling, TRL's defaults otherwise);
            # a step takes 8 prompts' groups (micro_batch_size counts prompts), as a DPO round's takes 8 pairs
            {"name": "online_grpo", "type": "online", "from": "dpo",
             "data": {"sources": [{"path": str(out / "data" / "prompts.jsonl")}]},
             "train": {"learning_rate": 3e-4},
             "online": {**online, "objective": "grpo", "iterations": size["grpo_iterations"],
                        "grpo": {"drop_flat_groups": True}}},
            # the usual route in real use: a reward model learned from the offline pairs judges the rounds
            {"name": "rm", "type": "rm", "from": "sft",
             "data": {"sources": [{"path": str(out / "data" / "preference.jsonl")}]},
             "train": {"learning_rate": 1e-3, "epochs": 1}, "reward": {"max_length": 512}},
            {"name": "online_rm", "type": "online", "from": "dpo",
             "data": {"sources": [{"path": str(out / "data" / "prompts.jsonl")}]},
             "train": {"learning_rate": 1e-4},
             "online": {**online, "iterations": size["rm_iterations"],
                        "judge": {"type": "reward_model", "path": "stage:rm", "batch_size": 64}},
             "preference": {"loss_type": "sigmoid", "beta": 0.1, "nll_weight": 1.0}},
        ],
    }


def run_demo(output: str, quick: bool = False, seed: int = 0) -> list[dict]:
    from pride.recipe import run_recipe

    import sys

    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 120)
    size = QUICK if quick else FULL
    out = Path(output)
    write_jsonl(out / "data" / "sft.jsonl", sft_rows(size["sft_rows"], seed))
    write_jsonl(out / "data" / "preference.jsonl", preference_rows(size["pref_rows"], seed + 1))
    write_jsonl(out / "data" / "prompts.jsonl", prompt_rows(size["online_prompts"], seed + 2))
    rng = random.Random(1_000_003 + seed)  # held-out prompts: a stream no training file is drawn from
    held_out = [make_prompt(rng)[0] for _ in range(size["eval_prompts"])]
    write_text(out / "recipe.yaml", yaml.safe_dump(demo_recipe(out, size, seed), sort_keys=False))
    console.print(f"[bold]pride demo[/] ({'quick' if quick else 'full'}, seed {seed}): toy task "
                  f"'Write the word W n times.', tiny:llama, recipe {out / 'recipe.yaml'}")
    stages = run_recipe(out / "recipe.yaml", console=console)
    by_name = {s["stage"]: s for s in stages}
    # (row name, model, training seconds, identity: the stage's and the round's)
    models = [("base", "tiny:llama", 0.0, "tiny:llama")] + [
        (name, by_name[name]["model"], by_name[name]["seconds"], by_name[name]["config_hash"]) for name in ("sft", "dpo")]
    for name, key in ROUNDS:
        for it in range(1, size[key] + 1):
            it_dir = iteration_dir(out / name, it)
            info = read_iteration(it_dir)
            models.append((f"{name}_{it}", str(model_dir(it_dir)), info["seconds"],
                           f"{by_name[name]['config_hash']}/{it}"))
    reward_model = by_name["rm"]["model"]
    cache = EvalCache(out / "answers", {"prompts": held_out, "samples": size["eval_samples"], "seed": seed,
                                        "reward_model": by_name["rm"]["config_hash"]})
    results, scores, shown = [], {}, {}
    for name, ref, secs, identity in models:
        t = time.perf_counter()
        cached = cache.get(name, identity)
        if cached is None:
            answers = held_out_answers(ref, held_out, samples=size["eval_samples"], seed=seed, model_seed=seed)
            cached = cache.put(name, identity, answers, rule_scores(held_out, answers),
                               learned_scores(reward_model, held_out, answers))
        per, learned = cached["rule"], cached["learned"]
        scores[name], shown[name] = per, [a[0] for a in cached["answers"]]
        lo, hi = bootstrap_ci(per, seed=seed)
        results.append({"stage": name, "score": float(np.mean(per)), "ci": [lo, hi], "n_prompts": len(per),
                        "learned_judge": float(np.mean(learned)), "learned_judge_ci": list(bootstrap_ci(learned, seed=seed)),
                        "seconds": secs, "eval_seconds": round(time.perf_counter() - t, 1)})
    for r in results:
        r["win_rate_vs_sft"] = win_rate(scores[r["stage"]], scores["sft"], seed=seed)
    write_json(out / "results.json", results)
    write_text(out / "report.md", report(results, held_out, shown, seed))
    console.print(answers_table(held_out, shown, [r["stage"] for r in results if r["stage"] != "base"]))
    console.print(results_table(results, seed))
    plot(results, out / "scores.png")
    console.print(f"results: {out / 'results.json'}, plot: {out / 'scores.png'}")
    return results


class EvalCache:
    """Each evaluated model's held-out answers and scores (`DIR/answers/<row>.json`), kept with the
    identity of the stage (and round) that made it and of the evaluation itself: a re-run
    evaluates again only what changed."""

    def __init__(self, folder: Path, settings: dict):
        import hashlib
        import json

        self.folder = folder
        self.settings = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    def get(self, name: str, identity: str) -> dict | None:
        from pride.io import read_record

        record = read_record(self.folder / f"{name}.json")
        ok = record is not None and record.get("identity") == identity and record.get("evaluation") == self.settings
        return record if ok else None

    def put(self, name: str, identity: str, answers: list[list[str]], rule: list[float], learned: list[float]) -> dict:
        record = {"identity": identity, "evaluation": self.settings, "answers": answers, "rule": rule,
                  "learned": learned}
        write_json(self.folder / f"{name}.json", record)
        return record


def answers_table(prompts: list[str], answers: dict[str, list[str]], stages: list[str], n: int = 3) -> Table:
    """A few held-out prompts with each stage's first answer side by side (newlines shown as ⏎)."""
    table = Table(title="held-out prompts: each stage's first answer", show_lines=True)
    table.add_column("stage")
    for p in prompts[:n]:
        table.add_column(p, overflow="fold")
    for stage in stages:
        table.add_row(stage, *(a.replace("\n", " ⏎ ") for a in answers[stage][:n]))
    return table


def report(results: list[dict], prompts: list[str], answers: dict[str, list[str]], seed: int, n: int = 3) -> str:
    """report.md: the scores by stage, then a few held-out prompts with each stage's first answer."""
    lines = [f"# pride demo (seed {seed})", "", "| stage | rule score | 95% CI | learned judge | win rate vs SFT |",
             "| --- | --- | --- | --- | --- |"]
    for r in results:
        w = r["win_rate_vs_sft"]
        lines.append(f"| {r['stage']} | {r['score']:.3f} | [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | "
                     f"{r['learned_judge']:+.2f} | {w['value']:.3f} |")
    lines += ["", "## Held-out prompts, each stage's first answer", ""]
    for i, prompt in enumerate(prompts[:n]):
        lines += [f"### {prompt}", "", "| stage | answer |", "| --- | --- |"]
        lines += [f"| {stage} | {a[i].replace(chr(10), ' ⏎ ').replace('|', '¦') or '(empty)'} |"
                  for stage, a in answers.items()]
        lines.append("")
    return "\n".join(lines)


def results_table(results: list[dict], seed: int) -> Table:
    table = Table(title=f"held-out judge score by stage (seed {seed}; 95% bootstrap intervals)")
    for col in ("stage", "rule score", "95% CI", "learned judge", "win rate vs SFT", "prompts", "train s"):
        table.add_column(col, justify="right" if col != "stage" else "left")
    for r in results:
        w = r["win_rate_vs_sft"]
        table.add_row(r["stage"], f"{r['score']:.3f}", f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]",
                      f"{r['learned_judge']:+.2f}", f"{w['value']:.3f} [{w['ci'][0]:.3f}, {w['ci'][1]:.3f}]",
                      str(r["n_prompts"]), f"{r['seconds']:.0f}")
    return table


def plot(results: list[dict], path: Path) -> None:
    """Two panels over the same stages: the rule's held-out score (what the demo is after), and
    the learned judge's score of the same answers (what the online_rm rounds optimise)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = next((r for r in results if r["stage"] == "base"), None)
    results = [r for r in results if r["stage"] != "base"]  # at 0, it would squash the differences that matter
    names = [r["stage"] for r in results]
    colors = [{"base": "#999999", "sft": "#4c72b0", "dpo": "#55a868"}.get(n) or
              ("#c44e52" if n.startswith("online_dpo") else "#dd8452" if n.startswith("online_rm") else
               "#937860" if n.startswith("online_grpo") else "#8172b2")
              for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, key, label in ((axes[0], "score", "rule score (held-out)"),
                           (axes[1], "learned_judge", "learned judge's score (same answers)")):
        means = np.array([r[key] for r in results])
        ci = [r["ci"] if key == "score" else r["learned_judge_ci"] for r in results]
        err = np.array([[m - c[0], c[1] - m] for m, c in zip(means, ci)]).T
        bars = ax.bar(range(len(names)), means, yerr=err, capsize=3, color=colors)
        ax.bar_label(bars, labels=[f"{m:.2f}" for m in means], padding=2, fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_ylabel(label)
        low, high = min(c[0] for c in ci), max(c[1] for c in ci)
        pad = (high - low) * 0.15 or 0.1
        ax.set_ylim(low - pad, high + pad)  # the axis spans the differences, not 0 to the top
    axes[0].set_title("what the task wants")
    axes[1].set_title("what the learned judge rewards")
    untrained = f"; the untrained base model: rule {base['score']:.2f}, learned judge {base['learned_judge']:+.2f}" \
        if base else ""
    fig.suptitle(f"pride demo: score by stage (95% bootstrap intervals; axes do not start at 0{untrained})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
