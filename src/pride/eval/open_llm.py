"""Open LLM Leaderboard suites through lm-eval's Python API (optional extra: pip install lm-eval).

v1: ARC-challenge (25-shot), HellaSwag (10), MMLU (5), TruthfulQA-mc2 (0), Winogrande (5),
GSM8K (5), averaged raw. v2: IFEval, BBH, GPQA, MATH-hard, MuSR, MMLU-Pro with the
leaderboard's normalisation: each score rescaled so the random baseline is 0 and a
perfect score 100, (s - r) / (1 - r) * 100 (per subtask where chance differs), floored at 0.
Offline, `include_path` names a folder of lm-eval task YAMLs over local files (`dataset_path:
json` with `dataset_kwargs.data_files`), run by name in `tasks`. pride calls lm-eval as its
CLI does (`lm_eval --model hf --tasks ... --include_path ... --num_fewshot N`), so each task's
metrics equal the CLI's on the same model (tests/test_open_llm.py runs both).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from pride.errors import PrideError

V1 = {"arc_challenge": 25, "hellaswag": 10, "mmlu": 5, "truthfulqa_mc2": 0, "winogrande": 5, "gsm8k": 5}
V2 = ["leaderboard_ifeval", "leaderboard_bbh", "leaderboard_gpqa", "leaderboard_math_hard", "leaderboard_musr",
      "leaderboard_mmlu_pro"]
# chance level per subtask: 1 / number of choices (the leaderboard's normalisation table)
BBH_CHOICES = {"boolean_expressions": 2, "causal_judgement": 2, "date_understanding": 6, "disambiguation_qa": 3,
               "formal_fallacies": 2, "geometric_shapes": 11, "hyperbaton": 2, "logical_deduction_five_objects": 5,
               "logical_deduction_seven_objects": 7, "logical_deduction_three_objects": 3,
               "movie_recommendation": 6, "navigate": 2, "object_counting": 19, "penguins_in_a_table": 5,
               "reasoning_about_colored_objects": 18, "ruin_names": 6, "salient_translation_error_detection": 6,
               "snarks": 2, "sports_understanding": 2, "temporal_sequences": 4,
               "tracking_shuffled_objects_five_objects": 5, "tracking_shuffled_objects_seven_objects": 7,
               "tracking_shuffled_objects_three_objects": 3, "web_of_lies": 2}
MUSR_CHOICES = {"murder_mysteries": 2, "object_placements": 5, "team_allocation": 3}


def normalize(score: float, chance: float) -> float:
    """Leaderboard v2 normalisation of a score in [0, 1] to [0, 100] above chance."""
    if score < chance:
        return 0.0
    return (score - chance) / (1 - chance) * 100


def v2_summary(subtask_scores: dict[str, float]) -> dict[str, float]:
    """subtask name -> raw score in [0, 1]  ->  normalised benchmark scores and their average."""
    def avg(items):
        return sum(items) / len(items) if items else None

    bbh = [normalize(v, 1 / BBH_CHOICES[k.split("bbh_")[-1]]) for k, v in subtask_scores.items()
           if "bbh_" in k and k.split("bbh_")[-1] in BBH_CHOICES]
    musr = [normalize(v, 1 / MUSR_CHOICES[k.split("musr_")[-1]]) for k, v in subtask_scores.items()
            if "musr_" in k and k.split("musr_")[-1] in MUSR_CHOICES]
    gpqa = [normalize(v, 0.25) for k, v in subtask_scores.items() if "gpqa" in k]
    out = {"ifeval": subtask_scores.get("ifeval", None), "bbh": avg(bbh), "gpqa": avg(gpqa),
           "math_hard": avg([v * 100 for k, v in subtask_scores.items() if "math" in k]),
           "musr": avg(musr), "mmlu_pro": normalize(subtask_scores["mmlu_pro"], 0.1) if "mmlu_pro" in subtask_scores else None}
    if out["ifeval"] is not None:
        out["ifeval"] *= 100
    present = [v for v in out.values() if v is not None]
    out["average"] = avg(present)
    return out


def run(model_dir: str, suite: str, tasks: list[str] | None = None, include_path: str | None = None,
        batch_size: int | str = "auto", limit: int | None = None, device: str | None = None) -> dict:
    """lm-eval on a model directory. `tasks` replaces the suite's; v1 runs each task with its
    leaderboard shot count (a task of its own with its YAML's), v2 with the leaderboard's chat
    template and multi-turn few-shot. Returns each task's headline metric (0-1), the suite's
    average, and `lm_eval`: every metric as lm-eval reports it."""
    if importlib.util.find_spec("lm_eval") is None:
        raise PrideError("open_llm benchmarks need lm-eval: pip install lm-eval")
    from pride.models import is_tiny

    if is_tiny(model_dir):
        raise PrideError(f"{suite}: lm-eval loads a model directory, not {model_dir}; save the model first")
    if include_path is not None and not Path(include_path).is_dir():
        raise PrideError(f"eval.open_llm_include_path: {include_path} is not a folder of lm-eval task YAMLs")
    import lm_eval
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # a quiet console: lm-eval logs every step at INFO
    manager = TaskManager(include_path=include_path)
    chosen = tasks or (list(V1) if suite == "open_llm_v1" else V2)
    local, broken = local_tasks(include_path) if include_path else ({}, [])
    unknown = [t for t in chosen if t not in manager.all_tasks]
    if unknown and broken:  # most likely the unknown task's own file
        raise PrideError(f"eval.open_llm_tasks: {', '.join(unknown)}: not found, and {broken[0]}")
    if unknown:
        where = f" or in {include_path}" if include_path else " (eval.open_llm_include_path adds a folder of YAMLs)"
        raise PrideError(f"eval.open_llm_tasks: {', '.join(unknown)}: no such lm-eval task in its registry{where}")
    for task in chosen:
        if task in local:
            check_data_files(task, *local[task])
    common = dict(model="hf", model_args=f"pretrained={model_dir},dtype=auto,trust_remote_code=False",
                  batch_size=batch_size, limit=limit, task_manager=manager,
                  # the CLI's default: "cuda:0", which lm-eval turns into the CPU where CUDA is absent
                  # (its library default, "cuda", does not)
                  device=device or "cuda:0")
    if suite == "open_llm_v1":
        metrics = {}
        for task in chosen:
            r = lm_eval.simple_evaluate(tasks=[task], num_fewshot=V1.get(task), **common)
            metrics.update(r["results"])
        heads = {task: _headline(metrics[task]) for task in chosen}
        out = {**heads, "average": None, "lm_eval": metrics}
        missing = [t for t, v in heads.items() if v is None]
        if missing:  # an average over perplexities and accuracies would mean nothing
            out["note"] = (f"no average: {', '.join(missing)} report none of {', '.join(HEADLINE_METRICS)} "
                           "(their metrics are under lm_eval)")
        else:
            out["average"] = sum(heads.values()) / len(heads) * 100
        return out
    r = lm_eval.simple_evaluate(tasks=chosen, apply_chat_template=True, fewshot_as_multiturn=True, **common)
    raw = {k.replace("leaderboard_", ""): h for k, v in r["results"].items() if (h := _headline(v)) is not None}
    return {"raw": raw, **v2_summary(raw), "lm_eval": r["results"]}


def local_tasks(include_path: str) -> tuple[dict[str, tuple[Path, dict]], list[str]]:
    """The tasks of a folder of lm-eval YAMLs, read as lm-eval reads them, and the files it
    cannot read, each with its error (lm-eval skips them without a word)."""
    import yaml
    from lm_eval.tasks._index import TaskIndex
    from lm_eval.tasks._yaml_loader import load_yaml

    tasks, broken = {}, []
    for path in TaskIndex._iter_yaml_files(Path(include_path)):
        try:
            cfg = load_yaml(path, resolve_func=False, recursive=True)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" line {mark.line + 1}" if mark is not None else ""
            broken.append(f"{path}{at}: lm-eval cannot read this task YAML ({getattr(e, 'problem', None) or e}) "
                          "and skips it")
            continue
        except (OSError, ValueError) as e:
            broken.append(f"{path}: lm-eval cannot read this task YAML ({e}) and skips it")
            continue
        if isinstance(cfg.get("task"), str):
            tasks[cfg["task"]] = (path, cfg)
    return tasks, broken


def check_data_files(task: str, path: Path, cfg: dict) -> None:
    """A local task's `dataset_kwargs.data_files` exist (datasets resolves them against the
    working directory), so a missing file is named before any model is loaded."""
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    split_files = files.items() if isinstance(files, dict) else [("data_files", files)]
    for split, names in split_files:
        for name in [names] if isinstance(names, str) else names or []:
            if isinstance(name, str) and "://" not in name and not any(c in name for c in "*?[") \
                    and not Path(name).expanduser().exists():
                raise PrideError(f"{path}: task {task}: dataset_kwargs.data_files {split}: {name} does not exist "
                                 f"(relative paths are read from the working directory, {Path.cwd()})")


# the leaderboards' metric per task, first present wins (ARC/HellaSwag/BBH/GPQA/MuSR acc_norm, MMLU,
# Winogrande, MMLU-Pro acc, GSM8K strict exact match, MATH exact match, IFEval prompt-level strict, TruthfulQA mc2)
HEADLINE_METRICS = ("acc_norm,none", "acc,none", "exact_match,strict-match", "exact_match,none",
                    "prompt_level_strict_acc,none", "mc2,none")


def _headline(metrics: dict) -> float | None:
    """The task's leaderboard metric (a fraction), None for a task with none of them (perplexity, ...)."""
    key = next((k for k in HEADLINE_METRICS if k in metrics), None)
    return None if key is None else float(metrics[key])
