"""Arena-Hard: pairwise judging against a baseline, scores as each official version computes them.

Two versions of lmarena/arena-hard-auto, each followed step by step (`eval.arena_hard_version`):

* **v2** (arena-hard-auto 2.0, the default): each question judged against its category's
  baseline with its category's system prompt (`utils/judge_utils.py`: hard_prompt, coding and
  math against o3-mini, creative_writing against gemini-2.0-flash-001 with a prompt that does
  not ask the judge to answer first), and scored a category at a time, one table each, as
  `show_result.py --category` does; labels parsed from the upper-cased judgment
  with `\\[\\[([AB<>=]+)\\]\\]`, else `\\[([AB<>=]+)\\]`, the last match winning; a question
  with an unparsed game is dropped; each game gives the model's scores (strong verdicts
  three times); the score is the mean of 100 bootstrap means (resampled per model), the
  interval their 5% and 95% quantiles. Style control: a Bradley-Terry fit (torch L-BFGS)
  on the model's one-hot column plus length and markdown-density differences against the
  baseline, standardised, on 100 bootstrap samples: median and 5%/95% of the win rate.
  Token lengths are o200k (gpt-4o) counts.
* **v0.1** (the original release): labels with `\\[\\[([AB<>=]+)\\]\\]` only; two distinct
  labels give none, none at all asks the judge once more to finish its verdict; an
  unparsed game drops only that game. Scores: Bradley-Terry ratings by logistic regression
  (scale 400, baseline at 1000) as the win rate against the baseline, with the 2.5% and
  97.5% percentiles of 100 bootstrap samples. Style control: ratings with length and
  markdown-count differences as covariates (sklearn's default L2 fit, as the original).
  Token lengths are cl100k (gpt-3.5-turbo) counts. v0.1 has one category and one baseline.

Both draw their bootstrap from numpy's RandomState seeded with `seed` (42, the seed v0.1
sets; v2's own script does not seed, so it matches when seeded the same way). Markdown
counts (headers, ordered/unordered lists, bold) skip code blocks as `add_markdown_info.py`.
Answer metadata is taken from the answer files where present, else computed the same way.
"""

from __future__ import annotations

import math
import re
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pride.errors import PrideError
from pride.eval.files import check_key, read_jsonl, read_objects

SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to "
    "the user prompt displayed below. You will be given assistant A's answer and assistant B's answer. Your job is "
    "to evaluate which assistant's answer is better.\n\nBegin your evaluation by generating your own answer to the "
    "prompt. You must provide your answers before judging any answers.\n\nWhen evaluating the assistants' answers, "
    "compare both assistants' answers with your answer. You must identify and correct any mistakes or inaccurate "
    "information.\n\nThen consider if the assistant's answers are helpful, relevant, and concise. Helpful means the "
    "answer correctly responds to the prompt or follows the instructions. Note when user prompt has any ambiguity "
    "or more than one interpretation, it is more helpful and appropriate to ask for clarifications or more "
    "information from the user than providing an answer based on assumptions. Relevant means all parts of the "
    "response closely connect or are appropriate to what is being asked. Concise means the response is clear and "
    "not verbose or excessive.\n\nThen consider the creativity and novelty of the assistant's answers when needed. "
    "Finally, identify any missing important information in the assistants' answers that would be beneficial to "
    "include when responding to the user prompt.\n\nAfter providing your explanation, you must output only one of "
    "the following choices as your final verdict with a label:\n\n1. Assistant A is significantly better: "
    "[[A>>B]]\n2. Assistant A is slightly better: [[A>B]]\n3. Tie, relatively the same: [[A=B]]\n4. Assistant B is "
    "slightly better: [[B>A]]\n5. Assistant B is significantly better: [[B>>A]]\n\nExample output: \"My final "
    "verdict is tie: [[A=B]]\"."
)
# v2's creative_writing prompt: SYSTEM without "Begin your evaluation by generating your own answer ..."
CREATIVE_SYSTEM = SYSTEM.replace(
    "\n\nBegin your evaluation by generating your own answer to the prompt. You must provide your answers before "
    "judging any answers.\n\nWhen evaluating the assistants' answers, compare both assistants' answers with your "
    "answer.", "\n\nWhen evaluating the assistants' answers, compare both assistants' answers.")
