"""MT-Bench in FastChat's formats and rules (fastchat/llm_judge: common.py, gen_judgment.py,
show_result.py).

* Questions `{question_id, category, turns: [q1, q2]}`; answers
  `{question_id, answer_id, model_id, choices: [{index: 0, turns: [a1, a2]}], tstamp}`.
* Generation: each turn asked in the conversation so far; temperature per category as
  FastChat (writing/roleplay 0.7, stem/humanities 0.1, extraction/math/coding/reasoning 0,
  greedy below 1e-4) unless `generation.mt_bench.temperature` is set; a seed per run.
* Reference answers (math, reasoning, coding) from `reference_answer/<judge model>.jsonl`,
  as FastChat looks them up by the judge's name; `gpt-4.jsonl` when there is none.
* `single`: the `single-v1` / `single-math-v1` prompts (and `-multi-turn`), the rating from
  `[[x]]` (or `[x]`) through `ast.literal_eval`; -1 when absent. FastChat's literal_eval
  raises on a leading zero (`[[08]]`) and stops its run; pride records -1 there instead
  (a failed rating, left out of the means and counted).
* `pairwise-baseline` / `pairwise-all`: `pair-v2` / `pair-math-v1` prompts, both orders (g1:
  model_1 as A, g2: model_2 as A), `[[A]]`/`[[B]]`/`[[C]]`; show_result drops errors, counts a
  tie or disagreeing games as a tie, and reports win_rate, loss_rate, win_rate_adjusted.
"""

from __future__ import annotations

import ast
import re
import statistics
import time
import uuid
from pathlib import Path

from pride.chat_client import map_concurrently
from pride.errors import PrideError
from pride.eval.files import check_key, read_jsonl, read_objects

TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0, "reasoning": 0.0,
               "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0}
NEED_REF = ("math", "reasoning", "coding", "arena-hard-200")
RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def load_questions(path: Path) -> list[dict]:
    qs = read_jsonl(path)
    for n, q in enumerate(qs, start=1):
        for key in ("question_id", "category", "turns"):
            if key not in q:
                raise PrideError(f"{path} line {n}: field '{key}': missing")
    return qs


def load_answers(path: Path) -> dict:
    """question_id -> [turn texts] from a FastChat answer (or reference answer) file."""
    out = {}
    for n, a in enumerate(read_jsonl(path), start=1):
        try:
            out[a["question_id"]] = a["choices"][0]["turns"]
        except (KeyError, IndexError, TypeError):
            raise PrideError(f"{path} line {n}: expected FastChat's answer layout (question_id, choices[0].turns)")
    return out


def reference_file(root: Path, judge_model: str) -> Path:
    for name in (judge_model, "gpt-4"):
        for p in (root / "reference_answer" / f"{name}.jsonl", root / f"reference_answer_{name}.jsonl"):
            if p.exists():
                return p
    raise PrideError(f"MT-Bench reference answers not found: {root / 'reference_answer' / f'{judge_model}.jsonl'} "
                     "(or gpt-4.jsonl; FastChat's llm_judge/data/mt_bench/reference_answer)")


def temperature_for(category: str) -> float:
    return TEMPERATURE.get(category, 0.7)


def generate_answers(client, questions: list[dict], model_id: str, max_tokens: int = 1024,
                     temperature: float | None = None, top_p: float = 1.0, seed: int | None = None,
                     concurrency: int = 1) -> list[dict]:
    """Each turn is asked in the conversation so far, as FastChat's gen_model_answer does."""
    def answer(q: dict) -> dict:
        temp = temperature_for(q["category"]) if temperature is None else temperature
        messages, turns = [], []
        for turn in q["turns"]:
            messages.append({"role": "user", "content": turn})
            text = client.text(messages, temperature=temp if temp >= 1e-4 else 0.0, top_p=top_p,
                               max_tokens=max_tokens, seed=seed).strip()
            messages.append({"role": "assistant", "content": text})
            turns.append(text)
        return {"question_id": q["question_id"], "answer_id": uuid.uuid4().hex[:22], "model_id": model_id,
                "choices": [{"index": 0, "turns": turns}], "tstamp": time.time()}

    return map_concurrently(answer, questions, concurrency, "mt_bench answers")


def parse_rating(judgment: str) -> float:
    match = RATING.search(judgment) or RATING_BACKUP.search(judgment)
    if not match:
        return -1
    try:
        return ast.literal_eval(match.groups()[0])
    except (ValueError, SyntaxError):  # FastChat stops here ([[08]]); pride records a failed rating
        return -1


