"""report.md, a chart (PNG) and scores.json for one evaluation."""

from __future__ import annotations

import json
from pathlib import Path

from pride.io import make_dir, write_json, write_text

HEADLINE = {"mt_bench": ("average", "MT-Bench (1-10)"), "alpaca_eval": ("length_controlled_winrate", "AlpacaEval 2 LC %"),
            "arena_hard": ("score", "Arena-Hard %"), "open_llm_v1": ("average", "Open LLM v1"),
            "open_llm_v2": ("average", "Open LLM v2"), "task_metrics": ("chrf", "task metrics"),
            "reward_accuracy": ("accuracy", "reward accuracy %")}


def headline(bench: str, result: dict) -> float | None:
    """The benchmark's headline number, None when the run could not compute it (never a stand-in:
    a missing LC win rate is not replaced by the raw one)."""
    if bench == "task_metrics":  # translation: chrF; summarisation: ROUGE-Lsum
        return next((result[k] for k in ("chrf", "rougeLsum") if k in result), None)
    if bench == "mt_bench" and "win_rate_adjusted" in result:  # pairwise modes: % against the others
        return result["win_rate_adjusted"] * 100
    return result.get(HEADLINE[bench][0])


def write_report(out_dir: Path, scores: dict) -> None:
    """scores: {model: {bench: {"mean": {...}, "std": {...}, "runs": [...]}}}."""
    make_dir(out_dir)
    write_json(out_dir / "scores.json", scores)
    lines = ["# pride evaluation", ""]
    benches = sorted({b for m in scores.values() for b in m})
    header, rows = score_rows(scores)
    lines.append("| " + " | ".join(header) + " |")
    lines.append("| --- |" + " --- |" * len(benches))
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "Mean over runs (± standard deviation when several); Arena-Hard with its bootstrap interval "
              "(v2: 5%-95%, v0.1: 2.5%-97.5%); - where a number could not be computed (the run's note says why).", ""]
    for model, res in scores.items():
        tables = res.get("arena_hard", {}).get("mean", {}).get("categories", {})
        if len(tables) > 1:  # v2 scores each category against its own baseline: never pooled
            each = ", ".join(f"{c} {t['score']:.2f}" if t.get("score") is not None else f"{c} -" for c, t in tables.items())
            lines.append(f"- {model} Arena-Hard shows {res['arena_hard']['mean']['category']}; each category: {each}")
    for model, res in scores.items():
        for b in benches:
            if b in res and len(res[b]["runs"]) > 1:
                each = ", ".join("-" if h is None else f"{h:.2f}" for h in (headline(b, r) for r in res[b]["runs"]))
                lines.append(f"- {model} {HEADLINE[b][1]}, each run: {each}")
    lines.append("")
    for model, res in scores.items():
        for b in benches:
            if b in res:
                lines.append(f"## {model} — {b}\n\n```json\n{json.dumps(res[b]['mean'], indent=2)}\n```\n")
    write_text(out_dir / "report.md", "\n".join(lines))
    _chart(out_dir / "scores.png", scores, benches)


def column(bench: str, results: list[dict]) -> str:
    """A benchmark's column title, naming the metric it holds (task metrics: the one scored)."""
    if bench == "task_metrics":
        shown = {next((k for k in ("chrf", "rougeLsum") if k in r["mean"]), None) for r in results} - {None}
        names = [name for k, name in (("chrf", "chrF"), ("rougeLsum", "ROUGE-Lsum")) if k in shown]
        return "task metrics: " + (" or ".join(names) or "chrF or ROUGE-Lsum")
    return HEADLINE[bench][1]


def score_rows(scores: dict) -> tuple[list[str], list[list[str]]]:
    """The headline table (report.md's, and what `pride eval` prints): a row per model, a column
    per benchmark, mean over runs (± their standard deviation) and the bootstrap interval."""
    benches = sorted({b for m in scores.values() for b in m})
    header = ["model"] + [column(b, [res[b] for res in scores.values() if b in res]) for b in benches]
    rows = []
    for model, res in scores.items():
        cells = [model]
        for b in benches:
            if b not in res:
                cells.append("")
                continue
            mean, std = res[b]["headline_mean"], res[b]["headline_std"]
            cell = "-" if mean is None else f"{mean:.2f}" + (f" ± {std:.2f}" if len(res[b]["runs"]) > 1 else "")
            ci = res[b]["mean"].get("ci_lower")
            if ci is not None:
                cell += f" ({ci:.1f}, {res[b]['mean']['ci_upper']:.1f})"
            cells.append(cell)
        rows.append(cells)
    return header, rows


def score_table(scores: dict):
    from rich.table import Table

    header, rows = score_rows(scores)
    table = Table(title="pride eval: headline scores (mean ± std over runs; bootstrap interval in parentheses)")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _chart(path: Path, scores: dict, benches: list[str]) -> None:
    """A bar chart per benchmark some model has a number for; none at all: no chart (an empty
    one would look like a result)."""
    benches = [b for b in benches if any(b in r and r[b]["headline_mean"] is not None for r in scores.values())]
    if not benches:
        path.unlink(missing_ok=True)
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(benches), figsize=(4 * len(benches), 3.5), squeeze=False)
    for ax, b in zip(axes[0], benches):
        models = [m for m in scores if b in scores[m] and scores[m][b]["headline_mean"] is not None]
        vals = [scores[m][b]["headline_mean"] for m in models]
        errs = [scores[m][b]["headline_std"] or 0 for m in models]
        bars = ax.bar(range(len(models)), vals, yerr=errs, color="#4c72b0", capsize=4)
        ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=8)
        ax.set_title(column(b, [scores[m][b] for m in scores if b in scores[m]]), fontsize=10)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in vals], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
