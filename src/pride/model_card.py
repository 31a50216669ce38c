"""A saved model's `README.md` in the Hub's model-card format: YAML metadata (base model, data,
library, tags) and what made it: the stage, its key settings, its final metrics.

Written into `model/` when a stage saves it, so a directory copied or pushed to the Hub says
where it came from. (Evaluation scores are not written into it: `pride eval` never writes into
the model it reads; they are in the eval directory's report.md and scores.json.)
"""

from __future__ import annotations

import json

import yaml

KEY_SETTINGS = {
    "sft": ("train.learning_rate", "train.epochs", "train.max_steps", "train.micro_batch_size",
            "train.global_batch_size", "train.max_length", "train.packing", "data.train_on"),
    "rm": ("train.learning_rate", "train.epochs", "train.max_steps", "reward.max_length", "reward.truncation_side",
           "reward.center_rewards_coefficient"),
    "dpo": ("train.learning_rate", "train.epochs", "train.max_steps", "preference.loss_type", "preference.beta",
            "preference.gamma", "preference.nll_weight", "preference.max_length"),
    "kto": ("train.learning_rate", "train.epochs", "train.max_steps", "kto.loss_type", "kto.beta",
            "kto.desirable_weight", "kto.undesirable_weight", "preference.max_length"),
    "grpo": ("train.learning_rate", "train.max_steps", "online.objective", "online.samples_per_prompt",
             "online.grpo.loss_type", "online.grpo.scale_rewards", "online.grpo.epsilon", "online.grpo.epsilon_high",
             "online.grpo.beta", "online.grpo.importance_sampling_level"),
}


def hub_id(ref: str) -> bool:
    """A Hub repository id (`org/name`), not a local directory: what the card's metadata may name."""
    from pathlib import Path

    return ref.count("/") == 1 and not ref.startswith((".", "/", "~")) and not Path(ref).exists()


def _get(cfg, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part, None)
    return value


def model_card(cfg, kind: str, summary: dict) -> str:
    """The card's text for a model trained by stage `kind` (sft, dpo, rm) with `cfg`."""
    base = cfg.model.path
    sources = [s.path for s in (cfg.data.sources if cfg.data else [])]
    meta = {"library_name": "transformers", "tags": ["pride", kind],
            "pipeline_tag": "text-classification" if kind == "rm" else "text-generation"}
    if hub_id(base):  # the Hub's metadata takes ids only; a local directory is named in the text
        meta["base_model"] = base
    hub_data = [s for s in sources if hub_id(s)]
    if hub_data:
        meta["datasets"] = hub_data
    what = {"sft": "supervised fine-tuning", "dpo": "preference training (the DPO family)",
            "rm": "a reward model (Bradley-Terry; AutoModelForSequenceClassification, one output)",
            "kto": f"unpaired feedback ({cfg.kto.loss_type}: answers labelled desirable or undesirable)",
            "grpo": f"online policy-gradient rounds ({cfg.online.objective}: each sample by its advantage)"}[kind]
    settings = {k: _get(cfg, k) for k in KEY_SETTINGS[kind] if _get(cfg, k) is not None}
    final = {k: v for k, v in (summary.get("final") or {}).items() if isinstance(v, (int, float))}
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
             f"# {cfg.output_dir.rstrip('/').split('/')[-1]}", "",
             f"Trained with pride by {what}, from `{base}`, for {summary.get('steps')} steps.",
             "", "## Data", ""]
    lines += [f"- `{s}`" for s in sources] or ["- (none)"]
    lines += ["", "## Key settings", "", "```json", json.dumps(settings, indent=2, default=str), "```", "",
              "The full resolved configuration is `config.yaml` in the run directory.", "",
              "## Final training metrics", "", "```json", json.dumps(final, indent=2), "```", ""]
    return "\n".join(lines)


__all__ = ["model_card"]