def parse_winner(judgment: str) -> str:
    """FastChat's [[A]] output format: the first of [[A]], [[B]], [[C]] (tie) that appears, else error."""
    for label, winner in (("[[A]]", "A"), ("[[B]]", "B"), ("[[C]]", "tie")):
        if label in judgment:
            return winner
    return "error"


def _prompt(prompts: dict, name: str) -> dict:
    if name not in prompts:
        raise PrideError(f"judge_prompts.jsonl has no prompt {name!r} (FastChat's llm_judge/data/judge_prompts.jsonl)")
    return prompts[name]


def _ref_kwargs(q: dict, references: dict, turn: int) -> dict:
    if q["category"] not in NEED_REF:
        return {}
    if q["question_id"] not in references:
        raise PrideError(f"MT-Bench question {q['question_id']} ({q['category']}) needs a reference answer")
    ref = references[q["question_id"]]
    return {"ref_answer_1": ref[0]} if turn == 1 else {"ref_answer_1": ref[0], "ref_answer_2": ref[1]}


def judge(client, questions: list[dict], answers: dict, references: dict, prompts: dict, model_id: str,
          judge_model: str, concurrency: int = 1) -> list[dict]:
    """Single-answer grading of both turns. answers/references: question_id -> [turn texts]."""
    def one(item):
        q, turn = item
        ans = answers[q["question_id"]]
        name = ("single-math-v1" if q["category"] in NEED_REF else "single-v1") + ("-multi-turn" if turn == 2 else "")
        p = _prompt(prompts, name)
        kwargs = {"question": q["turns"][0], "answer": ans[0]} if turn == 1 else {
            "question_1": q["turns"][0], "question_2": q["turns"][1], "answer_1": ans[0], "answer_2": ans[1]}
        user_prompt = p["prompt_template"].format(**kwargs, **_ref_kwargs(q, references, turn))
        judgment = client.text([{"role": "system", "content": p["system_prompt"]},
                                {"role": "user", "content": user_prompt}], temperature=0, max_tokens=2048)
        return {"question_id": q["question_id"], "model": model_id, "judge": [judge_model, name],
                "user_prompt": user_prompt, "judgment": judgment, "score": parse_rating(judgment),
                "turn": turn, "tstamp": time.time()}

    items = [(q, t) for q in questions for t in (1, 2) if t == 1 or len(q["turns"]) == 2]
    return map_concurrently(one, items, concurrency, "mt_bench judging")


def judge_pairs(client, questions: list[dict], answers: dict, pairs: list[tuple[str, str]], references: dict,
                prompts: dict, judge_model: str, concurrency: int = 1) -> list[dict]:
    """FastChat's play_a_match_pair for each (model_1, model_2) and question and turn; answers:
    model -> question_id -> [turn texts]."""
    def run(q, a, b, turn, p, refs):
        if turn == 1:
            user_prompt = p["prompt_template"].format(question=q["turns"][0], answer_a=a[0], answer_b=b[0], **refs)
        else:
            user_prompt = p["prompt_template"].format(question_1=q["turns"][0], question_2=q["turns"][1],
                                                      answer_a_1=a[0], answer_b_1=b[0], answer_a_2=a[1],
                                                      answer_b_2=b[1], **refs)
        judgment = client.text([{"role": "system", "content": p["system_prompt"]},
                                {"role": "user", "content": user_prompt}], temperature=0, max_tokens=2048)
        return parse_winner(judgment), user_prompt, judgment

    def one(item):
        q, m1, m2, turn = item
        name = ("pair-math-v1" if q["category"] in NEED_REF else "pair-v2") + ("-multi-turn" if turn == 2 else "")
        p, refs = _prompt(prompts, name), _ref_kwargs(q, references, turn)
        a1, a2 = answers[m1][q["question_id"]], answers[m2][q["question_id"]]
        g1, g1_prompt, g1_judgment = run(q, a1, a2, turn, p, refs)
        g2, g2_prompt, g2_judgment = run(q, a2, a1, turn, p, refs)
        return {"question_id": q["question_id"], "model_1": m1, "model_2": m2,
                "g1_winner": {"A": "model_1", "B": "model_2"}.get(g1, g1),
                "g2_winner": {"A": "model_2", "B": "model_1"}.get(g2, g2), "judge": [judge_model, name],
                "g1_user_prompt": g1_prompt, "g1_judgment": g1_judgment, "g2_user_prompt": g2_prompt,
                "g2_judgment": g2_judgment, "turn": turn, "tstamp": time.time()}

    items = [(q, m1, m2, t) for t in (1, 2) for q in questions for m1, m2 in pairs
             if t == 1 or len(q["turns"]) == 2]
    return map_concurrently(one, items, concurrency, "mt_bench judging")


