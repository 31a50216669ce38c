"""The DPO loss family as pure functions of sequence log-probs.

Notation (every function gets tensors of shape [pairs]):
    pi_w, pi_l   policy log-probs of the chosen (w) and rejected (l) completion, summed
    ref_w, ref_l the same under the reference model
    r_w = pi_w - ref_w,  r_l = pi_l - ref_l,  D = r_w - r_l
    |y_w|, |y_l| completion lengths in tokens; P_w, P_l win probabilities (SPPO)

`preference_loss(loss_type, ...)` dispatches by name and returns the per-pair loss; the
training objective averages it over the pairs of an optimizer step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from pride.errors import PrideError

logsig = F.logsigmoid


def sigmoid(D: Tensor, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """DPO (Rafailov et al. 2023, arXiv:2305.18290): -log sigmoid(beta*D).

    With label_smoothing eps > 0 this is conservative DPO (cDPO, Mitchell 2023):
    -(1-eps) log sigmoid(beta*D) - eps log sigmoid(-beta*D).
    """
    return -(1 - label_smoothing) * logsig(beta * D) - label_smoothing * logsig(-beta * D)


def robust(D: Tensor, beta: float, label_smoothing: float) -> Tensor:
    """Robust DPO (Chowdhury et al. 2024, arXiv:2403.00409), eps = label-flip rate:
    (-(1-eps) log sigmoid(beta*D) + eps log sigmoid(-beta*D)) / (1 - 2 eps)."""
    return (-(1 - label_smoothing) * logsig(beta * D) + label_smoothing * logsig(-beta * D)) / (1 - 2 * label_smoothing)


def ipo(D_mean: Tensor, beta: float) -> Tensor:
    """IPO (Azar et al. 2023, arXiv:2310.12036, eq. 17): (D - 1/(2*beta))^2, with D computed on
    length-normalised (per-token mean) log-ratios, as TRL does with the authors' agreement."""
    return (D_mean - 1 / (2 * beta)) ** 2


def hinge(D: Tensor, beta: float) -> Tensor:
    """SLiC-HF (Zhao et al. 2023, arXiv:2305.10425) calibration loss: relu(1 - beta*D)."""
    return torch.relu(1 - beta * D)


def dpo_gamma(D: Tensor, beta: float, gamma: float) -> Tensor:
    """DPO with a reward margin gamma (CustomPOs' DPO-gamma): -log sigmoid(beta*D - gamma)."""
    return -logsig(beta * D - gamma)


def slic_dpo(D: Tensor, beta: float, delta: float) -> Tensor:
    """SLiC on DPO's implicit reward (CustomPOs' SLiC-DPO): relu(delta - beta*D)."""
    return torch.relu(delta - beta * D)


def simpo(pi_w: Tensor, pi_l: Tensor, len_w: Tensor, len_l: Tensor, beta: float, gamma: float) -> Tensor:
    """SimPO (Meng et al. 2024, arXiv:2405.14734), reference-free:
    -log sigmoid(beta*(pi_w/|y_w| - pi_l/|y_l|) - gamma)."""
    return -logsig(beta * (pi_w / len_w - pi_l / len_l) - gamma)


def sppo(r_w: Tensor, r_l: Tensor, p_w: Tensor, p_l: Tensor, beta: float) -> Tensor:
    """SPPO (Wu et al. 2024, arXiv:2405.00675, eq. 4.7) with eta = 1/beta:
    ((r_w - (P_w - 1/2)/beta)^2 + (r_l - (P_l - 1/2)/beta)^2) / 2."""
    return ((r_w - (p_w - 0.5) / beta) ** 2 + (r_l - (p_l - 0.5) / beta) ** 2) / 2


def sppo_single(r_w: Tensor, r_l: Tensor, p: Tensor, beta: float) -> Tensor:
    """SPPO's `sppo_single` (uclaml/SPPO sppo/trainer.py) on one probability per pair, P = P(y_w beats y_l)
    (their `chosen_probs`): ((r_w - (P - 1/2)/beta)^2 + (r_l + (P - 1/2)/beta)^2) / 2, i.e. SPPO with
    P_w = P and P_l = 1 - P."""
    return ((r_w - (p - 0.5) / beta) ** 2 + (r_l + (p - 0.5) / beta) ** 2) / 2


