"""Held-out evaluation of a model on the toy task: sampled answers scored by the rule judge."""

from __future__ import annotations

import numpy as np

from pride.config import ModelSettings
from pride.demo.task import judge
from pride.models import load_model_and_tokenizer
from pride.engine import Engine


def held_out_answers(model_ref: str, prompts: list[str], samples: int = 4, temperature: float = 0.7,
                     seed: int = 0, max_new_tokens: int = 40, model_seed: int = 0) -> list[list[str]]:
    """`samples` sampled answers for each prompt (each answer seeded, so repeatable)."""
    model, tok, fmt = load_model_and_tokenizer(ModelSettings(path=model_ref), seed=model_seed)
    engine = Engine(model, tok, max_batch_size=32 * samples, offline=True)
    out = []
    for start in range(0, len(prompts), 32):
        chunk = prompts[start:start + 32]
        seeds = [[(seed * 100_003 + start + i) * 1_000 + j for j in range(samples)] for i in range(len(chunk))]
        answers = engine.complete([fmt.encode_prompt([{"role": "user", "content": p}]) for p in chunk], samples,
                                  seeds, temperature=temperature, max_tokens=max_new_tokens)
        out += [[a.strip() for a in ans] for ans in answers]
    return out


def rule_scores(prompts: list[str], answers: list[list[str]]) -> list[float]:
    """Per prompt: the rule judge's mean score of its answers (what the demo is really after)."""
    return [float(np.mean([judge(p, a) for a in ans])) for p, ans in zip(prompts, answers)]


def learned_scores(reward_model: str, prompts: list[str], answers: list[list[str]]) -> list[float]:
    """Per prompt: a reward model's mean score of its answers, scored as online rounds score them."""
    from pride.config import JudgeSettings
    from pride.online.judges import make_judge

    judge_ = make_judge(JudgeSettings(type="reward_model", path=reward_model, batch_size=64), "cpu")
    out = []
    for start in range(0, len(prompts), 64):
        chunk = [[{"role": "user", "content": p}] for p in prompts[start:start + 64]]
        out += [float(np.mean(j.scores)) for j in judge_.judge(chunk, answers[start:start + 64])]
    return out


def per_prompt_scores(model_ref: str, prompts: list[str], samples: int = 4, temperature: float = 0.7,
                      seed: int = 0, max_new_tokens: int = 40, model_seed: int = 0) -> list[float]:
    """Mean rule-judge score of `samples` sampled answers for each prompt."""
    answers = held_out_answers(model_ref, prompts, samples, temperature, seed, max_new_tokens, model_seed)
    return rule_scores(prompts, answers)


def bootstrap_ci(values: list[float], rounds: int = 1000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    arr = np.asarray(values)
    means = [arr[rng.integers(0, len(arr), len(arr))].mean() for _ in range(rounds)]
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def win_rate(values: list[float], reference: list[float], seed: int = 0) -> dict:
    """Per prompt: 1 if better than the reference, 1/2 if tied, 0 if worse; mean with a bootstrap CI."""
    wins = [1.0 if a > b + 1e-9 else 0.5 if abs(a - b) <= 1e-9 else 0.0 for a, b in zip(values, reference)]
    lo, hi = bootstrap_ci(wins, seed=seed)
    return {"value": float(np.mean(wins)), "ci": [lo, hi]}


__all__ = ["held_out_answers", "rule_scores", "learned_scores", "per_prompt_scores", "bootstrap_ci", "win_rate"]
