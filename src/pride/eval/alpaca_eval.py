"""AlpacaEval 2: answers in `model_outputs.json`, the weighted judge, win rates, LC win rate.

Every step follows the official `alpaca_eval` package (0.6.x, `weighted_alpaca_eval_gpt4_turbo`
annotator, `length_controlled_v1` GLM), and the tests compare with that package on the same
inputs:

* Answers: `[{"instruction", "output", "generator", "dataset"}]`, the format the official
  `alpaca_eval --model_outputs` reads.
* Judge request: the official template (`alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt`),
  filled by first-occurrence replacement and split into messages as `prompt_to_chatml` does;
  `max_tokens=1, temperature=1, logprobs=true, top_logprobs=5`. The two outputs are shown
  in an order switched per instruction by `random.Random("is_switched_outputs" + instruction
  + "0")`, identical outputs a draw (1.5) without asking; the preference is `2 - P(m)` from the exact tokens "m"/"M" of the top logprobs
  (NaN when neither is there), then `3 - x` where switched.
* Metrics: `get_winrate` (win_rate, standard_error, n_wins, n_wins_base, n_draws, n_total,
  discrete_win_rate) and `get_length_controlled_winrate` (the L1 logistic GLM on
  tanh(standardised length difference), instruction difficulty and not_gamed_baseline, fitted
  with 5-fold group CV on soft labels together with the gamed baselines of `df_gamed.csv`,
  weighted 0.2 / 2, and predicted with no length difference).
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
from pride.eval.files import check_key

BASELINE = "gpt4_1106_preview"
# alpaca_eval/evaluators_configs/alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt (Apache-2.0)
TEMPLATE = """<|im_start|>system
You are a highly efficient assistant, who evaluates and selects the best large language model (LLMs) based on the quality of their responses to a given instruction. This process will be used to create a leaderboard reflecting the most accurate and human-preferred answers.
<|im_end|>
<|im_start|>user
I require a leaderboard for various large language models. I'll provide you with prompts given to these models and their corresponding outputs. Your task is to assess these responses, and select the model that produces the best output from a human perspective.

## Instruction

{
    "instruction": \"\"\"{instruction}\"\"\",
}

## Model Outputs

Here are the unordered outputs from the models. Each output is associated with a specific model, identified by a unique model identifier.

{
    {
        "model_identifier": "m",
        "output": \"\"\"{output_1}\"\"\"
    },
    {
        "model_identifier": "M",
        "output": \"\"\"{output_2}\"\"\"
    }
}

## Task

Evaluate the models based on the quality and relevance of their outputs, and select the model that generated the best output. Answer by providing the model identifier of the best model. We will use your output as the name of the best model, so make sure your output only contains one of the following model identifiers and nothing else (no quotes, no spaces, no new lines, ...): m or M.