def sppo_hard(r_w: Tensor, r_l: Tensor, beta: float) -> Tensor:
    """SPPO with hard probabilities P_w = 1, P_l = 0 (TRL's form): (r_w - 1/(2 beta))^2 + (r_l + 1/(2 beta))^2."""
    return (r_w - 0.5 / beta) ** 2 + (r_l + 0.5 / beta) ** 2


def bco_pair(r_w: Tensor, r_l: Tensor, beta: float) -> Tensor:
    """Paired BCO (Jung et al. 2024, arXiv:2404.04656) as in TRL (no reward shift):
    -log sigmoid(beta*r_w) - log sigmoid(-beta*r_l)."""
    return -logsig(beta * r_w) - logsig(-beta * r_l)


def nca_pair(r_w: Tensor, r_l: Tensor, beta: float) -> Tensor:
    """NCA (Chen et al. 2024, arXiv:2402.05369), pairwise:
    -log sigmoid(beta*r_w) - 1/2 log sigmoid(-beta*r_w) - 1/2 log sigmoid(-beta*r_l)."""
    return -logsig(beta * r_w) - 0.5 * logsig(-beta * r_w) - 0.5 * logsig(-beta * r_l)


def apo_zero(r_w: Tensor, r_l: Tensor, beta: float) -> Tensor:
    """APO-zero (D'Oosterlinck et al. 2024, arXiv:2408.06266, eq. 7):
    (1 - sigmoid(beta*r_w)) + sigmoid(beta*r_l)."""
    return (1 - torch.sigmoid(beta * r_w)) + torch.sigmoid(beta * r_l)


def apo_down(r_w: Tensor, r_l: Tensor, beta: float) -> Tensor:
    """APO-down (same paper, eq. 8): sigmoid(beta*r_w) + (1 - sigmoid(beta*(r_w - r_l)))."""
    return torch.sigmoid(beta * r_w) + (1 - torch.sigmoid(beta * (r_w - r_l)))


def cpo(pi_w: Tensor, pi_l: Tensor, beta: float) -> Tensor:
    """Reference-free sigmoid (CPO, Xu et al. 2024, arXiv:2401.08417; CustomPOs' `cpo`:
    contrast_loss_type sigmoid, reference_free): -log sigmoid(beta*(pi_w - pi_l)). CPO's NLL term
    on the chosen answer is `nll_weight` (CustomPOs: lambda_sft 1.0)."""
    return -logsig(beta * (pi_w - pi_l))


def slic(pi_w: Tensor, pi_l: Tensor, beta: float) -> Tensor:
    """Reference-free hinge (SLiC-HF's calibration on the policy alone; CustomPOs' `slic`:
    contrast_loss_type hinge, reference_free): relu(1 - beta*(pi_w - pi_l)); its NLL term is
    `nll_weight` (CustomPOs: lambda_sft 1.0)."""
    return torch.relu(1 - beta * (pi_w - pi_l))


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -log 2."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo(a_w: Tensor, a_l: Tensor, beta: float) -> Tensor:
    """ORPO's odds-ratio term (Hong et al. 2024, arXiv:2403.07691, eqs. 4 and 7), as TRL computes it on
    per-token mean log-probs a = pi/|y|: -beta * log sigmoid(log odds(a_w) - log odds(a_l)),
    log odds(a) = a - log(1 - exp(a)). ORPO adds the NLL of the chosen answer: `nll_weight: 1`."""
    return -beta * logsig((a_w - a_l) - (_log1mexp(a_w) - _log1mexp(a_l)))


def kto_pair(r_w: Tensor, r_l: Tensor, beta: float) -> Tensor:
    """Paired KTO (HALOs, Ethayarajh et al. 2024, eq. 7; the kto_pair of TRL <= 0.8, CustomPOs and
    LLM_DPO): the KL reference point of chosen is estimated from the rejected half and vice versa,
    as the micro-batch means clamped at 0. Their code averages the two halves over 2B losses; per
    pair that is the halves' mean, so the objective's mean over pairs equals theirs."""
    kl_w, kl_l = r_w.mean().clamp(min=0), r_l.mean().clamp(min=0)
    return ((1 - torch.sigmoid(beta * (r_w - kl_l))) + (1 - torch.sigmoid(beta * (kl_w - r_l)))) / 2