TEMPLATE = ("<|User Prompt|>\n{question}\n\n<|The Start of Assistant A's Answer|>\n{answer_a}\n"
            "<|The End of Assistant A's Answer|>\n\n<|The Start of Assistant B's Answer|>\n{answer_b}\n"
            "<|The End of Assistant B's Answer|>")
RETRY = "continue your judgment and finish by outputting a final verdict label"  # v0.1


@dataclass(frozen=True)
class Version:
    name: str
    baseline: str
    judge_max_tokens: int
    encoding: str  # token lengths for style control
    ci: tuple[float, float]  # percentiles of the bootstrap


VERSIONS = {"v2": Version("v2", "o3-mini-2025-01-31", 16000, "o200k_base", (5.0, 95.0)),
            "v0.1": Version("v0.1", "gpt-4-0314", 4096, "cl100k_base", (2.5, 97.5))}
# v2's label_to_score: the model's score of a label read with the model as B (weight 3 for strong)
V2_LABEL_SCORE = {"A>B": [1], "A>>B": [1] * 3, "A=B": [0.5], "A<<B": [0] * 3, "A<B": [0], "B>A": [0],
                  "B>>A": [0] * 3, "B=A": [0.5], "B<<A": [1] * 3, "B<A": [1]}


# v2's JUDGE_SETTINGS (utils/judge_utils.py): each question category's baseline and judge system prompt
CATEGORIES = {"hard_prompt": ("o3-mini-2025-01-31", SYSTEM), "coding": ("o3-mini-2025-01-31", SYSTEM),
              "math": ("o3-mini-2025-01-31", SYSTEM), "creative_writing": ("gemini-2.0-flash-001", CREATIVE_SYSTEM),
              "arena-hard-v0.1": ("gpt-4-0314", SYSTEM)}
V01_TABLE = "arena-hard-v0.1"  # v0.1 scores every judgment in one table
UNCATEGORIZED = "uncategorized"  # v2 judgments without a category


def official_baseline(category: str | None, v: Version) -> str | None:
    """The baseline the official code of `v` judges a `category` question against (None: it has none)."""
    if v.name != "v2":
        return v.baseline
    return CATEGORIES[category][0] if category in CATEGORIES else None


def judge_setting(category: str | None, v: Version, baseline: str | None = None) -> tuple[str, str]:
    """(baseline, system prompt) for a question of `category`; `baseline` overrides the official one."""
    system = CATEGORIES[category][1] if v.name == "v2" and category in CATEGORIES else SYSTEM
    chosen = baseline or official_baseline(category, v)
    if chosen:
        return chosen, system
    raise PrideError(f"Arena-Hard v2: question category {category!r} has no official baseline "
                     f"({', '.join(CATEGORIES)}); set eval.arena_hard_baseline to judge every question against one")


def version(name: str) -> Version:
    if name not in VERSIONS:
        raise PrideError(f"unknown Arena-Hard version {name!r} (v2, v0.1)")
    return VERSIONS[name]


# ------------------------------------------------------------------ files


def load_questions(path: Path) -> list[dict]:
    """[{id, prompt, category}] from either question layout; `raw` keeps the original row."""
    out = []
    for n, q in enumerate(read_jsonl(Path(path)), start=1):
        if "uid" in q and "prompt" in q:
            out.append({"id": q["uid"], "prompt": q["prompt"], "category": q.get("category"), "layout": "v2", "raw": q})
        elif "question_id" in q and "turns" in q:
            turn = q["turns"][0]
            out.append({"id": q["question_id"], "prompt": turn["content"] if isinstance(turn, dict) else turn,
                        "category": q.get("category"), "layout": "v1", "raw": q})
        else:
            raise PrideError(f"{path} line {n}: expected 'uid'+'prompt' or 'question_id'+'turns'")
    return out


