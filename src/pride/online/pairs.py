"""From judged samples to training pairs: best vs worst (LIONs) or SPPO win probabilities."""

from __future__ import annotations

import math


def sigmoid(x: float) -> float:
    """1 / (1 + e^-x) without overflow for any x (judges can give scores far beyond e^709)."""
    if x >= 0:
        return 1 / (1 + math.exp(-x))
    z = math.exp(x)
    return z / (1 + z)


def win_probabilities(matrix: list[list[float]]) -> tuple[list[float], list[list[float]]]:
    """SPPO: s_i = mean_j (M_ij - M_ji); P(i beats j) = sigmoid(s_i - s_j) (self included: 1/2)."""
    k = len(matrix)
    s = [sum(matrix[i][j] - matrix[j][i] for j in range(k)) / k for i in range(k)]
    p = [[sigmoid(s[i] - s[j]) for j in range(k)] for i in range(k)]
    return s, p


def scalar_win_probabilities(scores: list[float]) -> tuple[list[float], list[list[float]]]:
    """For judges without a matrix the score is s_i itself."""
    p = [[sigmoid(a - b) for b in scores] for a in scores]
    return list(scores), p


def make_pair(row: dict, judged: dict, mode: str, keep_ties: bool = False) -> tuple[dict | None, str]:
    """One training pair for a prompt, or (None, reason) when it has to be dropped. `keep_ties`: as
    SPPO's compute_prob.py, a tie or identical answers still give a pair (argmax and argmin both
    take the first, so an answer may face itself)."""
    responses = row["responses"]
    if len(set(responses)) == 1 and not keep_ties:
        return None, "identical"
    if mode == "sppo":
        s, p = (win_probabilities(judged["matrix"]) if judged.get("matrix") else
                scalar_win_probabilities(judged["scores"]))
    else:
        s, p = judged["scores"], None
    best = max(range(len(s)), key=lambda i: s[i])
    worst = min(range(len(s)), key=lambda i: s[i])
    if (s[best] == s[worst] or responses[best] == responses[worst]) and not keep_ties:
        return None, "tie"
    pair = {"prompt_id": row["prompt_id"], "prompt": row["prompt"], "chosen": responses[best],
            "rejected": responses[worst], "chosen_score": judged["scores"][best],
            "rejected_score": judged["scores"][worst]}
    if p is not None:
        k = len(s)
        pair["chosen_win_prob"] = sum(p[best]) / k
        pair["rejected_win_prob"] = sum(p[worst]) / k
        pair["chosen_probs"] = p[best][worst]  # SPPO's compute_prob.py: for sppo_single
    return pair, "ok"