@dataclass(frozen=True)
class Loss:
    """One row of the loss table: the function of the named inputs and what the row needs."""

    fn: Callable[[dict], Tensor]
    reference: bool = True  # needs reference log-probs
    lengths: bool = False  # needs completion lengths
    probs: str | None = None  # SPPO probabilities: "win" (chosen_win_prob, rejected_win_prob), "pair" (chosen_probs)


# The one list of loss types: the config's `preference.loss_type` choices derive from it.
LOSSES: dict[str, Loss] = {
    "sigmoid": Loss(lambda a: sigmoid(a["D"], a["beta"], a["label_smoothing"])),
    "robust": Loss(lambda a: robust(a["D"], a["beta"], a["label_smoothing"])),
    "ipo": Loss(lambda a: ipo(a["r_w"] / a["len_w"] - a["r_l"] / a["len_l"], a["beta"]), lengths=True),
    "hinge": Loss(lambda a: hinge(a["D"], a["beta"])),
    "dpo_gamma": Loss(lambda a: dpo_gamma(a["D"], a["beta"], a["gamma"])),
    "slic_dpo": Loss(lambda a: slic_dpo(a["D"], a["beta"], a["delta"])),
    "simpo": Loss(lambda a: simpo(a["pi_w"], a["pi_l"], a["len_w"], a["len_l"], a["beta"], a["gamma"]),
                  reference=False, lengths=True),
    "cpo": Loss(lambda a: cpo(a["pi_w"], a["pi_l"], a["beta"]), reference=False),
    "slic": Loss(lambda a: slic(a["pi_w"], a["pi_l"], a["beta"]), reference=False),
    "orpo": Loss(lambda a: orpo(a["pi_w"] / a["len_w"], a["pi_l"] / a["len_l"], a["beta"]),
                 reference=False, lengths=True),
    "kto_pair": Loss(lambda a: kto_pair(a["r_w"], a["r_l"], a["beta"])),
    "sppo": Loss(lambda a: sppo(a["r_w"], a["r_l"], a["p_w"], a["p_l"], a["beta"]), probs="win"),
    "sppo_single": Loss(lambda a: sppo_single(a["r_w"], a["r_l"], a["p_w"], a["beta"]), probs="pair"),
    "sppo_hard": Loss(lambda a: sppo_hard(a["r_w"], a["r_l"], a["beta"])),
    "bco_pair": Loss(lambda a: bco_pair(a["r_w"], a["r_l"], a["beta"])),
    "nca_pair": Loss(lambda a: nca_pair(a["r_w"], a["r_l"], a["beta"])),
    "apo_zero": Loss(lambda a: apo_zero(a["r_w"], a["r_l"], a["beta"])),
    "apo_down": Loss(lambda a: apo_down(a["r_w"], a["r_l"], a["beta"])),
}
LOSS_TYPES = tuple(LOSSES)
REFERENCE_FREE = frozenset(k for k, v in LOSSES.items() if not v.reference)
NEEDS_LENGTHS = frozenset(k for k, v in LOSSES.items() if v.lengths)
NEEDS_WIN_PROB = frozenset(k for k, v in LOSSES.items() if v.probs)
PROB_COLUMNS = {"win": "chosen_win_prob and rejected_win_prob", "pair": "chosen_probs"}