def style_metadata(text: str, encoding: str) -> dict:
    """add_markdown_info.py: token_len, then header/list/bold counts outside code blocks."""
    import quicktok

    counted = text
    for block in re.findall("```([^`]*)```", text):
        counted = counted.replace(block, "")
    return {"token_len": len(quicktok.get_encoding(encoding).encode_ordinary(text)),
            "header_count": {f"h{i}": len(re.findall(rf"^#{{{i}}}\s", counted, re.MULTILINE)) for i in range(1, 7)},
            "list_count": {"ordered": len(re.findall(r"^\s*\d+\.\s", counted, re.MULTILINE)),
                           "unordered": len(re.findall(r"^\s*[-*+]\s", counted, re.MULTILINE))},
            "bold_count": {"**": len(re.findall(r"\*\*[^*\n]+\*\*", counted)),
                           "__": len(re.findall(r"__[^_\n]+__", counted))}}


def answer_record(question: dict, model: str, answer: str, v: Version) -> dict:
    """One answer in the layout of its question file, with the version's style metadata."""
    meta = style_metadata(answer, v.encoding)
    if question["layout"] == "v2":
        return {"uid": question["id"], "ans_id": uuid.uuid4().hex[:22], "model": model,
                "messages": [{"role": "user", "content": question["prompt"]},
                             {"role": "assistant", "content": {"answer": answer}}],
                "tstamp": time.time(), "metadata": meta}
    return {"question_id": question["id"], "answer_id": uuid.uuid4().hex[:22], "model_id": model,
            "choices": [{"index": 0, "turns": [{"content": answer, "token_len": meta["token_len"]}]}],
            "tstamp": time.time(), "conv_metadata": meta}


def load_answers(path: Path) -> tuple[str | None, dict, dict]:
    """(model, {question id: answer text}, {question id: metadata or None}) from either layout."""
    texts, meta, model = {}, {}, None
    for n, a in enumerate(read_jsonl(Path(path)), start=1):
        try:
            if "uid" in a:
                content = a["messages"][-1]["content"]
                qid, text = a["uid"], content["answer"] if isinstance(content, dict) else content
                model, m = a.get("model", model), a.get("metadata")
            elif "question_id" in a:
                turn = a["choices"][0]["turns"][0]
                qid, text = a["question_id"], turn["content"] if isinstance(turn, dict) else turn
                model, m = a.get("model_id", model), a.get("conv_metadata")
            else:
                raise PrideError(f"{path} line {n}: expected 'uid' or 'question_id'")
        except (KeyError, IndexError, TypeError) as e:
            raise PrideError(f"{path} line {n}: not an arena-hard answer ({e})") from None
        if not isinstance(text, str):
            raise PrideError(f"{path} line {n}: the answer is not a string")
        texts[qid], meta[qid] = text, m
    return model, texts, meta


# ------------------------------------------------------------------ judging


def parse_label_v01(judgment: str) -> tuple[str | None, bool]:
    """v0.1's get_score: (label, try_again). One distinct label wins; none asks again; several give none."""
    matches = [m for m in re.findall(r"\[\[([AB<>=]+)\]\]", judgment) if m != ""]
    if not matches:
        return None, True
    if len(set(matches)) == 1:
        return matches[0].strip("\n"), False
    return None, False


def parse_label_v2(judgment: str) -> str | None:
    """v2's get_score: the last match of the first pattern that matches the upper-cased judgment."""
    for pattern in (r"\[\[([AB<>=]+)\]\]", r"\[([AB<>=]+)\]"):
        matches = [m for m in re.findall(pattern, judgment.upper()) if m != ""]
        if matches:
            return matches[-1].strip("\n")
    return None


