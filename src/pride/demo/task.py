"""The demo's toy world: "Write the word W n times." with a programmatic judge.

Answers are numbered lines ("1. abc", "2. abc", ...). Small enough for a tiny model on a
CPU to learn in minutes (copy a word, number the lines, stop at n),
and judged exactly, with partial credit, so improvement from stage to stage is
measurable. The supervised demonstrations are imperfect on purpose (wrong counts,
misspelled copies), as real SFT data is: SFT learns the task and the noise, preference
training has to remove the noise.
"""

from __future__ import annotations

import random
import re

LETTERS = "abcdefghijklmnopqrstuvwxyz"
PROMPT = re.compile(r"Write the word (\w+) (\d+) times\.")
ITEM = re.compile(r"^\s*\d+\.\s*(\S*)", re.M)


def make_prompt(rng: random.Random, max_n: int = 5) -> tuple[str, str, int]:
    word = "".join(rng.choice(LETTERS) for _ in range(3))
    n = rng.randint(1, max_n)
    return f"Write the word {word} {n} times.", word, n


def correct_answer(word: str, n: int) -> str:
    return render([word] * n)


def render(copies: list[str]) -> str:
    return "\n".join(f"{i}. {w}" for i, w in enumerate(copies, start=1))


def corrupt(word: str, n: int, rng: random.Random, p_short: float = 0.6, p_count: float = 0.2,
            p_spell: float = 0.3, force: bool = False) -> str:
    """A flawed answer, as a careless annotator writes it: for n >= 3 usually one copy too few
    (a systematic error, so SFT learns it as the most likely answer), otherwise sometimes a
    count off by one, and sometimes one misspelled copy. Always flawed when `force`."""
    while True:
        count = n
        if n >= 3 and rng.random() < p_short:
            count = n - 1
        elif rng.random() < p_count:
            count = max(1, n + rng.choice([-1, 1]))
        copies = [word] * count
        if rng.random() < p_spell:
            k = rng.randrange(count)
            pos = rng.randrange(len(word))
            copies[k] = word[:pos] + rng.choice(LETTERS.replace(word[pos], "")) + word[pos + 1:]
        answer = render(copies)
        if not force or answer != correct_answer(word, n):
            return answer


def judge(prompt: str, response: str) -> float:
    """1 for the exact answer. Otherwise half for the number of items (partial when off) and
    half for the share of items spelled right; 0 when there is no numbered item."""
    m = PROMPT.search(prompt)
    if not m:
        return 0.0
    word, n = m.group(1), int(m.group(2))
    tokens = ITEM.findall(response)
    if not tokens:
        return 0.0
    count = 1.0 if len(tokens) == n else max(0.0, 1 - abs(len(tokens) - n) / n) / 2
    spelled = sum(t == word for t in tokens) / len(tokens)
    return 0.5 * count + 0.5 * spelled


def sft_rows(n: int, seed: int) -> list[dict]:
    """Conversations whose answers are flawed the way `corrupt` describes."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt, word, k = make_prompt(rng)
        rows.append({"messages": [{"role": "user", "content": prompt},
                                  {"role": "assistant", "content": corrupt(word, k, rng)}]})
    return rows


def preference_rows(n: int, seed: int) -> list[dict]:
    """Offline pairs (UltraFeedback-binarized layout): the exact answer over a flawed one.
    Like real offline data they come from elsewhere and cover only part of what the policy
    will be asked: never more than four copies. Online rounds, which sample the policy on
    the full range, are what can fix the rest."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt, word, k = make_prompt(rng, max_n=4)
        chosen, rejected = correct_answer(word, k), corrupt(word, k, rng, force=True)
        rows.append({"prompt": prompt, "chosen": [{"role": "user", "content": prompt},
                                                  {"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "user", "content": prompt}, {"role": "assistant", "content": rejected}]})
    return rows


def prompt_rows(n: int, seed: int) -> list[dict]:
    """Prompts only (for online rounds and held-out evaluation)."""
    rng = random.Random(seed)
    return [{"prompt": make_prompt(rng)[0]} for _ in range(n)]


def make_conversations(n: int, seed: int) -> list[dict]:
    """Back-compat name used by tests: imperfect SFT conversations."""
    return sft_rows(n, seed)
