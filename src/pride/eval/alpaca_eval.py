"""AlpacaEval 2: answers in `model_outputs.json`, the weighted judge, win rates, LC win rate.

* Answers: `[{"instruction", "output", "generator", "dataset"}]`, the format the official
  `alpaca_eval --model_outputs` reads, so its tool can be run on pride's answers too.
* Judge (weighted_alpaca_eval_gpt4_turbo style): the two outputs are shown as models `m` and
  `M`, their order switched per instruction (alpaca_eval's seeded rule); the preference is
  1 + P(model better) from the top logprobs of `m` vs `M`, or 1/2 discrete when the
  endpoint gives no logprobs; identical outputs get 1.5 without asking.
* Metrics exactly as alpaca_eval: win_rate, standard_error, n_wins, n_wins_base, n_draws,
  n_total, discrete_win_rate, avg_length, and the length-controlled win rate from its GLM:
  features tanh(standardised length difference), instruction difficulty and
  not_gamed_baseline (no intercept), fitted by L1 logistic regression on soft labels with
  5-fold group CV; prediction with the length term set to 0. With alpaca_eval's
  `df_gamed.csv` the fit is also regularised towards the gamed baselines (lambda 0.2).
"""

from __future__ import annotations

import csv
import json
import math
import random
import statistics
from pathlib import Path

import numpy as np

from pride.errors import PrideError

BASELINE = "gpt4_1106_preview"
SYSTEM = "You are a highly efficient assistant, who evaluates and selects the best large language model (LLMs) " \
         "based on the quality of their responses to a given instruction. This process will be used to create a " \
         "leaderboard reflecting the most accurate and human-preferred answers."
PROMPT = """I require a leaderboard for various large language models. I'll provide you with prompts given to these models and their corresponding outputs. Your task is to assess these responses, and select the model that produces the best output from a human perspective.

## Instruction

{{
    "instruction": \"\"\"{instruction}\"\"\",
}}

## Model Outputs

Here are the unordered outputs from the models. Each output is associated with a specific model, identified by a unique model identifier.

{{
    {{
        "model_identifier": "m",
        "output": \"\"\"{output_1}\"\"\"
    }},
    {{
        "model_identifier": "M",
        "output": \"\"\"{output_2}\"\"\"
    }}
}}

## Task

Evaluate the models based on the quality and relevance of their outputs, and select the model that generated the best output. Answer by providing the model identifier of the best model. We will use your output as the name of the best model, so make sure your output only contains one of the following model identifiers and nothing else (no quotes, no spaces, no new lines, ...): m or M.

## Best Model Identifier
"""


# ------------------------------------------------------------------ judging


def is_switched(instruction: str, seed: int = 123) -> bool:
    """alpaca_eval's RandomSwitchTwoColumnsProcessor rule for showing the two outputs swapped."""
    return random.Random("is_switch_output_1_output_2" + instruction + str(seed)).choices([False, True], k=1)[0]


def p_first_from_logprobs(raw: dict) -> float | None:
    """P('m') / (P('m') + P('M')) from the first generated token's top logprobs."""
    try:
        top = raw["logprobs"]["content"][0]["top_logprobs"]
    except (KeyError, IndexError, TypeError):
        return None
    probs = {"m": 0.0, "M": 0.0}
    for t in top:
        tok = t["token"].strip()
        if tok in probs:
            probs[tok] += math.exp(t["logprob"])
    total = probs["m"] + probs["M"]
    return probs["m"] / total if total > 0 else None


def preference_from_completion(choice: dict, switched: bool) -> float | None:
    """1 = baseline (output_1) better, 2 = model (output_2) better; fractional when weighted."""
    p_m = p_first_from_logprobs(choice)
    if p_m is None:
        text = (choice.get("message", {}).get("content") or "").strip()
        if text not in ("m", "M"):
            return None
        p_m = 1.0 if text == "m" else 0.0
    # 'm' shows output_1 unless switched
    return 1.0 + p_m if switched else 2.0 - p_m


