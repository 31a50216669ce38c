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