## Best Model Identifier
<|im_end|>"""
JUDGE_PARAMS = {"max_tokens": 1, "temperature": 1, "logprobs": True, "top_logprobs": 5}  # the annotator's config
GLM_FEATURES = ["np.tanh(std_delta_len)", "instruction_difficulty", "not_gamed_baseline.astype(float)"]


# ------------------------------------------------------------------ judging


def is_switched(instruction: str, seed: int = 0) -> bool:
    """alpaca_eval's RandomSwitchTwoColumnsProcessor as the pairwise annotator sets it up
    (`_switch_column="is_switched_outputs"`, seeded by the instruction and the annotator's seed 0)."""
    return random.Random("is_switched_outputs" + instruction + str(seed)).choices([False, True], k=1)[0]


def judge_messages(instruction: str, output_1: str, output_2: str) -> list[dict]:
    """The official prompt: placeholders replaced in order, first occurrence each
    (`utils.make_prompts`), then split into chat messages (`utils.prompt_to_chatml`)."""
    prompt = TEMPLATE
    for key, value in (("instruction", instruction), ("output_1", output_1), ("output_2", output_2)):
        prompt = prompt.replace("{" + key + "}", str(value), 1)
    messages = []
    for part in prompt.strip().split("<|im_start|>")[1:]:
        role, rest = part.split("\n", 1)
        messages.append({"role": role.strip(), "content": rest.split("<|im_end|>", 1)[0].strip()})
    return messages


def logprob_preference(completion: dict) -> float:
    """alpaca_eval's `logprob_parser(numerator_token="m", denominator_tokens=["m", "M"],
    is_binarize=False)`: 2 - P(m) / (P(m) + P(M)) over the exact tokens of the first position's
    top logprobs (the last listed wins a duplicate); NaN when neither token is there."""
    try:
        top = completion["logprobs"]["content"][0]["top_logprobs"]
    except (KeyError, IndexError, TypeError):
        return math.nan
    found = {t["token"]: t["logprob"] for t in top if t["token"] in ("m", "M")}
    if not found:
        return math.nan
    m, big = found.get("m", -math.inf), found.get("M", -math.inf)
    denominator = np.logaddexp(m, big)
    return float(2 - np.exp(m - denominator))


def preference_from_completion(choice: dict, switched: bool) -> float:
    """1 = output_1 (baseline) better, 2 = output_2 (model) better, fractional; NaN if unparsed."""
    x = logprob_preference(choice)
    return 3 - x if switched else x


def judge(client, rows: list[dict], seed: int = 0) -> list[dict]:
    """rows: {instruction, output_1 (baseline), output_2 (model), generator_1, generator_2, dataset}."""
    out = []
    for r in rows:
        ann = dict(r, annotator="weighted_alpaca_eval_gpt4_turbo")
        if r["output_1"] == r["output_2"]:  # the official annotator's preprocessing: a draw, not judged
            ann["preference"] = 1.5
            out.append(ann)
            continue
        sw = is_switched(r["instruction"], seed)
        a, b = (r["output_2"], r["output_1"]) if sw else (r["output_1"], r["output_2"])
        resp = client.complete(judge_messages(r["instruction"], a, b), **JUDGE_PARAMS)
        choice = resp["choices"][0]
        pref = preference_from_completion(choice, sw)
        ann["preference"] = None if math.isnan(pref) else pref
        ann["raw_completion"] = choice
        out.append(ann)
    return out


# ------------------------------------------------------------------ metrics


def preferences_of(annotations: list[dict], where: str = "annotations") -> list[float]:
    """Each row's preference as a float (NaN where missing); anything else is an error."""
    out = []
    for i, a in enumerate(annotations):
        p = a.get("preference")
        if p is None:
            out.append(math.nan)
            continue
        if isinstance(p, bool) or not isinstance(p, (int, float)):
            raise PrideError(f"{where} row {i}: field 'preference': expected a number in [1, 2] (0 or 1.5 = draw) "
                             f"or null, got {p!r}")
        p = float(p)
        if not math.isnan(p) and p != 0 and not 1 <= p <= 2:
            raise PrideError(f"{where} row {i}: field 'preference': {p} is outside [1, 2] (0 or 1.5 = draw)")
        out.append(p)
    return out


def _sem(values: list[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan


def get_winrate(annotations: list[dict], where: str = "annotations") -> dict:
    """alpaca_eval's get_winrate: AbsoluteScoringRule and ZeroOneScoringRule `describe_head2head`."""
    prefs = preferences_of(annotations, where)
    n_draws = sum(p in (0.0, 1.5) for p in prefs)
    valid = [1.5 if p == 0 else p for p in prefs if not math.isnan(p)]
    if not valid:
        raise PrideError(f"{where}: no usable preference")
    values = [p - 1 for p in valid]
    # discrete: 1.5 -> draw, everything else rounded (half to even, as pandas) to 1 or 2
    discrete = [0.5 if p == 1.5 else float(np.round(p)) - 1 for p in valid]
    lengths = [len(a["output_2"]) for a in annotations if isinstance(a.get("output_2"), str)]
    return {"win_rate": statistics.fmean(values) * 100, "standard_error": _sem(values) * 100,
            "n_wins": sum(v > 0.5 for v in values), "n_wins_base": sum(v < 0.5 for v in values),
            "n_draws": n_draws, "n_total": len(values), "discrete_win_rate": statistics.fmean(discrete) * 100,
            **({"avg_length": int(statistics.fmean(lengths))} if lengths else {})}


def _fit_logistic_cv(X: np.ndarray, y: np.ndarray, weight: np.ndarray | None, n_splits: int = 5):
    """alpaca_eval's fit_LogisticRegressionCV with soft labels: every row twice (label 1 weighted by
    p, label 0 by 1 - p), grouped k-fold, L1 liblinear without intercept, scored by the continuous
    log loss; through sklearn's own LogisticRegressionCV, as the official code, so the fit is the same."""
    import sklearn
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import GroupKFold

    def logloss_continuous(y_true, y_pred, true_prob, true_sample_weight=None):
        y_true = np.where(y_true == 1, true_prob, 1 - true_prob)
        y_pred = np.clip(y_pred, 1e-15, 1 - 1e-15)
        loss = y_true * np.log(y_pred) + (1 - y_true) * np.log(1 - y_pred)
        if true_sample_weight is not None:
            loss = loss * true_sample_weight
        return -np.mean(loss)

    n = len(y)
    X_dup = np.concatenate([X, X])
    y_dup = np.concatenate([np.ones(n), np.zeros(n)])
    true_prob = np.concatenate([y, 1 - y])
    groups = np.concatenate([np.arange(n), np.arange(n)])
    true_weight = None if weight is None else np.concatenate([weight, weight])
    sample_weight = true_prob if weight is None else true_prob * true_weight
    # penalty="l1" is deprecated since scikit-learn 1.8 in favour of l1_ratios; both give the same fit
    version = tuple(int(x) for x in sklearn.__version__.split(".")[:2])
    l1 = {"l1_ratios": (1.0,)} if version >= (1, 8) else {"penalty": "l1"}
    if version >= (1, 9):  # only coef_ and predict_proba are used: the same under both attribute layouts
        l1["use_legacy_attributes"] = False
    with sklearn.config_context(enable_metadata_routing=True):
        scorer = make_scorer(logloss_continuous, response_method="predict_proba", greater_is_better=False
                             ).set_score_request(true_sample_weight=True, true_prob=True)
        model = LogisticRegressionCV(cv=GroupKFold(n_splits=n_splits), scoring=scorer, random_state=123, dual=False,
                                     solver="liblinear", n_jobs=None, fit_intercept=False, **l1)
        model.set_fit_request(sample_weight=True)
        model.fit(X_dup, y_dup, sample_weight=sample_weight, groups=groups, true_sample_weight=true_weight,
                  true_prob=true_prob)
    return model


def length_controlled_winrate(annotations: list[dict], gamed: list[dict], regularize_lambda: float = 0.2,
                              where: str = "annotations") -> dict:
    """alpaca_eval's get_length_controlled_winrate with glm_name="length_controlled_v1".

    `gamed` are the rows of the official df_gamed.csv (see `load_gamed`); like the official
    code, the instruction difficulty of annotation i is that of df_gamed's row i among the
    first rows of each instruction index. Rows without a preference count in the length
    standardisation and in the prediction, not in the fit."""
    prefs = preferences_of(annotations, where)
    generators = {(a.get("generator_1"), a.get("generator_2")) for a in annotations}
    if len(generators) == 1 and None not in next(iter(generators)):
        g1, g2 = next(iter(generators))
        if g1 == g2:  # the baseline against itself: 50% by construction, as official
            return {"length_controlled_winrate": 50.0, "lc_standard_error": 0.0,
                    "glm_weights": dict.fromkeys(GLM_FEATURES, 0.0),
                    "note": f"{g2} is the baseline itself: length-controlled win rate 50 by construction"}
    first_rows = {}
    for row_number, g in enumerate(gamed):
        first_rows.setdefault(g["index"], row_number)
    difficulty_by_row = {row: gamed[row]["instruction_difficulty"] for row in first_rows.values()}
    missing = [i for i in range(len(annotations)) if i not in difficulty_by_row]
    if missing:
        raise PrideError(f"df_gamed.csv has no instruction difficulty for annotation {missing[0]} "
                         f"(alpaca_eval looks it up by the annotation's position; {len(annotations)} annotations)")
    for i, a in enumerate(annotations):
        for key in ("output_1", "output_2"):
            if not isinstance(a.get(key), str):
                raise PrideError(f"{where} row {i}: field '{key}': expected a string")
    delta = np.array([len(a["output_1"]) - len(a["output_2"]) for a in annotations], dtype=float)
    rated = sum(not math.isnan(p) for p in prefs)
    if rated < 5 or len(annotations) < 2 or not delta.std(ddof=1) > 0:  # the official fit fails here too
        raise PrideError(f"{where}: the length-controlled win rate needs at least 5 annotations with a preference "
                         f"and outputs whose length differences vary ({rated} with a preference, "
                         f"{len(set(delta.tolist()))} distinct length differences)")
    std_delta = delta / delta.std(ddof=1)
    difficulty = np.array([difficulty_by_row[i] for i in range(len(annotations))])
    y_model = np.array([(1.5 if p == 0 else p) - 1 for p in prefs])
    X_model = np.column_stack([np.tanh(std_delta), difficulty, np.ones(len(annotations))])
    X_gamed = np.array([[math.tanh(g["std_delta_len"]), g["instruction_difficulty"], float(g["not_gamed_baseline"])]
                        for g in gamed]).reshape(-1, 3)
    y_gamed = np.array([g["preference"] for g in gamed], dtype=float)
    w_gamed = np.where(X_gamed[:, 2] > 0, 1.0, 0.0) + regularize_lambda * (X_gamed[:, 2] == 0) / 2
    X = np.concatenate([X_gamed, X_model])
    y = np.concatenate([y_gamed, y_model])
    w = np.concatenate([w_gamed, np.ones(len(annotations))])
    keep = ~np.isnan(y)
    model = _fit_logistic_cv(X[keep], y[keep], w[keep])
    X_test = np.column_stack([np.zeros(len(annotations)), difficulty, np.ones(len(annotations))])
    p = model.predict_proba(X_test)[:, 1]
    return {"length_controlled_winrate": float(p.mean() * 100),
            "lc_standard_error": float(p.std(ddof=1) / math.sqrt(len(p)) * 100) if len(p) > 1 else math.nan,
            "glm_weights": dict(zip(GLM_FEATURES, map(float, model.coef_[0])))}


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


def _read_csv(path: Path) -> list[dict]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise PrideError(f"{path}: cannot read ({e})") from None


def _number(path: Path, line: int, field: str, value, allow_empty: bool = False) -> float:
    if allow_empty and (value is None or value.strip() == ""):
        return math.nan
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise PrideError(f"{path} line {line}: field '{field}': expected a number, got {value!r}") from None
    if math.isnan(x) and not allow_empty:
        raise PrideError(f"{path} line {line}: field '{field}': NaN")
    return x


def load_gamed(path: Path) -> list[dict]:
    """alpaca_eval's df_gamed.csv (tatsu-lab/alpaca_eval dataset): index, preference (in [0, 1];
    empty = none), std_delta_len, instruction_difficulty, not_gamed_baseline (True/False)."""
    rows = _read_csv(path)
    need = ("index", "preference", "std_delta_len", "instruction_difficulty", "not_gamed_baseline")
    if not rows or any(k not in rows[0] for k in need):
        raise PrideError(f"{path}: expected the columns {', '.join(need)} (alpaca_eval's df_gamed.csv)")
    out = []
    for line, r in enumerate(rows, start=2):
        flag = str(r["not_gamed_baseline"]).strip()
        if flag not in ("True", "False"):
            raise PrideError(f"{path} line {line}: field 'not_gamed_baseline': expected True or False, got {flag!r}")
        index = _number(path, line, "index", r["index"])
        if index != int(index):
            raise PrideError(f"{path} line {line}: field 'index': expected an integer, got {r['index']!r}")
        pref = _number(path, line, "preference", r["preference"], allow_empty=True)
        if not math.isnan(pref) and not 0 <= pref <= 1:
            raise PrideError(f"{path} line {line}: field 'preference': {pref} is outside [0, 1]")
        out.append({"index": int(index), "preference": pref,
                    "std_delta_len": _number(path, line, "std_delta_len", r["std_delta_len"]),
                    "instruction_difficulty": _number(path, line, "instruction_difficulty",
                                                      r["instruction_difficulty"]),
                    "not_gamed_baseline": flag == "True"})
    return out


def load_difficulty(path: Path) -> dict[int, float]:
    """alpaca_eval's instruction_difficulty.csv: instruction index (first column) -> difficulty."""
    rows = _read_csv(path)
    if not rows or "instruction_difficulty" not in rows[0]:
        raise PrideError(f"{path}: expected a column 'instruction_difficulty'")
    key = next(iter(rows[0]))
    out = {}
    for line, r in enumerate(rows, start=2):
        index = _number(path, line, key or "index", r[key]) if key != "instruction_difficulty" else line - 2
        out[int(index)] = _number(path, line, "instruction_difficulty", r["instruction_difficulty"])
    return out


def check_difficulty(difficulty: dict[int, float], gamed: list[dict], n: int) -> list[str]:
    """instruction_difficulty.csv should hold the difficulties df_gamed.csv carries (same release)."""
    first: dict[int, float] = {}
    for g in gamed:
        first.setdefault(g["index"], g["instruction_difficulty"])
    off = [i for i in range(n) if i in difficulty and i in first and abs(difficulty[i] - first[i]) > 1e-9]
    return [f"instruction_difficulty.csv and df_gamed.csv disagree on {len(off)} instructions (first: {off[0]}); "
            "length_controlled_v1 uses df_gamed.csv's, as alpaca_eval does"] if off else []


def read_annotations(paths: list[Path]) -> list[dict]:
    annotations: list[dict] = []
    for p in paths:
        try:
            data = json.loads(Path(p).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PrideError(f"{p}: cannot read annotations ({e})") from None
        if not isinstance(data, list) or not all(isinstance(a, dict) for a in data):
            raise PrideError(f"{p}: expected a JSON list of annotation objects (alpaca_eval's annotations.json)")
        for i, a in enumerate(data):
            if "preference" not in a:
                raise PrideError(f"{p} row {i}: field 'preference': missing")
            check_key(f"{p} row {i}", a, "instruction", (str,))
            for key in ("generator_1", "generator_2", "output_1", "output_2"):
                check_key(f"{p} row {i}", a, key, (str,), optional=True)
        annotations += data
    return annotations


def score_annotations(paths: list[Path], gamed_file: Path | None = None, difficulty_file: Path | None = None) -> dict:
    """`pride eval score alpaca-eval FILE... [--gamed df_gamed.csv] [--difficulty instruction_difficulty.csv]`."""
    annotations = read_annotations(paths)
    where = str(paths[0]) if len(paths) == 1 else "annotations"
    if not annotations:
        raise PrideError(f"{where}: no annotations")
    models = sorted({str(a["generator_2"]) for a in annotations if a.get("generator_2") is not None})
    if len(models) > 1:  # alpaca_eval's leaderboard has a row per generator_2: never one pooled win rate
        raise PrideError(f"{where}: annotations of {len(models)} models ({', '.join(models[:3])}); a win rate is one "
                         "model's: score each model's annotations apart")
    seen: dict = {}
    for i, a in enumerate(annotations):
        key = (a.get("instruction"), a.get("generator_2"))
        if key in seen:  # the official code would count it twice
            raise PrideError(f"{where} row {i}: instruction already annotated for {key[1]!r} (row {seen[key]})")
        seen[key] = i
    result = get_winrate(annotations, where)
    if gamed_file is None:
        if difficulty_file is not None:
            raise PrideError("--difficulty: alpaca_eval's length_controlled_v1 also needs df_gamed.csv "
                             "(--gamed FILE), which carries the instruction difficulty it uses")
        result["length_controlled_winrate"] = None
        result["note"] = "the length-controlled win rate needs alpaca_eval's df_gamed.csv (--gamed FILE)"
        return result
    gamed = load_gamed(gamed_file)
    result.update(length_controlled_winrate(annotations, gamed, where=where))
    if difficulty_file is not None:
        warnings = check_difficulty(load_difficulty(difficulty_file), gamed, len(annotations))
        if warnings:
            result["warnings"] = warnings
    return result
