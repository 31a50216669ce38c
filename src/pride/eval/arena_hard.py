"""Arena-Hard: pairwise judging against a baseline, Bradley-Terry scores, bootstrap intervals.

Formats as in lmarena/arena-hard-auto: questions either `{uid, category, cluster, prompt}`
(the current layout, used for v0.1 and v2.0 sets) or the older `{question_id, category,
cluster, turns: [{content}]}`; answers in the matching layout (`{uid, ans_id, model,
messages: [user, {role: assistant, content: {answer}}], tstamp, metadata}` or
`{question_id, answer_id, model_id, choices: [{index, turns: [{content, token_len}]}]}`).

Every question is judged twice, baseline first (game 1) and model first (game 2), with
the labels [[A>>B]] [[A>B]] [[A=B]] [[B>A]] [[B>>A]]; a strong verdict counts as 3 battles.
Scores: Bradley-Terry ratings fitted by logistic regression (scale 400, base 10, baseline
anchored at 1000), reported as the win rate against the baseline, with a 95% interval from
`rounds` bootstrap resamples of the battles. `style_control` adds normalised differences
of answer length and markdown counts as covariates (arena-hard v2's style control).
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from pathlib import Path

import numpy as np

from pride.errors import PrideError
from pride.eval.files import read_jsonl

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
TEMPLATE = ("<|User Prompt|>\n{question}\n\n<|The Start of Assistant A's Answer|>\n{answer_a}\n"
            "<|The End of Assistant A's Answer|>\n\n<|The Start of Assistant B's Answer|>\n{answer_b}\n"
            "<|The End of Assistant B's Answer|>")
LABEL = re.compile(r"\[\[([AB<>=]+)\]\]")
LABELS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")


# ------------------------------------------------------------------ files


def load_questions(path: Path) -> list[dict]:
    """[{id, prompt, category}] from either question layout; `raw` keeps the original row."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            q = json.loads(line)
        except json.JSONDecodeError as e:
            raise PrideError(f"{path} line {n}: bad JSON ({e.msg})") from None
        if "uid" in q and "prompt" in q:
            out.append({"id": q["uid"], "prompt": q["prompt"], "category": q.get("category"), "layout": "v2", "raw": q})
        elif "question_id" in q and "turns" in q:
            turn = q["turns"][0]
            out.append({"id": q["question_id"], "prompt": turn["content"] if isinstance(turn, dict) else turn,
                        "category": q.get("category"), "layout": "v1", "raw": q})
        else:
            raise PrideError(f"{path} line {n}: expected 'uid'+'prompt' or 'question_id'+'turns'")
    return out


def answer_record(question: dict, model: str, answer: str, token_len: int) -> dict:
    """One answer in the layout of its question file."""
    if question["layout"] == "v2":
        return {"uid": question["id"], "ans_id": uuid.uuid4().hex[:22], "model": model,
                "messages": [{"role": "user", "content": question["prompt"]},
                             {"role": "assistant", "content": {"answer": answer}}],
                "tstamp": time.time(), "metadata": {"token_len": token_len, **markdown_counts(answer)}}
    return {"question_id": question["id"], "answer_id": uuid.uuid4().hex[:22], "model_id": model,
            "choices": [{"index": 0, "turns": [{"content": answer, "token_len": token_len}]}], "tstamp": time.time()}


def load_answers(path: Path) -> dict:
    """{question id: answer text} from either answer layout."""
    out = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        a = json.loads(line)
        if "uid" in a:
            content = a["messages"][-1]["content"]
            out[a["uid"]] = content["answer"] if isinstance(content, dict) else content
        elif "question_id" in a:
            turn = a["choices"][0]["turns"][0]
            out[a["question_id"]] = turn["content"] if isinstance(turn, dict) else turn
        else:
            raise PrideError(f"{path} line {n}: expected 'uid' or 'question_id'")
    return out


def markdown_counts(text: str) -> dict:
    return {"header_count": {f"h{i}": len(re.findall(rf"^{'#' * i} ", text, flags=re.M)) for i in range(1, 7)},
            "list_count": {"ordered": len(re.findall(r"^\s*\d+\. ", text, flags=re.M)),
                           "unordered": len(re.findall(r"^\s*[-*+] ", text, flags=re.M))},
            "bold_count": {"**": len(re.findall(r"\*\*[^*\n]+\*\*", text)), "__": len(re.findall(r"__[^_\n]+__", text))}}


# ------------------------------------------------------------------ judging


def parse_label(judgment: str) -> str | None:
    found = [m for m in LABEL.findall(judgment) if m in LABELS]
    return found[-1] if found else None


