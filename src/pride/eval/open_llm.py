"""Open LLM Leaderboard suites through lm-eval's Python API (optional extra: pip install lm-eval).

v1: ARC-challenge (25-shot), HellaSwag (10), MMLU (5), TruthfulQA-mc2 (0), Winogrande (5),
GSM8K (5), averaged raw. v2: IFEval, BBH, GPQA, MATH-hard, MuSR, MMLU-Pro with the
leaderboard's normalisation: each score rescaled so the random baseline is 0 and a
perfect score 100, (s - r) / (1 - r) * 100 (per subtask where chance differs), floored at 0.
Local dataset files work through lm-eval's own task configs (`HF_DATASETS_OFFLINE=1`
with the files in the datasets cache, or task YAMLs pointing at local paths).
"""

from __future__ import annotations

import importlib.util

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


def run(model_dir: str, suite: str, tasks: list[str] | None = None, batch_size: int | str = "auto",
        limit: int | None = None, device: str | None = None) -> dict:
    if importlib.util.find_spec("lm_eval") is None:
        raise PrideError("open_llm benchmarks need lm-eval: pip install lm-eval")
    import lm_eval

    model_args = f"pretrained={model_dir},dtype=auto,trust_remote_code=False"
    results: dict = {}
    if suite == "open_llm_v1":
        for task, shots in V1.items():
            if tasks and task not in tasks:
                continue
            r = lm_eval.simple_evaluate(model="hf", model_args=model_args, tasks=[task], num_fewshot=shots,
                                        batch_size=batch_size, limit=limit, device=device)
            results[task] = _headline(r["results"][task])
        results["average"] = sum(results.values()) / len(results) * 100 if results else None
        return results
    r = lm_eval.simple_evaluate(model="hf", model_args=model_args, tasks=tasks or V2, batch_size=batch_size,
                                limit=limit, device=device, apply_chat_template=True, fewshot_as_multiturn=True)
    raw = {k.replace("leaderboard_", ""): _headline(v) for k, v in r["results"].items()}
    return {"raw": raw, **v2_summary(raw)}


def _headline(metrics: dict) -> float:
    for key in ("acc_norm,none", "acc,none", "exact_match,strict-match", "exact_match,none",
                "prompt_level_strict_acc,none", "mc2,none"):
        if key in metrics:
            return float(metrics[key])
    return float(next(v for k, v in metrics.items() if isinstance(v, (int, float)) and "stderr" not in k))