def score(judgments: list[dict]) -> dict:
    """FastChat show_result (single): failed ratings (-1) are left out."""
    rated = [j for j in judgments if j.get("score", -1) != -1]
    by_turn = {t: [j["score"] for j in rated if j["turn"] == t] for t in (1, 2)}
    return {"turn_1": statistics.fmean(by_turn[1]) if by_turn[1] else None,
            "turn_2": statistics.fmean(by_turn[2]) if by_turn[2] else None,
            "average": statistics.fmean(j["score"] for j in rated) if rated else None,
            "n_judgments": len(judgments), "n_failed": len(judgments) - len(rated)}


def score_pairwise(judgments: list[dict], baseline: str | None = None) -> dict:
    """FastChat show_result (pairwise-baseline with `baseline`, pairwise-all without): per model."""
    counts: dict = {}
    for j in judgments:
        if j["g1_winner"] == "error" or j["g2_winner"] == "error":
            continue
        if baseline is not None and baseline not in (j["model_1"], j["model_2"]):
            continue
        if j["g1_winner"] == "tie" or j["g1_winner"] != j["g2_winner"]:
            results = [(j["model_1"], "tie"), (j["model_2"], "tie")]
        else:
            winner, loser = ((j["model_1"], j["model_2"]) if j["g1_winner"] == "model_1"
                             else (j["model_2"], j["model_1"]))
            results = [(winner, "win"), (loser, "loss")]
        for model, kind in results:
            c = counts.setdefault(model, {"win": 0, "loss": 0, "tie": 0})
            c[kind] += 1
    out = {}
    for model, c in counts.items():
        if model == baseline:
            continue
        n = c["win"] + c["loss"] + c["tie"]
        out[model] = {**c, "win_rate": c["win"] / n, "loss_rate": c["loss"] / n,
                      "win_rate_adjusted": (c["win"] + 0.5 * c["tie"]) / n}
    return out


def _check_single(where: str, j: dict) -> tuple:
    for key in ("question_id", "model", "turn", "score"):
        if key not in j:
            raise PrideError(f"{where}: field '{key}': missing (FastChat single judgment)")
    check_key(where, j, "question_id")
    check_key(where, j, "model", (str,))
    if j["turn"] not in (1, 2) or isinstance(j["turn"], bool):
        raise PrideError(f"{where}: field 'turn': expected 1 or 2, got {j['turn']!r}")
    s = j["score"]
    if isinstance(s, bool) or not isinstance(s, (int, float)) or s != s or (s != -1 and not 1 <= s <= 10):
        raise PrideError(f"{where}: field 'score': expected a rating from 1 to 10 (or -1, failed), got {s!r}")
    return j["model"], j["question_id"], j["turn"]


def _check_pair(where: str, j: dict) -> tuple:
    for key in ("question_id", "model_1", "model_2", "g1_winner", "g2_winner"):
        if key not in j:
            raise PrideError(f"{where}: field '{key}': missing (FastChat pairwise judgment)")
    check_key(where, j, "question_id")
    check_key(where, j, "model_1", (str,))
    check_key(where, j, "model_2", (str,))
    for key in ("g1_winner", "g2_winner"):
        if j[key] not in ("model_1", "model_2", "tie", "error"):
            raise PrideError(f"{where}: field '{key}': expected model_1, model_2, tie or error, got {j[key]!r}")
    if j["model_1"] == j["model_2"]:
        raise PrideError(f"{where}: {j['model_1']!r} is judged against itself")
    return j["model_1"], j["model_2"], j["question_id"], j.get("turn", 1)


def score_files(paths: list[Path], mode: str = "single", baseline: str | None = "gpt-3.5-turbo") -> dict:
    """`pride eval score mt-bench FILE...`: per model, from FastChat judgment files."""
    rows = read_objects(paths, "judgments")
    check = _check_single if mode == "single" else _check_pair
    seen: dict = {}
    for where, j in rows:
        key = check(where, j)
        if key in seen:  # FastChat would count it twice
            raise PrideError(f"{where}: the same judgment as {seen[key]} ({key}); remove one")
        seen[key] = where
    judgments = [j for _, j in rows]
    if mode == "pairwise-baseline" and not any(baseline in (j["model_1"], j["model_2"]) for j in judgments):
        models = sorted({m for j in judgments for m in (j["model_1"], j["model_2"])})
        raise PrideError(f"{paths[0]}: no judgment against the baseline {baseline!r} (models judged: "
                         f"{', '.join(models)}); name it with --baseline, or use pairwise-all")
    if mode != "single":
        return score_pairwise(judgments, baseline if mode == "pairwise-baseline" else None)
    models = sorted({j["model"] for j in judgments})
    return {m: score([j for j in judgments if j["model"] == m]) for m in models}