def judge(client, questions: list[dict], answers: dict, baselines: dict, model: str, v: Version,
          baseline: str | None = None, max_tokens: int | None = None) -> list[dict]:
    """Two games per question: (A=baseline, B=model) then (A=model, B=baseline), in v's record layout.
    `baselines`: baseline name -> question id -> answer; each question's baseline and system prompt
    are its category's (`judge_setting`)."""
    out = []
    for q in questions:
        baseline_name, system = judge_setting(q.get("category"), v, baseline)
        base = baselines[baseline_name].get(q["id"])
        if base is None:
            raise PrideError(f"Arena-Hard: the baseline {baseline_name} has no answer to question {q['id']}")
        games = []
        for a, b in ((base, answers[q["id"]]), (answers[q["id"]], base)):
            messages = [{"role": "system", "content": system},
                        {"role": "user", "content": TEMPLATE.format(question=q["prompt"], answer_a=a, answer_b=b)}]
            params = dict(temperature=0, max_tokens=max_tokens or v.judge_max_tokens)
            if v.name == "v2":
                text = client.text(messages, **params)
                games.append({"score": parse_label_v2(text), "judgment": {"answer": text}, "prompt": messages})
                continue
            judgment, label = "", None
            for _ in range(2):  # number_of_judgment_attempts
                new = client.text(messages, **params)
                judgment += "\n" + new
                label, again = parse_label_v01(judgment)
                messages = messages + [{"role": "assistant", "content": new}]
                if not again:
                    break
                messages = messages + [{"role": "user", "content": RETRY}]
            games.append({"user_prompt": messages[1]["content"], "judgment": judgment, "score": label})
        key = "uid" if q["layout"] == "v2" else "question_id"
        out.append({key: q["id"], "category": q.get("category"), "model": model, "baseline": baseline_name,
                    "games": games})
    return out


# ------------------------------------------------------------------ battles


def _qid(j: dict):
    return j.get("uid", j.get("question_id"))


def battles_v2(judgments: list[dict]) -> tuple[list[tuple], dict[str, int], dict[str, list[str]]]:
    """(question, model, the model's score) rows; per model, how many questions were dropped and
    which games had a label no v2 verdict has ("q12: A>>>B"). The official code drops a question
    with a null game and crashes on an unknown label; pride drops both and says so."""
    rows: list[tuple] = []
    dropped: dict[str, int] = {}
    unknown: dict[str, list[str]] = {}
    for j in judgments:
        model = j["model"].split("/")[-1]
        games = j.get("games") or []
        labels = [g.get("score") if isinstance(g, dict) else None for g in games[:2]]
        if len(labels) < 2 or any(lab not in V2_LABEL_SCORE for lab in labels):
            dropped[model] = dropped.get(model, 0) + 1
            unknown.setdefault(model, []).extend(f"{_qid(j)}: {lab}" for lab in labels
                                                 if lab is not None and lab not in V2_LABEL_SCORE)
            continue
        scores = V2_LABEL_SCORE[labels[1]] + [1 - s for s in V2_LABEL_SCORE[labels[0]]]
        rows += [(_qid(j), model, s) for s in scores]
    return rows, dropped, unknown


def battles_v01(judgments: list[dict], baseline: str, weight: int = 3) -> list[dict]:
    """v0.1's get_battles_from_row: model_a = baseline, model_b = model; an unparsed game adds none."""
    won_by_a = {"A>B": ("model_a", 1), "A>>B": ("model_a", weight), "A=B": ("tie", 1), "B>A": ("model_b", 1),
                "B>>A": ("model_b", weight)}
    flip = {"model_a": "model_b", "model_b": "model_a", "tie": "tie"}
    out = []
    for j in judgments:
        for g, game in enumerate((j.get("games") or [])[:2]):
            label = game.get("score") if isinstance(game, dict) else None
            if label not in won_by_a:
                continue
            winner, n = won_by_a[label]
            out += [{"question_id": _qid(j), "model_a": baseline, "model_b": j["model"],
                     "winner": winner if g == 0 else flip[winner]}] * n
    return out


# ------------------------------------------------------------------ scores


def _elo(X: np.ndarray, Y: np.ndarray, models: list[str], baseline: str, anchor: float = 1000.0,
         unpenalised: bool = True) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    # penalty=None is spelled C=inf since scikit-learn 1.8 (the same fit)
    lr = (LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-8) if unpenalised
          else LogisticRegression(fit_intercept=False))
    lr.fit(X, Y)
    elo = 400 * lr.coef_[0] + 1000
    p = len(models)
    elo[:p] += anchor - elo[models.index(baseline)]
    return elo[:p], lr.coef_[0][p:]


