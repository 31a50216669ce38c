"""Held-out evaluation of a model on the toy task: sampled answers scored by the rule judge."""

from __future__ import annotations

import numpy as np

from pride.config import ModelSettings
from pride.demo.task import judge
from pride.models import load_model_and_tokenizer
from pride.engine import Engine


def per_prompt_scores(model_ref: str, prompts: list[str], samples: int = 4, temperature: float = 0.7,
                      seed: int = 0, max_new_tokens: int = 40, model_seed: int = 0) -> list[float]:
    """Mean judge score of `samples` sampled answers for each prompt (each answer seeded, so repeatable)."""
    model, tok, fmt = load_model_and_tokenizer(ModelSettings(path=model_ref), seed=model_seed)
    engine = Engine(model, tok, max_batch_size=32 * samples, offline=True)
    out = []
    for start in range(0, len(prompts), 32):
        chunk = prompts[start:start + 32]
        seeds = [[(seed * 100_003 + start + i) * 1_000 + j for j in range(samples)] for i in range(len(chunk))]
        answers = engine.complete([fmt.encode_prompt([{"role": "user", "content": p}]) for p in chunk], samples,
                                  seeds, temperature=temperature, max_tokens=max_new_tokens)
        out += [float(np.mean([judge(p, a.strip()) for a in ans])) for p, ans in zip(chunk, answers)]
    return out


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


__all__ = ["per_prompt_scores", "bootstrap_ci", "win_rate"]