def judge(client, rows: list[dict], seed: int = 123) -> list[dict]:
    """rows: {instruction, output_1 (baseline), output_2 (model), generator_1, generator_2, dataset}."""
    out = []
    for r in rows:
        ann = dict(r, annotator="pride_weighted_alpaca_eval")
        if r["output_1"] == r["output_2"]:
            ann["preference"] = 1.5
        else:
            sw = is_switched(r["instruction"], seed)
            a, b = (r["output_2"], r["output_1"]) if sw else (r["output_1"], r["output_2"])
            resp = client.complete([{"role": "system", "content": SYSTEM},
                                    {"role": "user", "content": PROMPT.format(instruction=r["instruction"],
                                                                              output_1=a, output_2=b)}],
                                   max_tokens=1, temperature=0, logprobs=True, top_logprobs=5)
            choice = resp["choices"][0]
            ann["preference"] = preference_from_completion(choice, sw)
            ann["raw_completion"] = choice
        out.append(ann)
    return out


# ------------------------------------------------------------------ metrics


def get_winrate(annotations: list[dict]) -> dict:
    """alpaca_eval's pairwise_to_winrate: preference in [1, 2], 1.5 (or 0) = draw, NaN dropped."""
    prefs = [1.5 if p == 0 else float(p) for p in (a.get("preference") for a in annotations)
             if p is not None and not (isinstance(p, float) and math.isnan(p))]
    if not prefs:
        raise PrideError("no usable preference in the annotations")
    n_wins = sum(p > 1.5 for p in prefs)
    n_wins_base = sum(p < 1.5 for p in prefs)
    n_draws = sum(p == 1.5 for p in prefs)
    values = [p - 1 for p in prefs]
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    lengths = [len(a["output_2"]) for a in annotations if "output_2" in a]
    return {"win_rate": statistics.fmean(values) * 100, "standard_error": se * 100, "n_wins": n_wins,
            "n_wins_base": n_wins_base, "n_draws": n_draws, "n_total": len(prefs),
            "discrete_win_rate": (n_wins + n_draws / 2) / len(prefs) * 100,
            **({"avg_length": int(statistics.fmean(lengths))} if lengths else {})}


def _fit_soft_logistic(X: np.ndarray, y: np.ndarray, w: np.ndarray, groups: np.ndarray, n_splits: int = 5):
    """alpaca_eval's fit_LogisticRegressionCV on soft labels: each row twice (label 1 weighted by p,
    label 0 by 1-p), L1 liblinear without intercept, C chosen by group k-fold on continuous log loss."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    Xd = np.concatenate([X, X])
    yd = np.concatenate([np.ones(len(y)), np.zeros(len(y))])
    prob = np.concatenate([y, 1 - y])
    wd = np.concatenate([w, w])
    gd = np.concatenate([groups, groups])

    def fit(C, idx):
        m = LogisticRegression(C=C, penalty="l1", solver="liblinear", fit_intercept=False, random_state=123)
        return m.fit(Xd[idx], yd[idx], sample_weight=prob[idx] * wd[idx])

    def loss(model, idx):
        p = np.clip(model.predict_proba(Xd[idx])[:, 1], 1e-15, 1 - 1e-15)
        t = np.where(yd[idx] == 1, prob[idx], 1 - prob[idx])
        return -np.mean((t * np.log(p) + (1 - t) * np.log(1 - p)) * wd[idx])

    Cs = np.logspace(-4, 4, 10)
    splits = min(n_splits, len(np.unique(gd)))
    if splits < 2:
        return fit(100.0, np.arange(len(yd)))
    folds = list(GroupKFold(n_splits=splits).split(Xd, yd, gd))
    scores = [np.mean([loss(fit(C, tr), te) for tr, te in folds]) for C in Cs]
    return fit(Cs[int(np.argmin(scores))], np.arange(len(yd)))


def length_controlled_winrate(annotations: list[dict], difficulty: list[float],
                              gamed: list[dict] | None = None, regularize_lambda: float = 0.2) -> dict:
    """LC win rate (percent) and the GLM weights. `difficulty[i]` belongs to annotation i;
    `gamed` are alpaca_eval's df_gamed rows (preference in [0,1], std_delta_len, instruction_difficulty,
    not_gamed_baseline) used to regularise towards the gamed baselines."""
    rows = [a for a in annotations if a.get("preference") is not None]
    if len(difficulty) != len(annotations):
        raise PrideError(f"instruction difficulty has {len(difficulty)} values for {len(annotations)} annotations")
    diff = np.array([d for a, d in zip(annotations, difficulty) if a.get("preference") is not None], dtype=float)
    delta = np.array([len(a["output_1"]) - len(a["output_2"]) for a in rows], dtype=float)
    std = delta.std(ddof=1) if len(delta) > 1 and delta.std(ddof=1) > 0 else 1.0
    pref = np.array([(1.5 if a["preference"] == 0 else float(a["preference"])) - 1 for a in rows])
    X = np.column_stack([np.tanh(delta / std), diff, np.ones(len(rows))])
    y, w = pref, np.ones(len(rows))
    if gamed:
        Xg = np.array([[math.tanh(g["std_delta_len"]), g["instruction_difficulty"], float(g["not_gamed_baseline"])]
                       for g in gamed])
        yg = np.array([g["preference"] for g in gamed], dtype=float)
        wg = np.where(Xg[:, 2] > 0, 1.0, regularize_lambda / 2)
        X, y, w = np.concatenate([Xg, X]), np.concatenate([yg, y]), np.concatenate([wg, w])
    model = _fit_soft_logistic(X, y, w, groups=np.arange(len(y)))
    X_test = np.column_stack([np.zeros(len(rows)), diff, np.ones(len(rows))])
    p = model.predict_proba(X_test)[:, 1]
    names = ["np.tanh(std_delta_len)", "instruction_difficulty", "not_gamed_baseline.astype(float)"]
    return {"length_controlled_winrate": float(p.mean() * 100),
            "lc_standard_error": float(p.std(ddof=1) / math.sqrt(len(p)) * 100) if len(p) > 1 else 0.0,
            "glm_weights": dict(zip(names, map(float, model.coef_[0])))}


# ------------------------------------------------------------------ files


def load_eval_set(path: Path) -> list[dict]:
    """alpaca_eval.json (instruction, output of the baseline, generator, dataset) or jsonl."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = [json.loads(line) for line in text.splitlines() if line.strip()]
    for i, row in enumerate(data):
        if "instruction" not in row:
            raise PrideError(f"{path} row {i}: field 'instruction': missing")
    return data


