"""The demo's toy world: two-number addition with a programmatic judge.

Small enough for a tiny model on a CPU to learn in minutes, hard enough that it starts
weak, and judged exactly, so improvement from stage to stage is measurable.
"""

from __future__ import annotations

import random

SYSTEM = "Answer with the number only."


def make_prompt(rng: random.Random, low: int = 0, high: int = 49) -> tuple[str, int]:
    a, b = rng.randint(low, high), rng.randint(low, high)
    return f"What is {a}+{b}?", a + b


def make_conversations(n: int, seed: int) -> list[dict]:
    """Rows in the `messages` layout."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        question, answer = make_prompt(rng)
        rows.append({"messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": question},
            {"role": "assistant", "content": str(answer)},
        ]})
    return rows


def judge(prompt: str, response: str) -> float:
    """1 for the exact sum, partial credit for a number close to it, 0 otherwise."""
    try:
        left = prompt.split("What is ", 1)[1].rstrip("?")
        a, b = (int(x) for x in left.split("+"))
        got = int(response.strip())
    except (IndexError, ValueError):
        return 0.0
    err = abs(got - (a + b))
    return 1.0 if err == 0 else max(0.0, 0.5 - 0.05 * err)