def _design_v01(battles: list[dict], models: list[str], style: np.ndarray | None):
    """compute_mle_elo / construct_style_matrices: every battle twice; a tie is one A win and one B win."""
    n = len(battles)
    k = 0 if style is None else style.shape[1]
    X = np.zeros((2 * n, len(models) + k))
    rows = np.arange(2 * n)
    a = [models.index(b["model_a"]) for b in battles] * 2
    b = [models.index(x["model_b"]) for x in battles] * 2
    X[rows, a] = math.log(10)
    X[rows, b] = -math.log(10)
    if style is not None:
        X[:, len(models):] = np.concatenate([style, style])
    winners = [x["winner"] for x in battles]
    Y = np.array([1.0 if w == "model_a" else 0.0 for w in winners] * 2)
    Y[[i for i, w in enumerate(winners) if w == "tie"]] = 1.0  # first copy of a tie
    return X, Y


def bradley_terry(battles: list[dict], baseline: str) -> dict[str, float]:
    """v0.1's compute_mle_elo: ratings with the baseline at 1000 (models ordered as they appear)."""
    models = list(dict.fromkeys([b["model_a"] for b in battles] + [b["model_b"] for b in battles]))
    X, Y = _design_v01(battles, models, None)
    return dict(zip(models, map(float, _elo(X, Y, models, baseline)[0])))


def _style_v01(battles: list[dict], meta: dict, baseline: str) -> np.ndarray:
    """construct_style_matrices: (a - b) / (a + b + 1) for tokens, headers, lists, bold; standardised."""
    def vec(m):
        return [m["token_len"], *(sum(m[k].values()) for k in ("header_count", "list_count", "bold_count"))]

    a = np.array([vec(meta[baseline][b["question_id"]]) for b in battles], dtype=float)
    b = np.array([vec(meta[x["model_b"]][x["question_id"]]) for x in battles], dtype=float)
    diff = (a - b) / (a + b + 1)
    diff = np.concatenate([diff, diff])  # the design holds every battle twice
    return ((diff - diff.mean(axis=0)) / diff.std(axis=0))[: len(battles)]


def _win_rate(elo_model: float, elo_base: float) -> float:
    return 1 / (1 + 10 ** ((elo_base - elo_model) / 400))


def score_v01(judgments: list[dict], baseline: str, rounds: int = 100, seed: int = 42, meta: dict | None = None) -> dict:
    battles = battles_v01(judgments, baseline)
    if not battles:
        return {}
    models = list(dict.fromkeys([baseline] + [b["model_b"] for b in battles]))
    style = None if meta is None else _style_v01(battles, meta, baseline)
    X, Y = _design_v01(battles, models, style)
    rng = np.random.RandomState(seed)
    if style is None:
        ratings = bradley_terry(battles, baseline)
        elo = np.array([ratings[m] for m in models])
        boot = []
        for _ in range(rounds):  # get_bootstrap_result: battles.sample(frac=1, replace=True)
            pick = rng.choice(len(battles), size=len(battles), replace=True)
            sample = bradley_terry([battles[i] for i in pick], baseline)
            boot.append([sample.get(m, np.nan) for m in models])
    else:  # fit_bt (L2, anchor 1114) with get_bootstrap_result_style_control's resampling
        elo, _ = _elo(X, Y, models, baseline, anchor=1114, unpenalised=False)
        n = len(battles)
        tie = np.array([b["winner"] == "tie" for b in battles])
        boot = []
        for _ in range(rounds):
            idx = rng.choice(n, size=n, replace=True)
            nontie, ties = idx[~tie[idx]], idx[tie[idx]]
            both = np.concatenate([ties, ties + n])
            Xs = np.concatenate([X[nontie], X[nontie], X[both]])
            Ys = np.concatenate([Y[nontie], Y[nontie], Y[both]])
            boot.append(_elo(Xs, Ys, models, baseline, anchor=1114, unpenalised=False)[0])
    boot = np.array(boot)
    if np.isnan(boot).any():
        raise PrideError("a bootstrap sample lacks a model (too few battles): the original code fails here too")
    b = models.index(baseline)
    lo_pct, hi_pct = VERSIONS["v0.1"].ci
    out = {}
    for i, m in enumerate(models):
        if m == baseline:
            continue
        lo, hi = np.percentile(boot[:, i], lo_pct), np.percentile(boot[:, i], hi_pct)
        base_lo, base_hi = np.percentile(boot[:, b], lo_pct), np.percentile(boot[:, b], hi_pct)
        out[m] = {"score": _win_rate(elo[i], elo[b]) * 100, "ci_lower": _win_rate(lo, base_lo) * 100,
                  "ci_upper": _win_rate(hi, base_hi) * 100, "rating": float(elo[i] - elo[b] + 1000),
                  "battles": sum(1 for x in battles if x["model_b"] == m)}
    return out


