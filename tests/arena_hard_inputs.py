"""Deterministic Arena-Hard inputs shared by the tests and by `arena_hard_reference.py`.

Two models judged against a baseline on 80 questions, with strong and weak verdicts,
ties, unparsed games, v2's reversed label forms, and answers whose markdown (headers,
lists, bold, some inside code blocks) and lengths vary, so style control has something
to control. Judgment texts cover the label-parsing rules of both versions.
"""

from __future__ import annotations

import random

BASELINE = "gpt-4-0314"
MODELS = ("model-x", "org/model-y")  # the second carries a path, as official files may
N_QUESTIONS = 80
LABELS_V01 = ["A>>B", "A>B", "A=B", "B>A", "B>>A"]
LABELS_V2 = LABELS_V01 + ["B<A", "A<B", "B=A"]

JUDGMENT_TEXTS = [
    "My final verdict is tie: [[A=B]]",
    "Assistant B is better: [[B>A]]. Final: [[B>A]]",
    "First [[A>B]] but on reflection [[B>>A]]",
    "no label at all",
    "single brackets: [b>a] in lower case",
    "[[a>>b]] lower case double",
    "[B>A] then [[A=B]]",
    "[[A>B]]\n[[A>B]]",
    "[[]] and [A]",
]


def answer_text(rng: random.Random, verbose: float) -> str:
    parts = []
    for _ in range(rng.randint(1, 4) + int(verbose * 3)):
        kind = rng.random()
        if kind < 0.2 + 0.2 * verbose:
            parts.append(f"{'#' * rng.randint(1, 4)} Section {rng.randint(1, 9)}")
        elif kind < 0.45:
            parts.append("\n".join(f"{rng.choice(['-', '*', '+', '1.', '2.'])} item **{i}** here" for i in
                                   range(rng.randint(1, 4))))
        elif kind < 0.6:
            parts.append("```python\n# not a header\n- not a list\nprint('**x**')\n```")
        else:
            words = rng.randint(5, 40 + int(80 * verbose))
            parts.append(" ".join(rng.choice(["alpha", "beta", "__gamma__", "delta", "é", "naïve", "<|endoftext|>"])
                                  for _ in range(words)))
    return "\n\n".join(parts)


def build(seed: int = 0):
    """(questions, answers {model: {uid: text}}, judgments rows in the v2 layout), one category."""
    return _build(random.Random(seed), {"arena-hard-v0.1": (BASELINE, N_QUESTIONS, "q")})


# arena-hard-v2.0's two categories, each with its own baseline (utils/judge_utils.py)
V2_CATEGORIES = {"hard_prompt": ("o3-mini-2025-01-31", 50, "h"), "creative_writing": ("gemini-2.0-flash-001", 30, "c")}


def build_v2_categories(seed: int = 1):
    """The same, on a v2.0-like set: hard_prompt and creative_writing questions, each judged
    against its category's baseline, the models' biases differing by category."""
    return _build(random.Random(seed), V2_CATEGORIES)


def _build(rng: random.Random, categories: dict):
    questions, answers, judgments = [], {}, []
    for category, (baseline, n, prefix) in categories.items():
        uids = [f"{prefix}{i:03d}" for i in range(n)]
        questions += [{"uid": u, "category": category, "cluster": "c", "prompt": f"Question {u}?"} for u in uids]
        answers.setdefault(baseline, {}).update({u: answer_text(rng, 0.5) for u in uids})
        answers.setdefault(MODELS[0], {}).update({u: answer_text(rng, 0.9) for u in uids})
        answers.setdefault(MODELS[1], {}).update({u: answer_text(rng, 0.1) for u in uids})
        shift = 0.1 * (len(judgments) > 0)  # a later category favours the second model a little more
        judgments += _judgments(rng, uids, category, baseline, (0.65 - shift, 0.35 + shift))
    return questions, answers, judgments


def _judgments(rng: random.Random, uids: list[str], category: str, baseline: str, biases: tuple) -> list[dict]:
    judgments = []
    for m, bias in zip(MODELS, biases):
        for u in uids:
            games = []
            for g in range(2):
                r = rng.random()
                if r < 0.04:
                    games.append({"score": None})
                    continue
                model_better = rng.random() < bias
                strength = rng.random()
                if strength < 0.2:
                    label = "A=B"
                elif (g == 0) == model_better:  # the model is B in game 1
                    label = "B>>A" if strength > 0.75 else rng.choice(["B>A", "A<B"]) if g else "B>A"
                else:
                    label = "A>>B" if strength > 0.75 else rng.choice(["A>B", "B<A"]) if g else "A>B"
                games.append({"score": label})
            judgments.append({"uid": u, "category": category, "judge": "gpt-4-1106-preview", "model": m,
                              "baseline": baseline, "games": games})
    return judgments


def v01_judgments(judgments):
    """The same verdicts as v0.1 sees them: its five labels only (v2's reversed forms are unparsed there)."""
    out = []
    for j in judgments:
        games = [{"score": g["score"] if g["score"] in LABELS_V01 else None} for g in j["games"]]
        out.append({"question_id": j["uid"], "model": j["model"], "judge": j["judge"], "games": games})
    return out
