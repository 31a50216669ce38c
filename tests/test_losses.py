"""Every loss equals its formula written out independently here (float64, 1e-6), gradients too."""

import math

import pytest
import torch

from pride.errors import PrideError
from pride.losses import LOSS_TYPES, preference_loss

BETA, GAMMA, EPS, DELTA = 0.3, 0.4, 0.15, 0.8


def ls(x):  # log sigmoid, written the long way
    return torch.log(1 / (1 + torch.exp(-x)))


def sg(x):
    return 1 / (1 + torch.exp(-x))


def expected(name, pw, pl, rw_, rl_, lw, ll, Pw, Pl):
    rw, rl = pw - rw_, pl - rl_
    D = rw - rl
    return {
        "sigmoid": -(1 - EPS) * ls(BETA * D) - EPS * ls(-BETA * D),
        "robust": (-(1 - EPS) * ls(BETA * D) + EPS * ls(-BETA * D)) / (1 - 2 * EPS),
        "ipo": ((rw / lw - rl / ll) - 1 / (2 * BETA)) ** 2,
        "hinge": torch.clamp(1 - BETA * D, min=0),
        "dpo_gamma": -ls(BETA * D - GAMMA),
        "slic_dpo": torch.clamp(DELTA - BETA * D, min=0),
        "simpo": -ls(BETA * (pw / lw - pl / ll) - GAMMA),
        "sppo": ((rw - (Pw - 0.5) / BETA) ** 2 + (rl - (Pl - 0.5) / BETA) ** 2) / 2,
        # uclaml/SPPO sppo/trainer.py, loss_type sppo_single, with chosen_probs = Pw
        "sppo_single": ((rw - (1 / BETA) * (Pw - 0.5)) ** 2 + (rl + (1 / BETA) * (Pw - 0.5)) ** 2) / 2,
        "sppo_hard": (rw - 1 / (2 * BETA)) ** 2 + (rl + 1 / (2 * BETA)) ** 2,
        "bco_pair": -ls(BETA * rw) - ls(-BETA * rl),
        "nca_pair": -ls(BETA * rw) - 0.5 * ls(-BETA * rw) - 0.5 * ls(-BETA * rl),
        "apo_zero": (1 - sg(BETA * rw)) + sg(BETA * rl),
        "apo_down": sg(BETA * rw) + (1 - sg(BETA * (rw - rl))),
        "cpo": -ls(BETA * (pw - pl)),
        "slic": torch.clamp(1 - BETA * (pw - pl), min=0),
        "orpo": -BETA * ls(log_odds(pw / lw) - log_odds(pl / ll)),
        # CustomPOs' kto_pair: mean over cat(half_w, half_l) of 2B losses, written per pair as their mean
        "kto_pair": ((1 - sg(BETA * (rw - torch.clamp(rl.mean(), min=0))))
                     + (1 - sg(BETA * (torch.clamp(rw.mean(), min=0) - rl)))) / 2,
    }[name]


def log_odds(a):  # log(p / (1 - p)) with p = exp(a)
    return a - torch.log(1 - torch.exp(a))


def inputs(seed):
    g = torch.Generator().manual_seed(seed)
    n = 16
    pw, pl = -torch.rand(n, generator=g, dtype=torch.float64) * 40, -torch.rand(n, generator=g, dtype=torch.float64) * 40
    rw, rl = pw + torch.randn(n, generator=g, dtype=torch.float64) * 3, pl + torch.randn(n, generator=g, dtype=torch.float64) * 3
    lw, ll = torch.randint(1, 60, (n,), generator=g), torch.randint(1, 60, (n,), generator=g)
    Pw, Pl = torch.rand(n, generator=g, dtype=torch.float64), torch.rand(n, generator=g, dtype=torch.float64)
    return pw, pl, rw, rl, lw, ll, Pw, Pl


def test_all_issue_losses_present():
    assert set(LOSS_TYPES) == {"sigmoid", "ipo", "hinge", "dpo_gamma", "slic_dpo", "simpo", "sppo", "sppo_hard",
                               "robust", "bco_pair", "nca_pair", "apo_zero", "apo_down", "cpo", "slic", "orpo",
                               "kto_pair", "sppo_single"}


