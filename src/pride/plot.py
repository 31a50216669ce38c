"""`pride plot RUN_DIR...`: the training curves of one or several runs, overlaid.

Read from each run's `metrics.jsonl` (an online run: its rounds' files, steps counted on across
rounds, and each round's judge score from `iteration-N/iteration.json`; a recipe's output
directory: each of its stages). Panels appear only for what some run logged: loss, learning
rate, gradient norm, eval loss, and for preference stages the reward margins and accuracies
(DPO's implicit rewards, or a reward model's). Every stage draws its own `curves.png` at its
end, and `pride run` / `pride demo` one for the whole recipe.
"""

from __future__ import annotations

import json
from pathlib import Path

from pride.errors import PrideError
from pride.io import read_record

PANELS = [("loss", "training loss"), ("eval/loss", "eval loss"), ("lr", "learning rate"),
          ("grad_norm", "gradient norm"), ("rewards/margins", "reward margin (DPO: chosen - rejected; KTO: their means)"),
          ("rewards/chosen", "reward of chosen (KTO: desirable) answers"),
          ("rewards/rejected", "reward of rejected (KTO: undesirable) answers"),
          ("rewards/accuracies", "DPO reward accuracy"), ("margin", "reward model margin"),
          ("accuracy", "reward model accuracy"), ("eval/accuracy", "reward model eval accuracy"),
          ("clip_ratio/low_mean", "GRPO: tokens clipped low (ratio < 1-eps, A < 0)"),
          ("clip_ratio/high_mean", "GRPO: tokens clipped high (ratio > 1+eps_high, A > 0)"),
          ("kl", "KL (GRPO: k3 to the reference; KTO: its reference point z)"), ("completion_length", "GRPO: completion length (tokens)"),
          ("judge", "online: judge score of each round's samples"),
          ("reward_std", "GRPO: reward std of each round's samples"),
          ("flat_groups", "GRPO: share of prompts whose K scores are all equal")]
ROUND_PANELS = {"judge": "score_mean", "reward_std": "reward_std", "flat_groups": "flat_group_fraction"}  # iteration.json


def _records(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a torn last line (a run killed mid-write)
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            out.append(record)
    return out


def rounds(run: Path) -> list[Path]:
    return sorted((p for p in run.glob("iteration-*") if p.name.split("-")[-1].isdigit()),
                  key=lambda p: int(p.name.split("-")[-1]))


def run_series(run: Path) -> dict[str, tuple[list, list]]:
    """{metric: (x, y)} of one run: its steps, or for online rounds steps counted on across rounds
    and per round (x: the round) the judge's mean score, and for the GRPO family the rewards' std and
    the share of flat groups."""
    series: dict[str, tuple[list, list]] = {}

    def add(records: list[dict], offset: int) -> int:
        for r in records:
            for key, _ in PANELS:
                if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool):
                    xs, ys = series.setdefault(key, ([], []))
                    xs.append(r["step"] + offset)
                    ys.append(float(r[key]))
        return max((r["step"] for r in records), default=0)

    if (run / "metrics.jsonl").is_file():
        add(_records(run / "metrics.jsonl"), 0)
    offset = 0
    for it in rounds(run):
        if (it / "metrics.jsonl").is_file():
            offset += add(_records(it / "metrics.jsonl"), offset)
        info = read_record(it / "iteration.json") or {}
        for key, field in ROUND_PANELS.items():
            if isinstance(info.get(field), (int, float)):
                xs, ys = series.setdefault(key, ([], []))
                xs.append(info["iteration"])
                ys.append(float(info[field]))
    return series


def find_runs(paths: list[str]) -> dict[str, Path]:
    """label -> run directory: each path a run (metrics.jsonl or rounds), or a recipe's output
    directory (each stage with curves). Labels: the directory, with its parent's name (the path
    as given where two runs would share one)."""
    runs: dict[str, Path] = {}
    for given in paths:
        p = Path(given)
        if not p.is_dir():
            raise PrideError(f"{p}: not a run directory")
        candidates = [p] if (p / "metrics.jsonl").is_file() or rounds(p) else sorted(
            c for c in p.iterdir() if c.is_dir() and ((c / "metrics.jsonl").is_file() or rounds(c)))
        if not candidates:
            raise PrideError(f"{p}: no metrics.jsonl here or in its stages; is it a pride run directory?")
        for c in candidates:
            if any(c.resolve() == r.resolve() for r in runs.values()):
                continue  # the same run named twice (a run and its recipe's directory): drawn once
            label = f"{c.resolve().parent.name}/{c.name}"
            runs[str(c) if label in runs else label] = c  # two runs that share a label: the path tells them apart
    return runs


def draw(series: dict[str, dict[str, tuple[list, list]]], path: Path, title: str = "training curves") -> dict:
    """One panel per metric some run has, a line per run; returns {metric: {run: (x, y)}} as drawn
    (read back from the figure's lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pride.io import write_bytes

    panels = [(k, t) for k, t in PANELS if any(k in s for s in series.values())]
    if not panels:
        raise PrideError("nothing to plot: no run has a logged step yet")
    cols = min(3, len(panels))
    rows_ = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(5 * cols, 3.2 * rows_), squeeze=False)
    drawn: dict = {}
    color = {run: f"C{i % 10}" for i, run in enumerate(series)}  # a run's colour is the same in every panel
    for ax, (key, label) in zip(axes.flat, panels):
        for run, s in series.items():
            if key in s:
                (line,) = ax.plot(*s[key], marker="o" if key in ROUND_PANELS or len(s[key][0]) < 20 else None,
                                  markersize=3, label=run, color=color[run])
                drawn.setdefault(key, {})[run] = (list(line.get_xdata()), list(line.get_ydata()))
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("round" if key in ROUND_PANELS else "step")
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        if key == "grad_norm" and any(y > 0 for s in series.values() for y in s.get(key, ([], []))[1]):
            ax.set_yscale("log")  # one spike would flatten every other run's curve (none drawn: all zero)
        if key in ROUND_PANELS:
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    from matplotlib.lines import Line2D

    labels = list(series)  # every run, once, under the figure, in its colour
    handles = [Line2D([], [], color=color[run]) for run in labels]
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(labels) // 4), 1, 1))
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_bytes(path, buffer.getvalue())
    return drawn


def plot_runs(paths: list[str], out: str | Path, title: str = "training curves", command: bool = False) -> dict:
    """The runs' curves into `out`. `command` (`pride plot`): the files read are that command's inputs,
    so `out` may be none of them."""
    runs = find_runs(paths)
    if command:
        from pride.io import mark_inputs

        mark_inputs(*(f for run in runs.values() for f in read_files(run)))
    return draw({label: run_series(run) for label, run in runs.items()}, Path(out), title)


def read_files(run: Path) -> list[Path]:
    """The files `run_series` reads from a run (what a plot must never be written over)."""
    return [f for d in [run, *rounds(run)] for f in (d / "metrics.jsonl", d / "iteration.json") if f.is_file()]


def stage_curves(run_dir: Path, title: str) -> None:
    """A stage's curves.png at its end; a figure is a convenience, never a reason to fail a run."""
    try:
        series = run_series(Path(run_dir))
        if series:
            draw({Path(run_dir).name: series}, Path(run_dir) / "curves.png", title)
    except (PrideError, OSError, ValueError):
        pass


__all__ = ["plot_runs", "run_series", "draw", "stage_curves", "find_runs"]
