"""From judged samples to policy-gradient groups: a prompt's K samples, their rewards and advantages.

The GRPO family (`online.objective: grpo`) and RLOO (`rloo`) train on every sample of a
prompt, weighted by its advantage over its group, where the DPO family (`pairs.py`) keeps
the best and the worst. The reward of a sample is the judge's scalar score; a pairwise judge
(PairRM, an llm judge's matrix) gives each sample its mean win probability over the others.
Advantages are computed as trl 1.16 computes them: GRPOTrainer's group-mean baseline scaled by
`scale_rewards`, RLOOTrainer's leave-one-out baseline (optionally normalised over the batch).
"""

from __future__ import annotations

import torch

from pride.online.pairs import sigmoid


def sample_rewards(judged: dict) -> list[float]:
    """A prompt's K rewards: the scalar scores, or from a matrix M (M[i][j] > 0 when i beats j, a
    logit) each sample's mean win probability sigmoid(M[i][j]) over the K-1 others."""
    matrix = judged.get("matrix")
    if not matrix:
        return [float(x) for x in judged["scores"]]
    k = len(matrix)
    return [sum(sigmoid(matrix[i][j]) for j in range(k) if j != i) / (k - 1) for i in range(k)]


def kto_labels(rewards: list[float]) -> list[bool | None]:
    """Online KTO's labels of a group: desirable above the group's mean reward, undesirable below, None
    (a tie, dropped and counted) at it. Every sample off the mean trains; none waits for a partner."""
    mean = sum(rewards) / len(rewards)
    return [True if r > mean else False if r < mean else None for r in rewards]


def _std(x: torch.Tensor, dim=None) -> torch.Tensor:
    """Bessel-corrected standard deviation (trl's nanstd without NaNs: torch.std)."""
    return x.std() if dim is None else x.std(dim=dim)


def grpo_advantages(rewards: torch.Tensor, scale: str) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPOTrainer's advantages of [groups, K] rewards: r - mean(group), divided by (std + 1e-4) of
    the group (`group`), of the whole batch (`batch`), or not (`none`). Also which groups are flat
    (their std is 0 up to torch.isclose: no signal), per sample."""
    k = rewards.shape[1]
    mean = rewards.mean(dim=1, keepdim=True).expand_as(rewards)
    group_std = _std(rewards, dim=1).unsqueeze(1).expand_as(rewards)
    std = group_std if scale in ("group", "none") else _std(rewards.reshape(-1)).expand_as(rewards)
    if k < 2:
        std = torch.zeros_like(rewards)
    advantages = rewards - mean
    if scale != "none":
        advantages = advantages / (std + 1e-4)
    return advantages, torch.isclose(group_std, torch.zeros_like(group_std))


def rloo_advantages(rewards: torch.Tensor, normalize: bool) -> torch.Tensor:
    """RLOOTrainer's advantages of [groups, K] rewards: r_i - mean of the group's K-1 others, then
    with `normalize` (its normalize_advantages) centred and scaled over the whole batch."""
    k = rewards.shape[1]
    baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)
    advantages = rewards - baseline
    if normalize:
        advantages = (advantages - advantages.mean()) / (_std(advantages.reshape(-1)) + 1e-4)
    return advantages


def advantages(rewards: list[list[float]], objective: str, scale: str,
               kl: list[list[float]] | None = None, beta: float = 0.0) -> tuple[list[list[float]], list[bool]]:
    """Each sample's advantage and whether its group is flat (all rewards equal). `kl`: RLOO's
    per-sample sum of (old - ref) log-probs, subtracted from the reward times beta (its KL
    penalty in the reward, the first-order estimate the RLOO paper uses)."""
    r = torch.tensor(rewards, dtype=torch.float32)  # trl's rewards are float32
    flat = [len(set(group)) == 1 for group in rewards]
    if objective == "rloo":
        if beta and kl is not None:
            r = r - beta * torch.tensor(kl, dtype=torch.float32)
        return rloo_advantages(r, scale == "batch").tolist(), flat
    adv, _ = grpo_advantages(r, scale)
    return adv.tolist(), flat


__all__ = ["sample_rewards", "grpo_advantages", "rloo_advantages", "advantages"]