@pytest.mark.parametrize("name", LOSS_TYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_and_gradient_match_formula(name, seed):
    pw, pl, rw, rl, lw, ll, Pw, Pl = inputs(seed)
    a = [t.clone().requires_grad_(True) for t in (pw, pl)]
    b = [t.clone().requires_grad_(True) for t in (pw, pl)]
    ours = preference_loss(name, policy_chosen_logps=a[0], policy_rejected_logps=a[1], reference_chosen_logps=rw,
                           reference_rejected_logps=rl, chosen_lengths=lw, rejected_lengths=ll, chosen_win_prob=Pw,
                           rejected_win_prob=Pl, beta=BETA, gamma=GAMMA, label_smoothing=EPS, delta=DELTA)
    ref = expected(name, b[0], b[1], rw, rl, lw.double(), ll.double(), Pw, Pl)
    # the same formula in float64 written two ways (other operation order): ~1e-15 apart
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)
    ours.sum().backward()
    ref.sum().backward()
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad, y.grad, atol=1e-6, rtol=1e-6)


def test_dpo_at_zero_margin_is_log2():
    z = torch.zeros(3)
    loss = preference_loss("sigmoid", policy_chosen_logps=z, policy_rejected_logps=z, reference_chosen_logps=z,
                           reference_rejected_logps=z)
    # -logsigmoid(0) in float32 against log 2: torch's default float32 tolerance (1.3e-6 relative)
    torch.testing.assert_close(loss, torch.full((3,), math.log(2)))


def test_missing_inputs_are_named():
    z = torch.zeros(2)
    with pytest.raises(PrideError, match="needs reference log-probs"):
        preference_loss("sigmoid", policy_chosen_logps=z, policy_rejected_logps=z)
    with pytest.raises(PrideError, match="needs chosen_win_prob"):
        preference_loss("sppo", policy_chosen_logps=z, policy_rejected_logps=z, reference_chosen_logps=z,
                        reference_rejected_logps=z)
    with pytest.raises(PrideError, match="needs chosen_lengths"):
        preference_loss("simpo", policy_chosen_logps=z, policy_rejected_logps=z)
    with pytest.raises(PrideError, match="unknown loss_type 'kto'"):
        preference_loss("kto", policy_chosen_logps=z, policy_rejected_logps=z)


def test_orpo_equals_trl_odds_ratio_loss():
    """TRL's ORPOTrainer.odds_ratio_loss on mean log-probs: ours is minus its per-pair term (TRL subtracts it)."""
    pytest.importorskip("trl")
    import os
    from types import SimpleNamespace

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    pw, pl, _, _, lw, ll, _, _ = inputs(3)
    self = SimpleNamespace(beta=BETA, accelerator=SimpleNamespace(device="cpu"))
    trl_losses = ORPOTrainer.odds_ratio_loss(self, pw / lw, pl / ll)[0]
    ours = preference_loss("orpo", policy_chosen_logps=pw, policy_rejected_logps=pl, chosen_lengths=lw,
                           rejected_lengths=ll, beta=BETA)
    # TRL computes in float32: its rounding, ~1e-7 relative, is what differs
    torch.testing.assert_close(ours, -trl_losses.double(), atol=1e-6, rtol=1e-6)


def test_kto_pair_mean_equals_the_concatenated_halves():
    """CustomPOs / LLM_DPO average torch.cat((half_w, half_l)) over 2B; the mean of our per-pair losses is that."""
    pw, pl, rw_, rl_, *_ = inputs(4)
    rw, rl = pw - rw_, pl - rl_
    kl_w, kl_l = rw.mean().clamp(min=0), rl.mean().clamp(min=0)
    theirs = torch.cat((1 - torch.sigmoid(BETA * (rw - kl_l)), 1 - torch.sigmoid(BETA * (kl_w - rl))), 0).mean()
    ours = preference_loss("kto_pair", policy_chosen_logps=pw, policy_rejected_logps=pl, reference_chosen_logps=rw_,
                           reference_rejected_logps=rl_, beta=BETA).mean()
    # the same float32 terms summed in another order: torch's default float32 tolerance
    torch.testing.assert_close(ours, theirs)
