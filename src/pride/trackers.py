"""The experiment trackers pride logs to (`train.report_to`, `eval.report_to`), checked before
any work: a tracker that is missing or cannot log stops the run with one line at its start,
not with a traceback after the first step."""

from __future__ import annotations

import importlib.util
import netrc
import os
from urllib.parse import urlparse

from pride.errors import PrideError

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}


def check_trackers(names, key: str) -> None:
    for name in names:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise PrideError(f"{key} includes {name}, which is not installed (pip install {PACKAGES[name]}), "
                             f"or remove it from {key}")
        if name == "wandb" and not wandb_logged_in():
            raise PrideError(f"{key} includes wandb, which has no login here: run `wandb login` or set WANDB_API_KEY; "
                             "offline, set WANDB_MODE=offline to log locally (`wandb sync` uploads it later)")


def wandb_logged_in(env=None) -> bool:
    """What wandb.init needs to start without asking: offline/disabled mode, an API key in the
    environment, or the login `wandb login` writes to ~/.netrc."""
    env = os.environ if env is None else env
    if env.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled") or env.get("WANDB_API_KEY"):
        return True
    host = urlparse(env.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc(env.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def flat_hparams(settings: dict, prefix: str = "") -> dict:
    """Settings as the flat scalar mapping every tracker's hyperparameter table takes (TensorBoard's
    add_hparams refuses None, lists and nested mappings): `train.learning_rate: 1e-5`, None as
    "null", lists as their JSON text."""
    import json

    out: dict = {}
    for k, v in settings.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flat_hparams(v, key))
        elif v is None:
            out[key] = "null"
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = json.dumps(v, default=str)
    return out
