"""MT-Bench in FastChat's formats: two-turn answers, single-answer grading, [[rating]] scores.

* Questions `{question_id, category, turns: [q1, q2]}`; answers
  `{question_id, answer_id, model_id, choices: [{index: 0, turns: [a1, a2]}], tstamp}`.
* Sampling temperature per category as FastChat (writing/roleplay 0.7, stem/humanities
  0.1, extraction/math/coding/reasoning 0.0, greedy below 1e-4).
* Judging with the prompts of `judge_prompts.jsonl` (`single-v1`, `single-math-v1` and
  their `-multi-turn` forms), with the GPT-4 reference answer for math, reasoning and
  coding; the rating is parsed from `[[x]]` (or `[x]`), -1 when absent. Judgments are
  written as `{question_id, model, judge: [judge_model, prompt_name], user_prompt,
  judgment, score, turn, tstamp}` (FastChat's model_judgment/*_single.jsonl).
* Scores: mean of turn 1, of turn 2, and of both, over judgments with a rating.
"""

from __future__ import annotations

import ast
import re
import statistics
import time
import uuid
from pathlib import Path

from pride.errors import PrideError
from pride.eval.files import read_jsonl

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


def temperature_for(category: str) -> float:
    return TEMPERATURE.get(category, 0.7)


def generate_answers(client, questions: list[dict], model_id: str, max_tokens: int = 1024) -> list[dict]:
    """Each turn is asked in the conversation so far, as FastChat's gen_model_answer does."""
    out = []
    for q in questions:
        temp = temperature_for(q["category"])
        messages, turns = [], []
        for turn in q["turns"]:
            messages.append({"role": "user", "content": turn})
            text = client.text(messages, temperature=temp if temp >= 1e-4 else 0.0, max_tokens=max_tokens).strip()
            messages.append({"role": "assistant", "content": text})
            turns.append(text)
        out.append({"question_id": q["question_id"], "answer_id": uuid.uuid4().hex[:22], "model_id": model_id,
                    "choices": [{"index": 0, "turns": turns}], "tstamp": time.time()})
    return out


def parse_rating(judgment: str) -> float:
    match = RATING.search(judgment) or RATING_BACKUP.search(judgment)
    if not match:
        return -1
    try:
        return float(ast.literal_eval(match.groups()[0]))
    except (ValueError, SyntaxError):
        return -1


def judge(client, questions: list[dict], answers: dict, references: dict, prompts: dict, model_id: str,
          judge_model: str) -> list[dict]:
    """Single-answer grading of both turns. answers/references: question_id -> [turn texts]."""
    out = []
    for q in questions:
        ans = answers[q["question_id"]]
        needs_ref = q["category"] in NEED_REF
        if needs_ref and q["question_id"] not in references:
            raise PrideError(f"MT-Bench question {q['question_id']} ({q['category']}) needs a reference answer")
        ref = references.get(q["question_id"], [])
        for turn in (1, 2):
            name = ("single-math-v1" if needs_ref else "single-v1") + ("-multi-turn" if turn == 2 else "")
            p = prompts[name]
            kwargs = {"question": q["turns"][0], "answer": ans[0]} if turn == 1 else {
                "question_1": q["turns"][0], "question_2": q["turns"][1], "answer_1": ans[0], "answer_2": ans[1]}
            if needs_ref:
                if turn == 1:
                    kwargs["ref_answer_1"] = ref[0]
                else:
                    kwargs.update(ref_answer_1=ref[0], ref_answer_2=ref[1])
            user_prompt = p["prompt_template"].format(**kwargs)
            judgment = client.text([{"role": "system", "content": p["system_prompt"]},
                                    {"role": "user", "content": user_prompt}], temperature=0, max_tokens=2048)
            out.append({"question_id": q["question_id"], "model": model_id, "judge": [judge_model, name],
                        "user_prompt": user_prompt, "judgment": judgment, "score": parse_rating(judgment),
                        "turn": turn, "tstamp": time.time()})
    return out


def score(judgments: list[dict]) -> dict:
    """FastChat show_result (single): failed ratings (-1) are left out."""
    rated = [j for j in judgments if j.get("score", -1) != -1]
    by_turn = {t: [j["score"] for j in rated if j["turn"] == t] for t in (1, 2)}
    return {"turn_1": statistics.fmean(by_turn[1]) if by_turn[1] else None,
            "turn_2": statistics.fmean(by_turn[2]) if by_turn[2] else None,
            "average": statistics.fmean(j["score"] for j in rated) if rated else None,
            "n_judgments": len(judgments), "n_failed": len(judgments) - len(rated)}


def score_files(paths: list[Path]) -> dict:
    """`pride eval score mt-bench FILE...`: per model, from FastChat single judgment files."""
    judgments = [j for p in paths for j in read_jsonl(Path(p))]
    models = sorted({j["model"] for j in judgments})
    return {m: score([j for j in judgments if j["model"] == m]) for m in models}