def preference_loss(
    loss_type: str,
    *,
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor | None = None,
    reference_rejected_logps: Tensor | None = None,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    chosen_win_prob: Tensor | None = None,
    rejected_win_prob: Tensor | None = None,
    beta: float = 0.1,
    gamma: float = 0.0,
    label_smoothing: float = 0.0,
    delta: float = 1.0,
) -> Tensor:
    """Per-pair loss of `loss_type` (see the module docstring for the notation)."""
    if loss_type not in LOSSES:
        raise PrideError(f"unknown loss_type {loss_type!r} (available: {', '.join(LOSS_TYPES)})")
    if loss_type not in REFERENCE_FREE and (reference_chosen_logps is None or reference_rejected_logps is None):
        raise PrideError(f"loss_type {loss_type!r} needs reference log-probs")
    if loss_type in NEEDS_LENGTHS and (chosen_lengths is None or rejected_lengths is None):
        raise PrideError(f"loss_type {loss_type!r} needs chosen_lengths and rejected_lengths")
    if loss_type in NEEDS_WIN_PROB and (chosen_win_prob is None or rejected_win_prob is None):
        raise PrideError(f"loss_type {loss_type!r} needs chosen_win_prob and rejected_win_prob (SPPO rows; "
                         "sppo_single: chosen_win_prob = chosen_probs)")
    args: dict = {"pi_w": policy_chosen_logps, "pi_l": policy_rejected_logps, "beta": beta, "gamma": gamma,
                  "label_smoothing": label_smoothing, "delta": delta, "p_w": chosen_win_prob,
                  "p_l": rejected_win_prob}
    if chosen_lengths is not None:
        args["len_w"] = chosen_lengths.to(policy_chosen_logps.dtype).clamp(min=1)
        args["len_l"] = rejected_lengths.to(policy_rejected_logps.dtype).clamp(min=1)
    if reference_chosen_logps is not None:
        args["r_w"] = policy_chosen_logps - reference_chosen_logps
        args["r_l"] = policy_rejected_logps - reference_rejected_logps
        args["D"] = args["r_w"] - args["r_l"]
    return LOSSES[loss_type].fn(args)


def bradley_terry(chosen: Tensor, rejected: Tensor, margin: Tensor | None = None,
                  center_rewards_coefficient: float | None = None) -> Tensor:
    """A reward model's per-pair loss (TRL's RewardTrainer.compute_loss): -log sigmoid(r_c - r_r - m),
    with the margin m of the pair when the data gives one (Llama 2's margin loss, arXiv:2307.09288),
    plus c * (r_c + r_r)^2 to keep the rewards centred on 0 (Eisenstein et al. 2023,
    arXiv:2312.09244). Averaged over pairs, this is TRL's loss."""
    diff = chosen - rejected if margin is None else chosen - rejected - margin
    loss = -logsig(diff)
    if center_rewards_coefficient is not None:
        loss = loss + center_rewards_coefficient * (chosen + rejected) ** 2
    return loss


# ---------------------------------------------------------------- the GRPO family (online.objective grpo / rloo)
#
# Notation (flat over a micro-batch's completion tokens, as `TokenLogps` gives them):
#     logp, old, ref  per-token log-probs of the policy, of the policy that sampled (the round's
#                     starting model) and of the reference; `seq[t]` is token t's sequence
#     A               each sequence's advantage, broadcast to its tokens
#     ratio           exp(logp - old) per token, or per sequence exp(mean_t(logp - old)) (GSPO)
# Each function gives the per-token loss; `PG_LOSSES` says how a step normalises it (`units`),
# as TRL's GRPOTrainer does for the same `loss_type` (trl 1.16 `_compute_loss`).


def seq_mean(x: Tensor, seq: Tensor, n_seqs: int) -> Tensor:
    """Per-sequence mean of per-token values [N] -> [n_seqs] (TRL: (x*mask).sum(-1) / mask.sum(-1).clamp(1))."""
    total = x.new_zeros(n_seqs).index_add(0, seq, x)
    count = x.new_zeros(n_seqs).index_add(0, seq, torch.ones_like(x))
    return total / count.clamp(min=1)


def importance_log_ratio(logp: Tensor, old: Tensor, seq: Tensor, n_seqs: int, level: str) -> Tensor:
    """log ratio per token (`token`, PPO/GRPO) or the sequence's mean log ratio on each of its tokens
    (`sequence`: GSPO, Zheng et al. 2025, arXiv:2507.18071)."""
    log_ratio = logp - old
    return log_ratio if level == "token" else seq_mean(log_ratio, seq, n_seqs)[seq]


def clipped_surrogate(ratio: Tensor, adv: Tensor, epsilon: float, epsilon_high: float,
                      delta: float | None = None) -> Tensor:
    """PPO's clipped objective (Schulman et al. 2017, arXiv:1707.06347) as GRPO uses it (Shao et al. 2024,
    arXiv:2402.03300): -min(r A, clip(r, 1-eps, 1+eps_high) A). eps_high > eps is DAPO's clip-higher (Yu et al.
    2025, arXiv:2503.14476); `delta` caps r itself (two-sided clipping, INTELLECT-2, arXiv:2505.07291)."""
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high)
    if delta is not None:
        ratio = torch.clamp(ratio, max=delta)
    return -torch.min(ratio * adv, clipped * adv)


