"""Record what each CustomPOs source setting states, with file and line, for tests/test_recipe_sources.py.

    python tests/recipe_sources.py --custompos <clone of martimfasantos/CustomPOs-for-SLMs>

writes tests/data/recipe_sources/customPOs.json: per pride recipe, each pride setting with the
source's value and where it is stated (file:line at the recorded commit). Values are mapped to
pride's names here (the mapping is the documented part); the test compares the recipes to it.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path

import yaml

OUT = Path(__file__).parent / "data" / "recipe_sources" / "customPOs.json"
SETTINGS = [  # (model dir, task dir, file stem, pride recipe stem)
    ("eurollm-1.7b", "mt", "eurollm-1.7b-it-mt", "eurollm-1.7b-mt"),
    ("gemma-2-2b", "mt", "gemma-2-2b-it-mt", "gemma-2-2b-mt"),
    ("gemma-2-2b", "summarization", "gemma-2-2b-it-sum", "gemma-2-2b-sum"),
    ("tinyllama-1.1b", "mt", "tinyllama-1.1b-mt", "tinyllama-1.1b-mt"),
    ("tinyllama-1.1b", "summarization", "tinyllama-1.1b-sum", "tinyllama-1.1b-sum"),
]
METHODS = {"dpo-gamma": "dpo_gamma", "slic-dpo": "slic_dpo"}


def show(repo: Path, commit: str, path: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "show", f"{commit}:{path}"], capture_output=True, text=True,
                          check=True).stdout


def line_of(text: str, pattern: str, path: str) -> str:
    for n, line in enumerate(text.splitlines(), start=1):
        if re.search(pattern, line):
            return f"{path}:{n}"
    raise SystemExit(f"{path}: no line matches {pattern!r}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--custompos", type=Path, required=True)
    args = ap.parse_args()
    repo = args.custompos
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    cfg_py, run_py, trainer_py = "algorithms/custom_po_config.py", "algorithms/run_custom_po.py", \
        "algorithms/custom_po_trainer.py"
    config_src, run_src, trainer_src = (show(repo, commit, p) for p in (cfg_py, run_py, trainer_py))
    table = {"repository": "martimfasantos/CustomPOs-for-SLMs", "commit": commit, "recipes": {}}
    for model_dir, task, stem, ours in SETTINGS:
        for method, loss in METHODS.items():
            path = f"training_configs/{model_dir}/{task}/{stem}-{method}.yaml"
            text = show(repo, commit, path)
            src = yaml.safe_load(text)

            def at(key):
                return line_of(text, rf"^{key}:", path)

            dataset = next(iter(src["dataset_mixer"]))
            row = {
                "model.path": (src["model_name_or_path"], at("model_name_or_path")),
                "model.dtype": ({"bfloat16": "bf16"}[src["torch_dtype"]], at("torch_dtype")),
                "model.gradient_checkpointing": (src["gradient_checkpointing"], at("gradient_checkpointing")),
                # no chat template: run_custom_po.py formats raw text (MT_TEMPLATE / SUMMARIZATION_TEMPLATE)
                "model.chat_template": ("raw", line_of(run_src, r"^MT_TEMPLATE =", run_py)),
                "seed": (src["seed"], at("seed")),
                "data.sources.0.path": (dataset, line_of(text, re.escape(dataset), path)),
                "data.sources.0.split": (src["dataset_splits"][0], at("dataset_splits")),
                "train.optimizer": (src["optimizer_type"], at("optimizer_type")),
                "train.learning_rate": (src["learning_rate"], at("learning_rate")),
                "train.epochs": (src["num_train_epochs"], at("num_train_epochs")),
                "train.lr_scheduler": (src["lr_scheduler_type"], at("lr_scheduler_type")),
                "train.warmup_ratio": (src["warmup_ratio"], at("warmup_ratio")),
                "train.micro_batch_size": (src["per_device_train_batch_size"], at("per_device_train_batch_size")),
                "train.gradient_accumulation_steps": (src["gradient_accumulation_steps"],
                                                      at("gradient_accumulation_steps")),
                "train.weight_decay": (0.05, line_of(config_src, r"weight_decay: .*default=0.05", cfg_py)),
                "preference.loss_type": (loss, at("contrast_loss_type")),
                "preference.beta": (src["beta"], at("beta")),
                "preference.nll_weight": (src["lambda_sft"], at("lambda_sft")),
                "preference.max_length": (src["max_seq_length"], at("max_seq_length")),
                "preference.max_prompt_length": (256, line_of(config_src, r"max_prompt_length: .*default=256", cfg_py)),
            }
            assert src["reference_free"] is False and src["contrast_loss_type"] in ("dpo-gamma", "hinge"), path
            if loss == "dpo_gamma":  # logits - gamma/beta inside -logsigmoid(beta * .) = -logsigmoid(beta*D - gamma)
                row["preference.gamma"] = (src["gamma"], at("gamma"))
            else:  # hinge: relu(1 - beta * logits), margin 0 -> pride's slic_dpo with delta 1
                row["preference.delta"] = (1.0, line_of(trainer_src, r"torch\.relu\(1 - self\.beta \* logits\)",
                                                        trainer_py))
            if task == "summarization":
                template = re.search(r'^SUMMARIZATION_TEMPLATE = "(.*)"$', run_src, re.M).group(1)
                template = json.loads(f'"{template}"')  # the Python string's escapes (\\n)
                row["data.sources.0.columns.prompt"] = (  # its Jinja fields are keys of example['info']
                    re.sub(r"\{\{ (\w+) \}\}", r"{info.\1}", template),
                    line_of(run_src, r"^SUMMARIZATION_TEMPLATE =", run_py))
                row["data.sources.0.subset"] = (src["dataset_configs"][0], at("dataset_configs"))
                row["data.sources.0.columns.chosen"] = ("summaries[choice].text",
                                                        line_of(run_src, r'example\["chosen"\] = example\["summaries"\]',
                                                                run_py))
                row["data.sources.0.columns.rejected"] = ("summaries[1-choice].text",
                                                          line_of(run_src, r'example\["rejected"\] = example\["summaries"\]',
                                                                  run_py))
            table["recipes"][f"customPOs-{ours}-{loss}"] = {k: {"value": v, "source": s} for k, (v, s) in row.items()}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {OUT}: {len(table['recipes'])} recipes at {commit}")


if __name__ == "__main__":
    main()