def judge(client, questions: list[dict], answers: dict, baseline: dict, model: str, baseline_name: str,
          max_tokens: int = 4096) -> list[dict]:
    """Two games per question: (A=baseline, B=model) then (A=model, B=baseline)."""
    out = []
    for q in questions:
        games = []
        for a, b in ((baseline[q["id"]], answers[q["id"]]), (answers[q["id"]], baseline[q["id"]])):
            prompt = TEMPLATE.format(question=q["prompt"], answer_a=a, answer_b=b)
            text = client.text([{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
                               temperature=0, max_tokens=max_tokens)
            games.append({"user_prompt": prompt, "judgment": text, "score": parse_label(text)})
        out.append({("uid" if q["layout"] == "v2" else "question_id"): q["id"], "model": model,
                    "baseline": baseline_name, "games": games})
    return out


# ------------------------------------------------------------------ scores


def battles_from_judgments(judgments: list[dict], baseline: str, weight: int = 3) -> list[dict]:
    """arena-hard-auto's battle table: model_a = baseline, model_b = model; strong verdicts x `weight`."""
    battles = []
    for j in judgments:
        qid = j.get("uid", j.get("question_id"))
        for g, game in enumerate(j["games"][:2]):
            label = game.get("score")
            if label not in LABELS:
                continue
            a_wins = label.startswith("A>")
            b_wins = label.startswith("B>")
            if g == 1:  # model was shown as A
                a_wins, b_wins = b_wins, a_wins
            winner = "model_a" if a_wins else "model_b" if b_wins else "tie"
            n = weight if ">>" in label else 1
            battles += [{"question_id": qid, "model_a": baseline, "model_b": j["model"], "winner": winner,
                         "game": g}] * n
    return battles


def bradley_terry(battles: list[dict], baseline: str, style: np.ndarray | None = None,
                  scale: float = 400, base: float = 10, init: float = 1000) -> dict[str, float]:
    """MLE ratings: each battle contributes (A beats B) with weight 2 per win, 1 per side for a tie."""
    from sklearn.linear_model import LogisticRegression

    models = sorted({b["model_a"] for b in battles} | {b["model_b"] for b in battles})
    idx = {m: i for i, m in enumerate(models)}
    rows, ys, ws = [], [], []
    for k, b in enumerate(battles):
        x = np.zeros(len(models) + (0 if style is None else style.shape[1]))
        x[idx[b["model_a"]]], x[idx[b["model_b"]]] = math.log(base), -math.log(base)
        if style is not None:
            x[len(models):] = style[k]
        for y, w in ((1.0, {"model_a": 2, "model_b": 0, "tie": 1}[b["winner"]]),
                     (0.0, {"model_a": 0, "model_b": 2, "tie": 1}[b["winner"]])):
            if w:
                rows.append(x)
                ys.append(y)
                ws.append(w)
    if len(set(ys)) < 2:  # one side won every battle: the MLE is infinite; clamp
        eps = 1e-3
        rows, ys, ws = rows + rows[:1] + rows[:1], ys + [1.0, 0.0], ws + [eps, eps]
    lr = LogisticRegression(fit_intercept=False, penalty=None, tol=1e-8, max_iter=10000)
    lr.fit(np.array(rows), np.array(ys), sample_weight=np.array(ws, dtype=float))
    ratings = scale * lr.coef_[0][: len(models)] + init
    if baseline in idx:
        ratings += init - ratings[idx[baseline]]
    return dict(zip(models, map(float, ratings)))


def win_rate_vs(ratings: dict, model: str, baseline: str, scale: float = 400, base: float = 10) -> float:
    return 1 / (1 + base ** ((ratings[baseline] - ratings[model]) / scale))


def style_features(battles: list[dict], answers: dict, baseline_answers: dict) -> np.ndarray:
    """Normalised (A - B) / (A + B) differences of length and markdown counts, standardised."""
    def feats(text):
        c = markdown_counts(text)
        return [len(text), sum(c["header_count"].values()), sum(c["list_count"].values()),
                sum(c["bold_count"].values())]

    out = []
    for b in battles:
        fa = feats(baseline_answers[b["question_id"]])
        fb = feats(answers[b["model_b"]][b["question_id"]])
        out.append([(x - y) / (x + y + 1) for x, y in zip(fa, fb)])
    arr = np.array(out, dtype=float)
    std = arr.std(axis=0)
    return (arr - arr.mean(axis=0)) / np.where(std > 0, std, 1)


def score(judgments: list[dict], baseline: str, rounds: int = 100, seed: int = 0, weight: int = 3,
          style: np.ndarray | None = None) -> dict:
    """Per model: score (win rate vs baseline, %), 95% interval from bootstrap, rating."""
    battles = battles_from_judgments(judgments, baseline, weight)
    if not battles:  # no verdict could be parsed: say so instead of inventing a score
        return {m: {"score": None, "ci_lower": None, "ci_upper": None, "rating": None, "battles": 0,
                    "bootstrap_rounds": rounds, "note": "no judgment had a [[label]] verdict"}
                for m in sorted({j["model"] for j in judgments})}
    ratings = bradley_terry(battles, baseline, style)
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(rounds):
        pick = rng.integers(0, len(battles), len(battles))
        sample = [battles[i] for i in pick]
        boot.append(bradley_terry(sample, baseline, None if style is None else style[pick]))
    out = {}
    for m in ratings:
        if m == baseline:
            continue
        wr = [win_rate_vs(r, m, baseline) * 100 for r in boot if m in r]
        out[m] = {"score": win_rate_vs(ratings, m, baseline) * 100,
                  "ci_lower": float(np.percentile(wr, 2.5)), "ci_upper": float(np.percentile(wr, 97.5)),
                  "rating": ratings[m], "battles": sum(1 for b in battles if b["model_b"] == m),
                  "bootstrap_rounds": rounds}
    return out


def score_files(paths: list[Path], baseline: str | None = None, rounds: int = 100) -> dict:
    """`pride eval score arena-hard FILE...`: judgment files (one per model) -> scores."""
    judgments = [j for p in paths for j in read_jsonl(Path(p))]
    baseline = baseline or next((j["baseline"] for j in judgments if "baseline" in j), "gpt-4-0314")
    return score(judgments, baseline, rounds)
