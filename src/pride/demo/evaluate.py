"""Held-out evaluation of a model on the toy task: sampled answers scored by the rule judge."""

from __future__ import annotations

import numpy as np
import torch

from pride.config import ModelSettings, OnlineSettings
from pride.demo.task import judge
from pride.models import load_model_and_tokenizer
from pride.online.samplers import HFSampler


def per_prompt_scores(model_ref: str, prompts: list[str], samples: int = 4, temperature: float = 0.7,
                      seed: int = 0, max_new_tokens: int = 40, model_seed: int = 0) -> list[float]:
    """Mean judge score of `samples` sampled answers for each prompt (seeded, so repeatable)."""
    model, tok, fmt = load_model_and_tokenizer(ModelSettings(path=model_ref), seed=model_seed)
    s = OnlineSettings(samples_per_prompt=samples, temperature=temperature, max_new_tokens=max_new_tokens)
    sampler = HFSampler(model, tok, fmt, s, torch.device("cpu"))
    out = []
    for start in range(0, len(prompts), 32):
        chunk = prompts[start:start + 32]
        answers = sampler.sample([[{"role": "user", "content": p}] for p in chunk], [seed * 100_003 + start] * len(chunk))
        out += [float(np.mean([judge(p, a) for a in ans])) for p, ans in zip(chunk, answers)]
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