def cispo(ratio: Tensor, adv: Tensor, logp: Tensor, epsilon_high: float) -> Tensor:
    """CISPO (MiniMax-M1, arXiv:2506.13585): the importance weight clipped from above and detached,
    times A times the token's log-prob: -sg(min(r, eps_high)) A logp."""
    return -torch.clamp(ratio, max=epsilon_high).detach() * adv * logp


def sapo(ratio: Tensor, adv: Tensor, tau_pos: float, tau_neg: float) -> Tensor:
    """SAPO (Gao et al. 2025, arXiv:2511.20347): a soft gate instead of the clip,
    -(4/tau) sigmoid(tau (r - 1)) A, tau = tau_pos where A > 0 else tau_neg."""
    tau = torch.where(adv > 0, torch.full_like(adv, tau_pos), torch.full_like(adv, tau_neg))
    return -torch.sigmoid(tau * (ratio - 1)) * 4 / tau * adv


def vespo_weights(adv_seq: Tensor, log_ratio: Tensor, seq: Tensor, n_seqs: int, k_pos: float, lambda_pos: float,
                  k_neg: float, lambda_neg: float) -> Tensor:
    """VESPO's Gamma weight of each sequence (arXiv:2602.10693, as trl 1.16 `get_gamma_weights`):
    phi(w) = exp(lambda + k log w - lambda w) on the sequence ratio w = exp(sum_t log r_t), detached;
    (k, lambda) by the advantage's sign. Returns [n_seqs]."""
    with torch.no_grad():
        lower = math.log(1e-8)
        summed = log_ratio.new_zeros(n_seqs).index_add(0, seq, torch.clamp(log_ratio, -20.0, 20.0))
        log_w = torch.clamp(summed, lower, 20.0)
        nonneg = adv_seq >= 0
        k = torch.where(nonneg, torch.full_like(log_w, k_pos), torch.full_like(log_w, k_neg))
        lam = torch.where(nonneg, torch.full_like(log_w, lambda_pos), torch.full_like(log_w, lambda_neg)).clamp(min=1e-4)
        return torch.exp(lam + k * log_w - lam * torch.exp(log_w)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def k3_kl(logp: Tensor, ref: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token: exp(ref - logp) - (ref - logp) - 1 (>= 0)."""
    d = ref - logp
    return torch.exp(d) - d - 1


@dataclass(frozen=True)
class PgLoss:
    """One policy-gradient loss: how its per-token losses of a step are normalised (`units`):
    tokens (the step's completion tokens: DAPO's token-level mean), or sequences (a mean over the
    step's sequences of each sequence's `per_seq` reduction)."""

    units: str  # tokens | sequences
    per_seq: str = "sum"  # with units sequences: mean (GRPO), sum (LUSPO), max_len (Dr. GRPO), batch (BNPO)
    clipped: bool = True  # reports clip fractions


# The one list of the GRPO family's loss types (online.grpo.loss_type), TRL's names.
PG_LOSSES: dict[str, PgLoss] = {
    "dapo": PgLoss("tokens"),  # DAPO (arXiv:2503.14476): tokens of the whole step
    "grpo": PgLoss("sequences", "mean"),  # GRPO (arXiv:2402.03300): each sequence's token mean
    "dr_grpo": PgLoss("sequences", "max_len"),  # Dr. GRPO (arXiv:2503.20783): sum / max completion length
    "bnpo": PgLoss("sequences", "batch"),  # BNPO (arXiv:2506.02864): a micro-batch's token mean, as TRL
    "cispo": PgLoss("tokens", clipped=False),  # CISPO (arXiv:2506.13585)
    "sapo": PgLoss("sequences", "mean", clipped=False),  # SAPO (arXiv:2511.20347)
    "luspo": PgLoss("sequences", "sum"),  # LUSPO (arXiv:2602.05261): GSPO scaled by length
    "vespo": PgLoss("tokens", clipped=False),  # VESPO (arXiv:2602.10693)
}
PG_LOSS_TYPES = tuple(PG_LOSSES)


def policy_gradient_loss(loss_type: str, *, logp: Tensor, old: Tensor, adv_seq: Tensor, seq: Tensor, n_seqs: int,
                         level: str = "token", epsilon: float = 0.2, epsilon_high: float | None = None,
                         delta: float | None = None, beta: float = 0.0, ref: Tensor | None = None,
                         sapo_temperatures: tuple[float, float] = (1.0, 1.05),
                         vespo: tuple[float, float, float, float] = (2.0, 3.0, 3.0, 2.0)) -> tuple[Tensor, dict]:
    """Per-token loss of `loss_type` [N] (before normalisation), and what it reports: the ratio
    per token and the KL per token (beta > 0). With beta > 0 the k3 KL to the reference is added
    per token, times the ratio (trl 1.16's default use_bias_correction_kl: the unbiased reverse-KL
    gradient, DeepSeek-V3.2, arXiv:2512.02556)."""
    if loss_type not in PG_LOSSES:
        raise PrideError(f"unknown online.grpo.loss_type {loss_type!r} (available: {', '.join(PG_LOSS_TYPES)})")
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    adv = adv_seq[seq]
    log_ratio = logp - old
    ratio = torch.exp(importance_log_ratio(logp, old, seq, n_seqs, level))
    if loss_type == "cispo":
        loss = cispo(ratio, adv, logp, epsilon_high)
    elif loss_type == "sapo":
        loss = sapo(ratio, adv, *sapo_temperatures)
    elif loss_type == "vespo":
        loss = -vespo_weights(adv_seq, log_ratio, seq, n_seqs, *vespo)[seq] * adv * logp
    else:
        loss = clipped_surrogate(ratio, adv, epsilon, epsilon_high, delta)
    report = {"ratio": ratio.detach()}
    if beta:
        kl = k3_kl(logp, ref)
        loss = loss + beta * kl * ratio
        report["kl"] = kl.detach()
    return loss, report


def rloo_loss(logp_seq: Tensor, old_seq: Tensor, adv_seq: Tensor, epsilon: float,
              epsilon_high: float | None = None) -> Tensor:
    """RLOO's per-sequence loss as trl 1.16's RLOOTrainer (REINFORCE Leave-One-Out, Ahmadian et al.
    2024, arXiv:2402.14740): the clipped surrogate on the whole sequence's ratio
    exp(sum_t logp - sum_t old). [sequences] -> [sequences]."""
    ratio = torch.exp(logp_seq - old_seq)
    return clipped_surrogate(ratio, adv_seq, epsilon, epsilon if epsilon_high is None else epsilon_high)


# ---------------------------------------------------------------- unpaired feedback (pride kto)
#
# Notation (every tensor of shape [rows]): r = pi - ref, a row's summed completion log-ratio;
# `desirable` its label; z the KL estimate, detached and clamped at 0 (KTO's reference point).

UNPAIRED_LOSSES = ("kto", "apo_zero_unpaired")


def unpaired_loss(loss_type: str, r: Tensor, desirable: Tensor, z: Tensor, beta: float,
                  desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> Tensor:
    """Per-row loss as trl 1.16's KTOTrainer, weighted by the row's label:
    kto (eq. 7 of the KTO paper): 1 - sigmoid(beta (r - z)) if desirable, else 1 - sigmoid(beta (z - r));
    apo_zero_unpaired (the APO paper's eq. 7 unpaired, D'Oosterlinck et al. 2024, arXiv:2408.06266):
    1 - sigmoid(beta r) if desirable, else sigmoid(beta r) (no z). Averaged over rows, TRL's loss."""
    if loss_type == "kto":
        good, bad = 1 - torch.sigmoid(beta * (r - z)), 1 - torch.sigmoid(beta * (z - r))
    elif loss_type == "apo_zero_unpaired":
        good, bad = 1 - torch.sigmoid(beta * r), torch.sigmoid(beta * r)
    else:
        raise PrideError(f"unknown unpaired loss_type {loss_type!r} (known: {', '.join(UNPAIRED_LOSSES)})")
    return torch.where(desirable, desirable_weight * good, undesirable_weight * bad)