def score_v2(judgments: list[dict], baseline: str, rounds: int = 100, seed: int = 42, meta: dict | None = None) -> dict:
    rows, dropped, unknown = battles_v2(judgments)
    if not rows:
        return {}
    models = sorted({m for _, m, _ in rows})
    rng = np.random.RandomState(seed)
    lo_pct, hi_pct = VERSIONS["v2"].ci
    out = {}
    if meta is None:  # print_leaderboard: per model, resample its battles, take the mean
        by_model = {m: np.array([s for _, mm, s in rows if mm == m], dtype=float) for m in models}
        means = {m: [] for m in models}
        for _ in range(rounds):
            for m in models:  # groupby("model").sample: groups in sorted order
                x = by_model[m]
                means[m].append(x[rng.choice(len(x), size=len(x), replace=True)].mean())
        for m in models:
            v = np.array(means[m])
            out[m] = {"score": float(v.mean() * 100), "ci_lower": float(np.percentile(v, lo_pct) * 100),
                      "ci_upper": float(np.percentile(v, hi_pct) * 100), "battles": len(by_model[m])}
    else:
        probs, unique = _bt_style_v2(rows, meta, baseline, rng, rounds)
        for m in models:
            v = probs[:, unique.index(m)].numpy().astype(np.float64)
            out[m] = {"score": float(np.quantile(v, 0.5) * 100), "ci_lower": float(np.quantile(v, 0.05) * 100),
                      "ci_upper": float(np.quantile(v, 0.95) * 100),
                      "battles": sum(1 for _, mm, _ in rows if mm == m)}
    for m in out:
        out[m]["dropped_questions"] = dropped.get(m, 0)
        if unknown.get(m):
            out[m]["unknown_labels"] = unknown[m]
    return out


def _bt_style_v2(rows: list[tuple], meta: dict, baseline: str, rng: np.random.RandomState, rounds: int):
    """print_leaderboard_with_style_features with length and markdown control, in float32 as the original."""
    import torch

    def vec(m):
        return [m["token_len"], *(sum(m[k].values()) for k in ("header_count", "list_count", "bold_count"))]

    model_f = torch.tensor([vec(meta[m][q]) for q, m, _ in rows], dtype=torch.float32)
    base_f = torch.tensor([vec(meta[baseline][q]) for q, _, _ in rows], dtype=torch.float32)
    final = torch.zeros_like(model_f)
    final[:, 0] = (model_f[:, 0] - base_f[:, 0]) / (model_f[:, 0] + base_f[:, 0])
    model_d, base_d = model_f[:, 1:] / (model_f[:, :1] + 1), base_f[:, 1:] / (base_f[:, :1] + 1)
    final[:, 1:] = (model_d - base_d) / (model_d + base_d + 1)
    normalized = (final - torch.mean(final, axis=0)) / torch.std(final, axis=0)
    unique = sorted(set([m for _, m, _ in rows] + [baseline]))
    onehot = torch.zeros((len(rows), len(unique)), dtype=torch.float32)
    for r, (_, m, _) in enumerate(rows):
        onehot[r, unique.index(m)] = 1
        onehot[r, unique.index(baseline)] = -1
    features = torch.cat([onehot, normalized], dim=1)
    if torch.isnan(features).any():
        raise PrideError("style control: a style feature is undefined (an empty answer on both sides?)")
    outcomes = torch.tensor([s for _, _, s in rows])
    boot = rng.randint(low=0, high=features.shape[0], size=(rounds, features.shape[0]))
    coefs = torch.stack([_fit_bt_lbfgs(features[i], outcomes[i]) for i in (torch.as_tensor(b) for b in boot)])
    coefs = coefs[:, :-4]
    exp = torch.exp(coefs)
    b = unique.index(baseline)
    probs = torch.zeros(coefs.shape[0], coefs.shape[1])
    for i in range(len(unique)):
        probs[:, i] = exp[:, i] / (exp[:, i] + exp[:, b])
    return probs, unique


