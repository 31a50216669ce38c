"""Record what each recipe's source states, value by value with file and line, for tests/test_recipe_sources.py.

    python tests/recipe_sources.py --custompos <clone of martimfasantos/CustomPOs-for-SLMs> \
        --sppo <clone of uclaml/SPPO> --lion <clone of Columbia-NLP-Lab/LionAlignment> \
        --simpo <clone of princeton-nlp/SimPO> --llm-dpo-readme <LuJunru/LLM_DPO's README.md>

writes tests/data/recipe_sources/<source>.json (only for the sources given): per pride recipe,
each pride setting with the source's value and where it is stated (file:line at the recorded
commit). Values are mapped to pride's names here (the mapping is the documented part); the test
compares the recipes to it. A key `stage:dotted.key` names a stage of a multi-stage recipe; a
plain dotted key the recipe's first stage.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path

import yaml

OUT_DIR = Path(__file__).parent / "data" / "recipe_sources"
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


def head(repo: Path) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def line_of(text: str, pattern: str, path: str) -> str:
    for n, line in enumerate(text.splitlines(), start=1):
        if re.search(pattern, line):
            return f"{path}:{n}"
    raise SystemExit(f"{path}: no line matches {pattern!r}")


def item_at(text: str, key: str, item, path: str) -> str:
    """The line of `- item` in the YAML list under `key:` (the value's line, not the key's)."""
    first = int(line_of(text, rf"^\s*{re.escape(key)}:", path).rsplit(":", 1)[1])
    after = line_of("\n".join(text.splitlines()[first:]), rf"^\s*- {re.escape(str(item))}\s*$", path)
    return f"{path}:{first + int(after.rsplit(':', 1)[1])}"


def entries(row: dict) -> dict:
    """(value, where) or (value, where, stated_as): the source's own spelling of a value pride
    names otherwise ("bfloat16" for bf16, "hinge" for slic_dpo), which the cited line must hold."""
    return {k: {"value": v[0], "source": v[1], **({"stated_as": v[2]} if len(v) > 2 else {})} for k, v in row.items()}


def add_cited(table: dict, read) -> dict:
    """Each entry's cited lines, as stored, so the test can check that they state the value
    (`read(path)` gives a file's text at the recorded commit). Citations are `path:line`,
    joined by " x " (a product of their values) or "; " (stated across those lines)."""
    texts: dict = {}
    for row in table["recipes"].values():
        for e in row.values():
            cited = []
            for ref in re.split(r" x |; ", e["source"]):
                path, line = ref.rsplit(":", 1)
                texts.setdefault(path, read(path).splitlines())
                cited.append(texts[path][int(line) - 1].strip())
            e["cited"] = cited
    return table


def custompos(repo: Path) -> dict:
    commit = head(repo)
    cfg_py, run_py, trainer_py = "algorithms/custom_po_config.py", "algorithms/run_custom_po.py", \
        "algorithms/custom_po_trainer.py"
    config_src, run_src, trainer_src = (show(repo, commit, p) for p in (cfg_py, run_py, trainer_py))
    launch_yaml = "accelerate_configs/deepspeed_zero3.yaml"  # README.md's training commands use it
    launch = show(repo, commit, launch_yaml)
    gpus, gpus_at = yaml.safe_load(launch)["num_processes"], line_of(launch, r"^num_processes:", launch_yaml)
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
                "model.dtype": ({"bfloat16": "bf16"}[src["torch_dtype"]], at("torch_dtype"), src["torch_dtype"]),
                "model.gradient_checkpointing": (src["gradient_checkpointing"], at("gradient_checkpointing")),
                # no chat template: run_custom_po.py formats raw text (MT_TEMPLATE / SUMMARIZATION_TEMPLATE)
                "model.chat_template": ("raw", line_of(run_src, r"^SUMMARIZATION_TEMPLATE =" if task == "summarization"
                                                       else r"^MT_TEMPLATE =", run_py),
                                        "SUMMARIZATION_TEMPLATE =" if task == "summarization" else "MT_TEMPLATE ="),
                "seed": (src["seed"], at("seed")),
                "data.sources.0.path": (dataset, line_of(text, re.escape(dataset), path)),
                "data.sources.0.split": (src["dataset_splits"][0],
                                         item_at(text, "dataset_splits", src["dataset_splits"][0], path)),
                "train.optimizer": (src["optimizer_type"], at("optimizer_type")),
                "train.learning_rate": (src["learning_rate"], at("learning_rate")),
                "train.epochs": (src["num_train_epochs"], at("num_train_epochs")),
                "train.lr_scheduler": (src["lr_scheduler_type"], at("lr_scheduler_type")),
                "train.warmup_ratio": (src["warmup_ratio"], at("warmup_ratio")),
                "train.micro_batch_size": (src["per_device_train_batch_size"], at("per_device_train_batch_size")),
                # the global batch: per device x accumulation x the processes of the README's launch config
                "train.global_batch_size": (
                    src["per_device_train_batch_size"] * src["gradient_accumulation_steps"] * gpus,
                    f"{at('per_device_train_batch_size')} x {at('gradient_accumulation_steps')} x {gpus_at}"),
                "train.weight_decay": (0.05, line_of(config_src, r"weight_decay: .*default=0.05", cfg_py)),
                "preference.loss_type": (loss, at("contrast_loss_type"), src["contrast_loss_type"]),
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
                    line_of(run_src, r"^SUMMARIZATION_TEMPLATE =", run_py), "SUBREDDIT: r/{{ subreddit }}")
                row["data.sources.0.subset"] = (src["dataset_configs"][0],
                                                item_at(text, "dataset_configs", src["dataset_configs"][0], path))
                row["data.sources.0.columns.chosen"] = ("summaries[choice].text",
                                                        line_of(run_src, r'example\["chosen"\] = example\["summaries"\]',
                                                                run_py), 'example["summaries"][example["choice"]][\'text\']')
                row["data.sources.0.columns.rejected"] = ("summaries[1-choice].text",
                                                          line_of(run_src, r'example\["rejected"\] = example\["summaries"\]',
                                                                  run_py),
                                                          'example["summaries"][1 - example["choice"]][\'text\']')
            table["recipes"][f"customPOs-{ours}-{loss}"] = entries(row)
    return table


SPPO_RUNS = {  # run script -> pride recipe
    "run_sppo_mistral.sh": "sppo-mistral-7b-instruct",
    "run_sppo_llama-3.sh": "sppo-llama-3-8b-instruct",
    "run_sppo_gemma-2.sh": "sppo-gemma-2-9b-it",
}


def sppo(repo: Path) -> dict:
    """uclaml/SPPO: each run_sppo_*.sh loops scripts/generate.sh (vLLM, K samples), rank.py (PairRM),
    compute_prob.py (pairs) and pipeline.sh (training with recipes/uclaml-sppo/config_full.yaml)."""
    commit = head(repo)
    files = {p: show(repo, commit, p) for p in ("scripts/pipeline.sh", "scripts/generate.sh", "scripts/generate.py",
                                                 "scripts/rank.py", "scripts/compute_prob.py",
                                                 "recipes/uclaml-sppo/config_full.yaml")}
    config = yaml.safe_load(files["recipes/uclaml-sppo/config_full.yaml"])

    def at(path, pattern):
        return line_of(files[path], pattern, path)

    def shell(path, name):  # NAME="value" in a shell script
        return re.search(rf'^{name}="?([^"\n]*)"?$', files[path], re.M).group(1)

    def cfg(key):
        return config[key], at("recipes/uclaml-sppo/config_full.yaml", rf"^{key}:")

    launch_yaml = "recipes/accelerate_configs/deepspeed_zero3.yaml"  # pipeline.sh: accelerate launch --config_file
    assert f"--config_file {launch_yaml}" in files["scripts/pipeline.sh"]
    launch = show(repo, commit, launch_yaml)
    gpus, gpus_at = yaml.safe_load(launch)["num_processes"], line_of(launch, r"^num_processes:", launch_yaml)
    table = {"repository": "uclaml/SPPO", "commit": commit, "recipes": {}}
    for script, ours in SPPO_RUNS.items():
        files[script] = text = show(repo, commit, script)
        iterations = int(re.search(r"^iter_num=(\d+)$", text, re.M).group(1))
        prompt = re.search(r'^\s*PROMPT="(.*)"$', text, re.M).group(1)
        model = re.search(r'^\s*MODEL="(.*)"$', text, re.M).group(1)
        call = re.search(r"scripts/pipeline\.sh (.*)$", text, re.M).group(1)
        flags = dict(re.findall(r"--(\w+) (\S+)", call))
        pipeline = lambda flag, name: (int(flags[flag]), at(script, "scripts/pipeline.sh")) if flag in flags else \
            (int(shell("scripts/pipeline.sh", name)), at("scripts/pipeline.sh", rf"^{name}="))
        row = {
            "model.path": (model, at(script, r'MODEL="[^$]')),
            "online.iterations": (iterations, at(script, r"^iter_num=")),
            "online.prompt_split": ("per_source", at(script, r'PROMPT='), "${i}"),  # iteration i's own prompts
            **{f"data.sources.{i}.path": (prompt.replace("${i}", str(i + 1)), at(script, r'PROMPT='), prompt)
               for i in range(iterations)},
            **{f"data.sources.{i}.split": ("train", at("scripts/generate.py", r'load_dataset\(args\.prompts, split="train"\)'))
               for i in range(iterations)},
            "online.samples_per_prompt": (int(shell("scripts/generate.sh", "PAIRS")), at("scripts/generate.sh", r"^PAIRS=")),
            "online.temperature": (0.7, at("scripts/generate.py", r"temperature=0\.7")),
            "online.top_p": (0.9, at("scripts/generate.py", r"top_p=0\.9")),
            "online.max_new_tokens": (int(re.search(r"--maxlen (\d+)", files["scripts/generate.sh"]).group(1)),
                                      at("scripts/generate.sh", r"--maxlen \d+")),
            "online.judge.type": ("pairrm", at("scripts/rank.py", r'loadranker\("llm-blender/PairRM"\)'), "llm-blender/PairRM"),
            # argmax / argmin over the scores even when all are equal: no prompt is dropped for a tie
            "online.keep_ties": (True, at("scripts/compute_prob.py", r"maxmin = metrics\.apply\(lambda x: \[x\.argmax\(\), x\.argmin\(\)\]\)"),
                                 "[x.argmax(), x.argmin()]"),
            "online.judge.prompt_format": ("chat_template", at("scripts/rank.py", r"apply_template\(data\[idx\]"),
                                           "apply_template("),
            "online.pairs": ("sppo", at("scripts/compute_prob.py", r"maxmin = .*argmax\(\), x\.argmin\(\)"),
                             "[x.argmax(), x.argmin()]"),
            "preference.loss_type": (shell("scripts/pipeline.sh", "LOSS_TYPE"), at("scripts/pipeline.sh", r"^LOSS_TYPE=")),
            "preference.beta": (float(shell("scripts/pipeline.sh", "BETA")), at("scripts/pipeline.sh", r"^BETA=")),
            "preference.max_length": cfg("max_length"),
            "preference.max_prompt_length": cfg("max_prompt_length"),
            "train.learning_rate": (float(shell("scripts/pipeline.sh", "LEARNING_RATE")),
                                    at("scripts/pipeline.sh", r"^LEARNING_RATE=")),
            "train.optimizer": (shell("scripts/pipeline.sh", "OPTIM"), at("scripts/pipeline.sh", r"^OPTIM=")),
            "train.micro_batch_size": pipeline("batch_size", "BATCH_SIZE"),
            # the global batch: per device x accumulation x the processes of pipeline.sh's launch config
            "train.global_batch_size": (
                pipeline("batch_size", "BATCH_SIZE")[0] * pipeline("accumulate", "ACCUMULATE")[0] * gpus,
                f"{pipeline('batch_size', 'BATCH_SIZE')[1]} x {pipeline('accumulate', 'ACCUMULATE')[1]} x {gpus_at}"),
            "train.epochs": (float(flags["num"]), at(script, "scripts/pipeline.sh")),
            "train.lr_scheduler": cfg("lr_scheduler_type"),
            "train.warmup_ratio": cfg("warmup_ratio"),
            "model.dtype": ("bf16" if config["bf16"] else "fp32", at("recipes/uclaml-sppo/config_full.yaml", r"^bf16:")),
            "model.gradient_checkpointing": cfg("gradient_checkpointing"),
            "seed": cfg("seed"),
        }
        table["recipes"][ours] = entries({f"sppo:{k}": v for k, v in row.items()})
    return table


def hf_config(repo: Path, commit: str, path: str):
    """(values, at(key) -> "path:line") of a HF-style YAML config."""
    text = show(repo, commit, path)
    return yaml.safe_load(text), lambda key: line_of(text, rf"^\s*{re.escape(key)}:", path)


def simpo(repo: Path) -> dict:
    """princeton-nlp/SimPO training_configs/llama-3-8b-instruct-simpo.yaml; pride's gamma is their
    gamma_beta_ratio x beta (simpo_trainer.py: -logsigmoid(beta * (pi_logratios - gamma_beta_ratio)))."""
    commit = head(repo)
    src, at = hf_config(repo, commit, "training_configs/llama-3-8b-instruct-simpo.yaml")
    trainer = show(repo, commit, "scripts/simpo_trainer.py")
    config_yaml = "training_configs/llama-3-8b-instruct-simpo.yaml"
    config_text = show(repo, commit, config_yaml)

    def split_at(value):  # the list item under dataset_splits:, not the key's line
        first = int(at("dataset_splits").rsplit(":", 1)[1])
        after = line_of("\n".join(config_text.splitlines()[first:]), rf"^- {re.escape(value)}$", config_yaml)
        return f"{config_yaml}:{first + int(after.rsplit(':', 1)[1])}"

    launch_yaml = "accelerate_configs/deepspeed_zero3.yaml"  # README.md's training command uses it
    gpus = yaml.safe_load(show(repo, commit, launch_yaml))["num_processes"]
    (dataset,) = src["dataset_mixer"]
    row = {
        "model.path": (src["model_name_or_path"], at("model_name_or_path")),
        "model.dtype": ("bf16", at("bf16")),
        "model.gradient_checkpointing": (src["gradient_checkpointing"], at("gradient_checkpointing")),
        "data.sources.0.path": (dataset, at(dataset)),
        "data.sources.0.split": (src["dataset_splits"][0], split_at(src["dataset_splits"][0])),
        "data.eval_sources.0.path": (dataset, at(dataset)),
        "data.eval_sources.0.split": (src["dataset_splits"][1], split_at(src["dataset_splits"][1])),
        "preference.loss_type": ("simpo", line_of(trainer, r"logits = pi_logratios - self\.gamma_beta_ratio",
                                                  "scripts/simpo_trainer.py"), "pi_logratios - self.gamma_beta_ratio"),
        "preference.beta": (src["beta"], at("beta")),
        "preference.gamma": (src["gamma_beta_ratio"] * src["beta"], f"{at('gamma_beta_ratio')} x {at('beta')}"),
        "preference.max_length": (src["max_length"], at("max_length")),
        "preference.max_prompt_length": (src["max_prompt_length"], at("max_prompt_length")),
        "train.learning_rate": (src["learning_rate"], at("learning_rate")),
        "train.lr_scheduler": (src["lr_scheduler_type"], at("lr_scheduler_type")),
        "train.warmup_ratio": (src["warmup_ratio"], at("warmup_ratio")),
        "train.epochs": (float(src["num_train_epochs"]), at("num_train_epochs")),
        "train.optimizer": ("adamw", at("optim")),
        "train.micro_batch_size": (src["per_device_train_batch_size"], at("per_device_train_batch_size")),
        # the global batch: per device x accumulation x the 4 processes of the README's launch config
        "train.global_batch_size": (
            src["per_device_train_batch_size"] * src["gradient_accumulation_steps"] * gpus,
            f"{at('per_device_train_batch_size')} x {at('gradient_accumulation_steps')} x {launch_yaml}:"
            f"{line_of(show(repo, commit, launch_yaml), r'^num_processes:', launch_yaml).rsplit(':', 1)[1]}"),
        "train.report_to": (src["report_to"], item_at(config_text, "report_to", src["report_to"][0], config_yaml)),
        # the answer is rendered as its own assistant message: the header is part of the completion
        "preference.header_in_completion": (True, line_of(show(repo, commit, "scripts/run_simpo.py"),
                                                          r'example\["text_chosen"\] = tokenizer\.apply_chat_template'
                                                          r'\(chosen_messages', "scripts/run_simpo.py"),
                                            "apply_chat_template(chosen_messages"),
        "train.eval_strategy": (src["evaluation_strategy"], at("evaluation_strategy")),
        "train.eval_steps": (src["eval_steps"], at("eval_steps")),
        "train.save_strategy": (src["save_strategy"], at("save_strategy")),
        "train.save_steps": (src["save_steps"], at("save_steps")),
        "train.save_total_limit": (src["save_total_limit"], at("save_total_limit")),
        "seed": (src["seed"], at("seed")),
    }
    return {"repository": "princeton-nlp/SimPO", "commit": commit,
            "recipes": {"simpo-llama-3-8b-instruct": entries({f"simpo:{k}": v for k, v in row.items()})}}


def llm_dpo(readme: Path) -> dict:
    """LuJunru/LLM_DPO's README (its hyperparameter list; the scripts were not reachable from here).
    Per node: 8 GPUs x micro-batch 1 x accumulation 16 = 128, so the global batch is 128 x nodes."""
    text, path = readme.read_text(), "README.md"

    def at(pattern):
        return line_of(text, pattern, path)

    common = {
        "model.path": ("allenai/tulu-2-13b", at(r"fine-tune \[tulu2-13b\]")),
        # not stated: bf16 is the precision A800s train 13B models in (flash-attention 2 needs 16-bit)
        "model.dtype": ("bf16", at(r"8 x A800 80G GPUs"), "8 x A800 80G GPUs"),
        "data.sources.0.path": ("HuggingFaceH4/ultrafeedback_binarized", at(r"61k \[ultrafeedback\]")),
        "preference.loss_type": ("sigmoid", at(r"sigmoid at \$2 stands for dpo loss")),
        "preference.beta": (float(re.search(r"^- dpo beta: ([\d.]+)", text, re.M).group(1)), at(r"^- dpo beta:")),
        "preference.max_length": (int(re.search(r"^- max_length: (\d+)", text, re.M).group(1)), at(r"^- max_length:")),
        "train.learning_rate": (1e-6, at(r"^- learning_rate: 1e-06 \* sqrt\(Num_of_Nodes\)")),
        "train.lr_scaling": ("sqrt_nodes", at(r"^- learning_rate: .*sqrt\(Num_of_Nodes\)"), "sqrt(Num_of_Nodes)"),
        # 128 a node over its 8 GPUs: the split into micro-batch x accumulation is not stated
        "train.micro_batch_size": (1, at(r"^- total_train_batch_size: 128 \* Num_of_Nodes"),
                                   "total_train_batch_size: 128"),
        "train.gradient_accumulation_steps": (16, at(r"^- total_train_batch_size: 128 \* Num_of_Nodes"),
                                              "total_train_batch_size: 128"),
        "train.optimizer": ("adamw", at(r"^- optimizer: AdamW with default values"), "AdamW"),
        "train.adam_beta1": (0.9, at(r"^- optimizer: AdamW with default values"), "AdamW with default values"),
        "train.adam_beta2": (0.999, at(r"^- optimizer: AdamW with default values"), "AdamW with default values"),
        "train.lr_scheduler": ("linear", at(r"^- lr_scheduler_type: linear")),
        "train.warmup_ratio": (0.1, at(r"^- lr_scheduler_warmup_ratio: 0\.1")),
        "train.weight_decay": (0.0, at(r"^- Weight Decay: 0\.0")),
        "train.epochs": (3.0, at(r"^- num_epochs: 3\.0")),
    }
    return {"repository": "LuJunru/LLM_DPO", "commit": "README.md as stored by the code index (no commit given)",
            "recipes": {
                "llm_dpo-tulu2-13b": entries({f"dpo:{k}": v for k, v in {
                    **common, "model.chat_template": ("tulu2", at(r"Tulu2 input format"))}.items()}),
                "llm_dpo-tulu2-13b-raw": entries({f"dpo:{k}": v for k, v in {
                    **common, "model.chat_template": ("raw", at(r"fine-tune with raw ultrafeedback data"))}.items()}),
            }}


LION_RUNS = {  # pride recipe -> (config dir, config stems, example dir, mask_embed_grad hook file)
    "lion-gemma-2b": ("configs/gemma-2b", ("sft/LION-Gemma-2b-sft-v1.0", "dpo/LION-Gemma-2b-dpo-v1.0",
                                           "odpo/LION-Gemma-2b-odpo-v1.0"), "examples/gemma",
                      "lionalign/fastmodels/gemma/embed_grad_mask.py"),
    "lion-llama-3-8b": ("configs/llama-3-8b", ("sft/LION-LLaMA-3-8b-sft-v1.0", "dpo/LION-LLAMA-3-8b-dpo-v1.0",
                                               "odpo/LION-LLaMA-3-8b-odpo-v1.0"), "examples/llama-3",
                        "lionalign/fastmodels/llama/embed_grad_mask.py"),
}


def lion(repo: Path) -> dict:
    """Columbia-NLP-Lab/LionAlignment: configs/<model>/{sft,dpo,odpo}/*.yaml, the odpo data step of
    examples/<model>/odpo.sh (scripts/gen_preference_pairs.py) and its training mixer."""
    commit = head(repo)
    gen_py = "scripts/gen_preference_pairs.py"
    gen = show(repo, commit, gen_py)
    table = {"repository": "Columbia-NLP-Lab/LionAlignment", "commit": commit, "recipes": {}}
    for ours, (cdir, stems, edir, hook_py) in LION_RUNS.items():
        row: dict = {}
        hook = show(repo, commit, hook_py)
        odpo_sh = f"{edir}/odpo.sh"
        script = show(repo, commit, odpo_sh)
        for stage, stem in zip(("sft", "dpo", "odpo"), stems):
            path = f"{cdir}/{stem}.yaml"
            src, at = hf_config(repo, commit, path)

            def put(key, value, where, *stated_as):
                row[f"{stage}:{key}"] = (value, where, *stated_as)

            put("seed", src["seed"], at("seed"))
            put("model.dtype", {"bfloat16": "bf16"}[src["torch_dtype"]], at("torch_dtype"), src["torch_dtype"])
            put("train.learning_rate", float(src["learning_rate"]), at("learning_rate"))
            put("train.lr_scheduler", src["lr_scheduler_type"], at("lr_scheduler_type"))
            put("train.warmup_ratio", src["warmup_ratio"], at("warmup_ratio"))
            put("train.epochs", float(src["num_train_epochs"]), at("num_train_epochs"))
            put("train.micro_batch_size", src["per_device_train_batch_size"], at("per_device_train_batch_size"))
            # the global batch, not the accumulation: per device x accumulation x the GPUs the stage's
            # script launches (its last NUM_GPUS= before the training command), so any GPU count reproduces it
            launcher = f"{edir}/{stage}.sh"
            sh = show(repo, commit, launcher)
            train_at = sh.index(f"scripts/run_{'sft' if stage == 'sft' else 'precompute_dpo'}.py")
            gpus = re.findall(r"^NUM_GPUS=(\d+)", sh[:train_at], re.M)[-1]
            gpus_line = sh[:train_at].count("\n", 0, sh[:train_at].rindex(f"NUM_GPUS={gpus}")) + 1
            put("train.global_batch_size",
                src["per_device_train_batch_size"] * src["gradient_accumulation_steps"] * int(gpus),
                f"{at('per_device_train_batch_size')} x {at('gradient_accumulation_steps')} x {launcher}:{gpus_line}")
            (reporter,) = src["report_to"]
            put("train.report_to", [r for r in src["report_to"] if r != "none"],
                item_at(show(repo, commit, path), "report_to", reporter, path), *(["none"] if reporter == "none" else []))
            if "gradient_checkpointing" in src:
                put("model.gradient_checkpointing", src["gradient_checkpointing"], at("gradient_checkpointing"))
            if src.get("wandb_project"):
                put("train.wandb_project", src["wandb_project"], at("wandb_project"))
            if stage == "sft":
                put("model.path", src["model_name_or_path"], at("model_name_or_path"))
                put("model.tokenizer", src["tokenizer_name_or_path"], at("tokenizer_name_or_path"))
                assert src["assistant_bos"] == "<|im_start|>assistant\n", path
                put("model.chat_template", "chatml", at("assistant_bos"), "<|im_start|>assistant")
                put("data.train_on", "all_assistant" if src["mask_user_labels"] else "all", at("mask_user_labels"),
                    f"mask_user_labels: {str(src['mask_user_labels']).lower()}")
                for i, (name, frac) in enumerate(src["train_dataset_mixer"].items()):
                    put(f"data.sources.{i}.path", name, at(name))
                    put(f"data.sources.{i}.fraction", float(frac), at(name))
                    put(f"data.sources.{i}.split", src["train_dataset_splits"], at("train_dataset_splits"))
                put("train.max_length", src["max_seq_length"], at("max_seq_length"))
                proc_py = "lionalign/data/sft_data_processor.py"  # run_sft.py's data_processor
                put("train.packing", "split", line_of(show(repo, commit, proc_py),
                                                      r"dataset\.map\(self\.batch_split_long_data", proc_py),
                    "batch_split_long_data")
                put("train.save_steps", src["save_steps"], at("save_steps"))
                put("train.save_total_limit", src["save_total_limit"], at("save_total_limit"))
                if src["mask_embed_grad"]:
                    cut = int(re.search(r"cutoff=(\d+)", hook).group(1))
                    keep = [cut, None] if "grad[:cutoff] = 0" in hook else [0, cut]
                    put("train.mask_embed_grad", keep, f"{line_of(hook, r'cutoff=[0-9]+', hook_py)}; "
                                                       f"{line_of(hook, r'grad.*cutoff.* = 0', hook_py)}")
                continue
            put("preference.loss_type", "sigmoid", "lionalign/trainer/dpo_config.py:49")
            put("preference.beta", src["beta"], at("beta"))
            put("preference.max_length", src["max_length"], at("max_length"))
            put("preference.max_prompt_length", src["max_prompt_length"], at("max_prompt_length"))
            if src.get("mask_embed_grad") is False:
                put("train.mask_embed_grad", None, at("mask_embed_grad"), "mask_embed_grad: false")
            elif "mask_embed_grad" not in src:  # DPOConfig's default (True): run_precompute_dpo.py masks then
                default_py = "lionalign/trainer/dpo_config.py"
                assert re.search(r"mask_embed_grad: Optional\[bool\] = True", show(repo, commit, default_py))
                cut = int(re.search(r"cutoff=(\d+)", hook).group(1))
                put("train.mask_embed_grad", [cut, None] if "grad[:cutoff] = 0" in hook else [0, cut],
                    f"{line_of(show(repo, commit, default_py), r'mask_embed_grad: Optional.bool. = True', default_py)}; "
                    f"{line_of(hook, r'cutoff=[0-9]+', hook_py)}; {line_of(hook, r'grad.*cutoff.* = 0', hook_py)}")
            if stage == "dpo":
                put("train.save_strategy", src["save_strategy"], at("save_strategy"))
                if src["save_strategy"] == "steps":
                    put("train.save_steps", src["save_steps"], at("save_steps"))
                put("train.save_total_limit", src["save_total_limit"], at("save_total_limit"))
                splits = src["train_dataset_splits"]
                for i, (name, frac) in enumerate(src["train_dataset_mixer"].items()):
                    put(f"data.sources.{i}.path", name, at(name))
                    put(f"data.sources.{i}.fraction", float(frac), at(name))
                    put(f"data.sources.{i}.split", splits[name], line_of(show(repo, commit, path),
                                                                         rf"^\s+{re.escape(name)}: \"", path))
                if src.get("wandb_group"):
                    put("train.wandb_group", src["wandb_group"], at("wandb_group"))
                continue
            # odpo: prompts, sampling and judging as gen_preference_pairs.py runs in odpo.sh
            def arg(name):
                return re.search(rf"--{name}=(\S+?)\s*\\?$", script, re.M).group(1).strip("'")

            put("train.eval_strategy", arg("evaluation_strategy"), line_of(script, "--evaluation_strategy=", odpo_sh))
            assert arg("save_strategy") == "no", odpo_sh  # the command line overrides the config's "epoch"
            put("train.save_steps", None, line_of(script, "--save_strategy=", odpo_sh), "--save_strategy=no")
            put("data.sources.0.path", arg("prompt_dataset"), line_of(script, "--prompt_dataset=", odpo_sh))
            put("data.sources.0.split", arg("prompt_dataset_split"), line_of(script, "--prompt_dataset_split=", odpo_sh))
            put("online.samples_per_prompt", int(arg("n_to_rank")), line_of(script, "--n_to_rank=", odpo_sh))
            put("online.temperature", float(arg("gen_temperature")), line_of(script, "--gen_temperature=", odpo_sh))
            put("online.max_new_tokens", int(re.search(r"default=(\d+), metadata=\{\"help\": \"The max tokens",
                                                        gen).group(1)),
                line_of(gen, r"default=\d+, metadata=\{\"help\": \"The max tokens for generation", gen_py))
            put("online.judge.type", "pairrm", line_of(gen, r'loadranker\("llm-blender/PairRM"', gen_py), "llm-blender/PairRM")
            put("online.judge.prompt_format", "role_lines", line_of(gen, r"prompt_text = _format_single_chat", gen_py),
                "_format_single_chat")
            put("online.judge.batch_size", int(arg("judge_batch_size")), line_of(script, "--judge_batch_size=", odpo_sh))
            put("online.pairs", "best_worst", line_of(gen, r"worst_answer_idx = rank\.index\(max_rank\)", gen_py),
                "worst_answer_idx = rank.index(max_rank)")
            put("online.iterations", 1, line_of(script, r"^scripts/gen_preference_pairs\.py", odpo_sh),  # its one run
                "scripts/gen_preference_pairs.py")
            put("data.eval_sources.0.path", "Columbia-NLP/DPO-UltraFeedback_binarized",
                line_of(script, "--eval_dataset_splits=", odpo_sh))
            put("data.eval_sources.0.split", "test_prefs", line_of(script, "--eval_dataset_splits=", odpo_sh))
            put("train.wandb_group", arg("wandb_group"), line_of(script, "--wandb_group=", odpo_sh))
            mixer = re.search(r"TRAIN_MIXER=\$\(cat << EOM\n(.*?)\nEOM", script, re.S)
            if mixer:  # Gemma: DPO-Nectar 0.3 + the generated pairs 0.1
                fractions = json.loads(mixer.group(1))
                (offline,) = [k for k in fractions if not k.startswith("data/")]
                (online,) = [k for k in fractions if k.startswith("data/")]
                start = line_of(script, r"^TRAIN_MIXER=", odpo_sh)  # the lines of the mixer's JSON, not its first

                def in_mixer(key):
                    n = int(start.rsplit(":", 1)[1])
                    after = line_of("\n".join(script.splitlines()[n:]), re.escape(f'"{key}":'), odpo_sh)
                    return f"{odpo_sh}:{n + int(after.rsplit(':', 1)[1])}"

                put("online.mix_offline.path", offline, in_mixer(offline))
                put("online.mix_offline.split", "train", line_of(script, r'"Columbia-NLP/DPO-Nectar": "train"', odpo_sh))
                put("online.mix_offline.fraction", fractions[offline], in_mixer(offline))
                put("online.pair_fraction", fractions[online], in_mixer(online))
            else:
                put("online.mix_offline", None, line_of(script, "--train_dataset_mixer=", odpo_sh), "--train_dataset_mixer=")
                put("online.pair_fraction", 1.0, line_of(script, "--train_dataset_mixer=", odpo_sh))
        table["recipes"][ours] = entries(row)
    return table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--custompos", type=Path)
    ap.add_argument("--sppo", type=Path)
    ap.add_argument("--lion", type=Path)
    ap.add_argument("--simpo", type=Path)
    ap.add_argument("--llm-dpo-readme", type=Path)
    args = ap.parse_args()
    makers = {"customPOs": (args.custompos, custompos), "SPPO": (args.sppo, sppo), "LION": (args.lion, lion),
              "SimPO": (args.simpo, simpo), "LLM_DPO": (args.llm_dpo_readme, llm_dpo)}
    for name, (where, make) in makers.items():
        if where is None:
            continue
        table = make(where)
        if name == "LLM_DPO":
            add_cited(table, lambda path, text=where.read_text(): text)
        else:
            add_cited(table, lambda path, repo=where, commit=table["commit"]: show(repo, commit, path))
        out = OUT_DIR / f"{name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(table, indent=1) + "\n")
        print(f"wrote {out}: {len(table['recipes'])} recipes at {table['commit']}")


if __name__ == "__main__":
    main()
