"""`pride demo`: the whole LIONs pipeline on a toy task, on one CPU, in minutes.

The task ("Write the word W n times.") has a programmatic judge (`pride.demo.task`). The
demo builds a tiny random-init Llama, then runs, as a recipe (`DIR/recipe.yaml`, runnable
with `pride run`): SFT on imperfect demonstrations -> offline DPO (with an NLL term) on
pairs that cover only part of what the policy is asked -> two online DPO rounds (samples
from the policy, judged, best vs worst) and, from the same DPO model, two SPPO rounds. Every stage is scored on held-out
prompts that no stage trains on (sampled answers, mean judge score, bootstrap 95%
intervals, and the win rate against SFT per prompt). Outputs: DIR/results.json, a table
on screen and DIR/scores.png. The same seed gives the same numbers.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

from pride.demo.evaluate import bootstrap_ci, per_prompt_scores, win_rate
from pride.demo.task import make_prompt, preference_rows, prompt_rows, sft_rows
from pride.io import write_json, write_jsonl, write_text
from pride.rundir import iteration_dir, model_dir, read_iteration

FULL = {"sft_rows": 3000, "sft_epochs": 10, "sft_micro_batch": 4, "pref_rows": 1000, "online_prompts": 400, "online_iterations": 2,
        "sppo_iterations": 2, "eval_prompts": 300, "eval_samples": 4}
QUICK = {"sft_rows": 1200, "sft_epochs": 12, "sft_micro_batch": 4, "pref_rows": 400, "online_prompts": 120,
         "online_iterations": 2, "sppo_iterations": 1, "eval_prompts": 100, "eval_samples": 2}


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
    models = [("base", "tiny:llama", 0.0)] + [(name, by_name[name]["model"], by_name[name]["seconds"])
                                              for name in ("sft", "dpo")]
    for name, n_it in (("online_dpo", size["online_iterations"]), ("sppo", size["sppo_iterations"])):
        for it in range(1, n_it + 1):
            it_dir = iteration_dir(out / name, it)
            info = read_iteration(it_dir)
            models.append((f"{name}_{it}", str(model_dir(it_dir)), info["seconds"]))
    results, scores = [], {}
    for name, ref, secs in models:
        t = time.perf_counter()
        per = per_prompt_scores(ref, held_out, samples=size["eval_samples"], seed=seed, model_seed=seed)
        scores[name] = per
        lo, hi = bootstrap_ci(per, seed=seed)
        results.append({"stage": name, "score": float(np.mean(per)), "ci": [lo, hi], "n_prompts": len(per),
                        "seconds": secs, "eval_seconds": round(time.perf_counter() - t, 1)})
    for r in results:
        r["win_rate_vs_sft"] = win_rate(scores[r["stage"]], scores["sft"], seed=seed)
    write_json(out / "results.json", results)
    console.print(results_table(results, seed))
    plot(results, out / "scores.png")
    console.print(f"results: {out / 'results.json'}, plot: {out / 'scores.png'}")
    return results


def results_table(results: list[dict], seed: int) -> Table:
    table = Table(title=f"held-out judge score by stage (seed {seed}; 95% bootstrap intervals)")
    for col in ("stage", "score", "95% CI", "win rate vs SFT", "prompts", "train s"):
        table.add_column(col, justify="right" if col != "stage" else "left")
    for r in results:
        w = r["win_rate_vs_sft"]
        table.add_row(r["stage"], f"{r['score']:.3f}", f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]",
                      f"{w['value']:.3f} [{w['ci'][0]:.3f}, {w['ci'][1]:.3f}]", str(r["n_prompts"]),
                      f"{r['seconds']:.0f}")
    return table


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["stage"] for r in results]
    means = np.array([r["score"] for r in results])
    err = np.array([[m - r["ci"][0], r["ci"][1] - m] for m, r in zip(means, results)]).T
    fig, ax = plt.subplots(figsize=(7, 3.6))
    colors = ["#999999", "#4c72b0", "#55a868"] + ["#c44e52" if n.startswith("online") else "#8172b2" for n in names[3:]]
    ax.bar(range(len(names)), means, yerr=err, capsize=4, color=colors)
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_ylabel("held-out judge score")
    ax.set_ylim(0, 1.05)
    ax.set_title("pride demo: score by stage")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