def _fit_bt_lbfgs(features, outcomes):
    """fit_pairwise_model(loss_type="bt"): coefficients from 0.5, L-BFGS (lr 0.1, 50 iterations, tol 1e-9)."""
    import torch

    logits = torch.nn.Parameter(torch.full((features.shape[1],), 0.5))
    optimizer = torch.optim.LBFGS([logits], lr=0.1, max_iter=50, tolerance_grad=1e-9, tolerance_change=1e-9)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(features @ logits, outcomes.float(),
                                                                    reduction="sum")
        loss.backward()
        return loss

    optimizer.step(closure)
    return logits.detach()


def tables(judgments: list[dict], version_name: str = "v2", baseline: str | None = None) -> dict:
    """{table: (baseline, judgments)}: v2 a table per question category, as `show_result.py
    --category` scores one category at a time; v0.1 one table. A table's baseline is `baseline`,
    else the one its judgments name (what was judged), else the category's official one."""
    v = version(version_name)
    groups: dict = {}
    for j in judgments:
        key = (j.get("category") or UNCATEGORIZED) if v.name == "v2" else V01_TABLE
        groups.setdefault(key, []).append(j)
    out = {}
    for key, rows in groups.items():
        named = {j["baseline"] for j in rows if isinstance(j.get("baseline"), str)}
        if baseline is not None and named and named != {baseline}:  # a label would not change what was judged
            raise PrideError(f"--baseline {baseline}: the Arena-Hard {key} judgments were made against "
                             f"{', '.join(sorted(named))}; score them without --baseline (or judge against "
                             f"{baseline})")
        if baseline is None and len(named) > 1:
            raise PrideError(f"Arena-Hard {key}: judgments against different baselines ({', '.join(sorted(named))}); "
                             "score them apart, or name one with --baseline")
        out[key] = (baseline or next(iter(named), None) or official_baseline(key, v) or v.baseline, rows)
    return out


def headline_table(keys: list[str]) -> str:
    """The table a one-number summary reports: hard_prompt (show_result.py's default category)
    when scored, else the first."""
    return "hard_prompt" if "hard_prompt" in keys else keys[0]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def score(judgments: list[dict], baseline: str | None = None, rounds: int = 100, seed: int = 42,
          version_name: str = "v2", meta: dict | None = None, warn=_stderr) -> dict:
    """{table: {model: score (%) and the bootstrap interval of `version_name`}}, a table per
    category (`tables`); `meta` (model -> question -> style metadata) turns style control on.
    A label no verdict has is warned about with its question (the official code stops on it)."""
    return score_tables(tables(judgments, version_name, baseline), rounds, seed, version_name, meta, warn)


def score_tables(groups: dict, rounds: int = 100, seed: int = 42, version_name: str = "v2", meta: dict | None = None,
                 warn=_stderr) -> dict:
    """`score` of groups already made by `tables`."""
    fn = score_v2 if version(version_name).name == "v2" else score_v01
    out = {}
    for key, (base, rows) in groups.items():
        table = fn(rows, base, rounds, seed, meta)
        for m, row in table.items():
            if row.get("unknown_labels"):
                warn(f"warning: arena-hard {key}: {m}: {len(row['unknown_labels'])} question(s) dropped for a label "
                     f"that is no verdict ({', '.join(row['unknown_labels'])})")
        if not table:
            table = {m: {"score": None, "ci_lower": None, "ci_upper": None, "battles": 0,
                         "note": "no judgment had a usable verdict"} for m in sorted({j["model"] for j in rows})}
        for m in table:
            table[m].update(baseline=base, version=version_name, bootstrap_rounds=rounds, style_control=meta is not None)
        out[key] = table
    return out