def load_difficulty(path: Path, eval_set: list[dict]) -> list[float]:
    """instruction_difficulty.csv by position (index column) or by instruction text."""
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "instruction_difficulty" not in rows[0]:
        raise PrideError(f"{path}: expected a column 'instruction_difficulty'")
    if "instruction" in rows[0]:
        by_text = {r["instruction"]: float(r["instruction_difficulty"]) for r in rows}
        missing = [e["instruction"][:60] for e in eval_set if e["instruction"] not in by_text]
        if missing:
            raise PrideError(f"{path}: no difficulty for instruction {missing[0]!r}")
        return [by_text[e["instruction"]] for e in eval_set]
    values = [float(r["instruction_difficulty"]) for r in rows]
    if len(values) < len(eval_set):
        raise PrideError(f"{path}: {len(values)} difficulties for {len(eval_set)} instructions")
    return values[: len(eval_set)]


def load_gamed(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        out = []
        for r in csv.DictReader(f):
            out.append({"preference": float(r["preference"]) - (1 if float(r["preference"]) > 1 else 0),
                        "std_delta_len": float(r["std_delta_len"]),
                        "instruction_difficulty": float(r["instruction_difficulty"]),
                        "not_gamed_baseline": r["not_gamed_baseline"].strip().lower() in ("true", "1", "1.0")})
    return out


def score_annotations(paths: list[Path], difficulty_file: Path | None = None) -> dict:
    """`pride eval score alpaca-eval FILE...`: metrics from saved annotations (official format)."""
    annotations = []
    for p in paths:
        try:
            annotations += json.loads(Path(p).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise PrideError(f"{p}: cannot read annotations ({e})") from None
    for i, a in enumerate(annotations):
        if "preference" not in a:
            raise PrideError(f"{paths[0]} row {i}: field 'preference': missing")
    result = get_winrate(annotations)
    if difficulty_file is not None:
        eval_set = [{"instruction": a["instruction"]} for a in annotations]
        result.update(length_controlled_winrate(annotations, load_difficulty(difficulty_file, eval_set)))
    else:
        result["length_controlled_winrate"] = None
        result["note"] = ("length-controlled win rate needs alpaca_eval's instruction_difficulty.csv "
                          "(pass --difficulty FILE)")
    return result
