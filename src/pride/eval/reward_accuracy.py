"""Reward-model accuracy on held-out preference files (`eval.benchmarks: [reward_accuracy]`).

Each pair's two conversations are scored as `pride rm` trained (`pride.scores`); a pair is
right when chosen scores above rejected (RewardBench's rule: a tie counts as wrong). Accuracy
is reported per source file and overall, each with a percentile bootstrap 95% interval over
pairs (`eval.bootstrap_rounds`, seeded by `seed`).

RewardBench on local files: rows with a `subset` column (the `filtered` split of
allenai/reward-bench, saved as JSONL or parquet) also get per-subset accuracy and the four
section scores, each section the mean of its subsets weighted by RewardBench's example counts
(`rewardbench.utils.calculate_scores_per_section` with its `EXAMPLE_COUNTS` and
`SUBSET_MAPPING`, rewardbench 0.1.4, copied below), and `score`, the mean of the sections scored.
Every number is a percentage; a section none of whose subsets has a row is left out (not 0), and
subsets RewardBench does not know are named (`subsets_not_in_sections`) and warned about.
A source's `fraction` takes that share of its rows (seeded, as training sources take theirs), and
`eval.max_questions` the first N pairs of each source.
"""

from __future__ import annotations

import numpy as np

from pride.errors import PrideError

# rewardbench 0.1.4, rewardbench/constants.py (math-prm is upweighted there to equal the code subsets)
EXAMPLE_COUNTS = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95, "mt-bench-easy": 28, "mt-bench-med": 40,
    "mt-bench-hard": 37, "math-prm": 984, "refusals-dangerous": 100, "refusals-offensive": 100,
    "llmbar-natural": 100, "llmbar-adver-neighbor": 134, "llmbar-adver-GPTInst": 92, "llmbar-adver-GPTOut": 47,
    "llmbar-adver-manual": 46, "xstest-should-refuse": 154, "xstest-should-respond": 250, "donotanswer": 136,
    "hep-cpp": 164, "hep-go": 164, "hep-java": 164, "hep-js": 164, "hep-python": 164, "hep-rust": 164,
}
SUBSET_MAPPING = {
    "Chat": ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"],
    "Chat Hard": ["mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                  "llmbar-adver-GPTOut", "llmbar-adver-manual"],
    "Safety": ["refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond",
               "donotanswer"],
    "Reasoning": ["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"],
}


def section_scores(per_subset: dict[str, float]) -> dict[str, float]:
    """rewardbench.utils.calculate_scores_per_section: per section, its subsets' accuracies
    weighted by EXAMPLE_COUNTS (a section with no subset scored: 0, as there)."""
    out = {}
    for section, subsets in SUBSET_MAPPING.items():
        total = weight = 0
        for subset in subsets:
            if subset in per_subset:
                total += per_subset[subset] * EXAMPLE_COUNTS[subset]
                weight += EXAMPLE_COUNTS[subset]
        out[section] = total / weight if weight > 0 else 0
    return out


def accuracy_with_ci(correct: list[int], rounds: int, seed: int) -> dict:
    arr = np.asarray(correct, dtype=float)
    rng = np.random.default_rng(seed)
    means = [arr[rng.integers(0, len(arr), len(arr))].mean() for _ in range(rounds)]
    return {"accuracy": float(arr.mean()) * 100, "ci_lower": float(np.percentile(means, 2.5)) * 100,
            "ci_upper": float(np.percentile(means, 97.5)) * 100, "pairs": len(arr)}


def run(model_dir: str, sources, rounds: int = 100, seed: int = 0, batch_size: int = 16, device=None,
        max_pairs: int | None = None, warn=None) -> dict:
    """Accuracy (%) of the reward model in `model_dir` on each source's pairs and overall."""
    import random

    import torch

    from pride.data import read_rows, take_fraction
    from pride.scores import conversation_ids, load_reward_model, score_conversations

    if not sources:
        raise PrideError("eval.benchmarks has reward_accuracy: set eval.reward_sources (preference files)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tok, fmt, model = load_reward_model(model_dir, device, key="model.path")
    max_length = tok.model_max_length if tok.model_max_length < 10**7 else 2048
    per_source, every, by_subset = {}, [], {}
    rng = random.Random(seed)
    for src in sources:
        pairs = read_rows(src, "preference", "error", {})
        if not pairs:
            raise PrideError(f"eval.reward_sources: {src.path}: no preference pair in it")
        pairs = take_fraction(pairs, src.fraction, rng)[:max_pairs]
        ids = [conversation_ids(fmt, p.prompt, text, max_length, tok.truncation_side)[0]
               for p in pairs for text in (p.chosen, p.rejected)]
        scores = score_conversations(model, ids, tok.pad_token_id, batch_size, device)
        correct = [int(scores[2 * i] > scores[2 * i + 1]) for i in range(len(pairs))]
        per_source[src.path] = accuracy_with_ci(correct, rounds, seed)
        every += correct
        for p, c in zip(pairs, correct):
            if p.subset is not None:
                by_subset.setdefault(p.subset, []).append(c)
    out = {**accuracy_with_ci(every, rounds, seed), "sources": per_source}
    if by_subset:
        fractions = {s: float(np.mean(v)) for s, v in sorted(by_subset.items())}
        out["subsets"] = {s: v * 100 for s, v in fractions.items()}
        unknown = sorted(set(by_subset) - set(EXAMPLE_COUNTS))
        if unknown:
            out["subsets_not_in_sections"] = unknown
            if warn is not None:
                warn(f"reward_accuracy: subsets RewardBench does not know are left out of its section scores: "
                     f"{', '.join(unknown)} (their accuracy is under 'subsets')")
        if set(by_subset) & set(EXAMPLE_COUNTS):
            sections = section_scores(fractions)
            scored = [s for s, subsets in SUBSET_MAPPING.items() if set(subsets) & set(by_subset)]
            out["rewardbench"] = {**{s: sections[s] * 100 for s in scored},
                                  "score": float(np.mean([sections[s] for s in scored])) * 100,
                                  "sections_scored": scored}
    return out


__all__ = ["run", "section_scores", "EXAMPLE_COUNTS", "SUBSET_MAPPING"]