def check_judgment(where: str, j: dict) -> tuple:
    if not isinstance(j.get("model"), str) or _qid(j) is None:
        raise PrideError(f"{where}: expected an arena-hard judgment with 'model' and 'uid' (or 'question_id')")
    check_key(where, j, "uid" if "uid" in j else "question_id")
    for key in ("category", "baseline"):
        if j.get(key) is not None and not isinstance(j[key], str):
            raise PrideError(f"{where}: field '{key}': expected a string, got {type(j[key]).__name__}")
    games = j.get("games")
    if not isinstance(games, list) or not all(g is None or isinstance(g, dict) for g in games):
        raise PrideError(f"{where}: field 'games': expected a list of game objects, got {type(games).__name__}")
    for k, g in enumerate(games):
        label = (g or {}).get("score")
        if label is not None and not isinstance(label, str):
            raise PrideError(f"{where}: field 'games[{k}].score': expected a label like 'A>B' or null, got {label!r}")
    return j["model"], _qid(j)


def style_meta_from_files(answer_files: list[Path], v: Version) -> dict:
    """model -> question -> metadata, from answer files (computed from the text where missing)."""
    meta: dict = {}
    for f in answer_files:
        model, texts, given = load_answers(f)
        if model is None:
            raise PrideError(f"{f}: no model name in the answers")
        by_question = {q: given[q] or style_metadata(t, v.encoding) for q, t in texts.items()}
        meta[model] = meta[model.split("/")[-1]] = by_question  # v0.1 keys by the full name, v2 by the last part
    return meta


def score_files(paths: list[Path], baseline: str | None = None, rounds: int = 100, version_name: str = "v2",
                answer_files: list[Path] | None = None, seed: int = 42) -> dict:
    """`pride eval score arena-hard FILE...`: judgment files -> {table: {model: scores}} (a table per
    v2 category; style control with answer files)."""
    if rounds < 1:
        raise PrideError(f"--rounds {rounds}: at least one bootstrap round")
    v = version(version_name)
    rows = read_objects(paths, "judgments")
    seen: dict = {}
    for where, j in rows:
        key = check_judgment(where, j)
        if key in seen:  # the official code would count the question twice
            raise PrideError(f"{where}: {key[0]} on question {key[1]} was already judged at {seen[key]}")
        seen[key] = where
    judgments = [j for _, j in rows]
    groups = tables(judgments, v.name, baseline)
    where_of = {id(j): where for where, j in rows}
    for base, group in groups.values():
        for j in group:
            if j["model"].split("/")[-1] == base.split("/")[-1]:
                raise PrideError(f"{where_of[id(j)]}: {j['model']!r} is the baseline: a model scored against itself")
    meta = style_meta_from_files(answer_files, v) if answer_files else None
    if meta is not None:
        for base, group in groups.values():
            for m in {j["model"].split("/")[-1] for j in group} | {base}:
                if m not in meta:
                    raise PrideError(f"style control: no answer file for {m!r} among --answers")
            for j in group:
                for m in (j["model"].split("/")[-1], base):
                    if _qid(j) not in meta[m]:
                        raise PrideError(f"style control: {where_of[id(j)]} judges question {_qid(j)}, and the "
                                         f"--answers of {m!r} have no answer to it")
    return score_tables(groups, rounds, seed, v.name, meta)


__all__ = ["VERSIONS", "CATEGORIES", "judge", "judge_setting", "tables", "headline_table", "score", "score_tables",
           "score_files", "load_questions", "load_answers", "answer_record",
           "style_metadata", "parse_label_v01", "parse_label_v2"]
