"""Typed run configuration: one YAML file, `section.key=value` overrides, one-line errors.

Every stage reads the same `Config`; a section a stage does not use keeps its defaults.
Validation errors name the key, the file and what is allowed, so a typo never becomes a
silently ignored setting (pydantic models forbid unknown keys).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pride.errors import PrideError
from pride.losses import LOSS_TYPES, PG_LOSS_TYPES, UNPAIRED_LOSSES


INPUT = {"input": True}  # json_schema_extra of a setting that names a local file or directory a stage reads


def input_paths(section: BaseModel | None) -> list[str]:
    """Every file or directory the settings name as an input (fields marked INPUT), in any
    section, list or nesting: what a stage's identity hashes. A new path setting marked INPUT is
    covered without another list to keep (tests/test_config.py checks none is left unmarked)."""
    if section is None:
        return []
    found: list[str] = []
    for name, field in type(section).model_fields.items():
        value = getattr(section, name)
        if field.json_schema_extra == INPUT:
            found += [value] if isinstance(value, str) else [v for v in value or [] if isinstance(v, str)]
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, BaseModel):
                found += input_paths(item)
    return found


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, v, info):
        """`seed: true` is not seed 1: a boolean where a number is expected is an error (pydantic
        alone would take it as 1 or 0)."""
        if isinstance(v, bool):
            annotation = cls.model_fields[info.field_name].annotation
            if annotation in (int, float) or set(getattr(annotation, "__args__", ())) & {int, float} and bool not in \
                    getattr(annotation, "__args__", ()):
                raise ValueError("expected a number, not a boolean")
        return v


class LoraSettings(Section):
    """LoRA through peft; `load_in_4bit` on the model section turns it into QLoRA."""

    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"


class ModelSettings(Section):
    path: str = Field(min_length=1, description="local HF model directory, hub id (when online), or tiny:<arch>",
                      json_schema_extra=INPUT)
    revision: str | None = None
    tokenizer: str | None = Field(None, description="tokenizer directory or hub id when not the model's own (LIONs' "
                                                     "tokenizer_name_or_path); saved with the trained model",
                                  json_schema_extra=INPUT)
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2", "flex_attention"] = "auto"
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    chat_template: str | None = Field(
        None, description="built-in template name; default: the tokenizer's own, else chatml"
    )
    lora: LoraSettings | None = None
    load_in_4bit: bool = False
    tiny: dict[str, Any] = Field(
        default_factory=dict, description="size overrides for tiny:<arch> (hidden_size, ...)"
    )


class SourceSettings(Section):
    path: str = Field(description="jsonl/json/parquet file, saved dataset dir, or hub id", json_schema_extra=INPUT)
    split: str = "train"
    subset: str | None = None
    fraction: float = Field(1.0, gt=0, le=1, description="share of this source's rows to use")
    columns: dict[str, str] = Field(
        default_factory=dict, description="pride field -> column name in this source"
    )


class DataSettings(Section):
    sources: list[SourceSettings] = Field(min_length=1)
    eval_sources: list[SourceSettings] = Field(default_factory=list)
    eval_fraction: float = Field(0.0, ge=0, lt=1, description="held out from sources if no eval_sources")
    dedup: bool = False
    shuffle: bool = True
    on_bad_row: Literal["error", "skip"] = "error"
    train_on: Literal["all_assistant", "last_assistant", "all"] = "all_assistant"
    max_rows: int | None = Field(None, gt=0)


class TrainSettings(Section):
    learning_rate: float = Field(2e-5, gt=0)
    optimizer: Literal["adamw", "rmsprop"] = "adamw"
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="overrides epochs when set")
    micro_batch_size: int = Field(8, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    global_batch_size: int | None = Field(
        None, gt=0, description="micro-batches x processes x accumulation per optimizer step; when set, the "
                                "accumulation is derived from it and the launch's process count (the same "
                                "optimisation on 1, 2, 4 or 8 GPUs)")
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_grad_norm: float | None = Field(1.0, gt=0)
    precision: Literal["mixed", "pure"] = Field(
        "mixed", description="mixed: trainable weights and optimizer state in fp32, compute in model.dtype under "
        "autocast; pure: train in model.dtype (bf16/fp16 updates smaller than a weight's resolution are lost)")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="autocast dtype; auto: model.dtype when it is bf16/fp16 (precision=mixed), else none")
    max_length: int = Field(2048, gt=1, description="tokens per sample (and per packed row)")
    truncation: Literal["truncate", "drop"] = "truncate"
    packing: bool | Literal["split"] = Field(
        True, description="true: best-fit-decreasing rows of whole samples; split: the samples in order cut into "
        "full rows, a sample cut at a row's end going on in the next (LionAlignment's SFT); false: a sample a row")
    logging_steps: int = Field(1, gt=0)
    eval_steps: int | None = Field(None, gt=0)
    eval_strategy: Literal["steps", "epoch"] = Field("steps", description="epoch: evaluate at the end of each "
                                                                        "epoch (HF's evaluation_strategy)")
    save_steps: int | None = Field(None, gt=0)
    save_strategy: Literal["steps", "epoch"] = Field("steps", description="epoch: a checkpoint at the end of each "
                                                                        "epoch but the last (HF's save_strategy)")
    save_total_limit: int = Field(2, gt=0)
    resume: str = Field("auto", description="auto (refuses a checkpoint trained with other settings) | force | "
                                            "never | path to a checkpoint dir")
    on_nan: Literal["stop", "skip"] = "stop"
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "trackio"]] = Field(
        default_factory=list, description="experiment trackers (accelerate's); their files go to the run directory "
                                          "(tensorboard) or the tracker's own place (wandb; mlflow: MLFLOW_TRACKING_URI, else "
                                          "its default, ./mlflow.db in mlflow 3; trackio: TRACKIO_DIR)")
    wandb_project: str = "pride"
    wandb_group: str | None = Field(None, description="wandb run group (LIONs: one group per model's stages)")
    lr_scaling: Literal["none", "sqrt_nodes"] = Field(
        "none", description="sqrt_nodes: learning_rate x sqrt(number of nodes at launch) (LLM_DPO's scripts); the "
                            "global batch grows with the nodes by itself (per-device batch x accumulation x GPUs)")
    mask_embed_grad: list[int | None] | None = Field(
        None, min_length=2, max_length=2, description="[start, end): only these rows of the input embeddings (and an "
        "untied LM head) get gradients, the rest of the model trains as usual (LIONs' mask_embed_grad: Llama-3 "
        "[128000, null], Gemma [0, 110]; the rows of tokens a chat template added: [old vocab size, null])")
    logps_chunk_size: int = Field(256, gt=0, description="label positions per LM-head chunk (fp32 logits: chunk x vocab)")

    @field_validator("mask_embed_grad")
    @classmethod
    def _rows_in_order(cls, v):
        if v is not None:
            start, end = v
            if start is None or start < 0 or (end is not None and end <= start):
                raise ValueError(f"needs [start, end) with 0 <= start < end (end may be null), got {v}")
        return v


LossType = Literal[LOSS_TYPES]  # the table in pride.losses


class PreferenceSettings(Section):
    """The DPO family (offline `pride dpo`, and each online / SPPO round)."""

    loss_type: LossType = "sigmoid"
    beta: float = Field(0.1, gt=0, description="SPPO: eta = 1/beta")
    gamma: float = Field(0.0, description="margin: dpo_gamma, simpo")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="cDPO (sigmoid), robust")
    delta: float = Field(1.0, description="margin of slic_dpo")
    nll_weight: float = Field(0.0, ge=0, description="weight of an NLL term on the chosen completion (RPO)")
    max_length: int = Field(1024, gt=1, description="prompt + completion tokens per sequence")
    max_prompt_length: int = Field(512, gt=0, description="prompts keep their end (and BOS)")
    reference: Literal["precomputed", "live"] = "precomputed"
    keep_identical: bool = Field(False, description="train on pairs whose chosen and rejected tokens are equal "
                                                    "(SPPO's loss pulls both toward their target); default: skip")
    header_in_completion: bool = Field(False, description="the assistant header belongs to each completion: scored "
                                                          "and counted in length normalisation (SimPO's run_simpo.py); "
                                                          "default: it ends the prompt")
    reference_model: str | None = Field(None, description="default: the starting policy", json_schema_extra=INPUT)
    reference_batch_size: int = Field(16, gt=0, description="pairs per forward when precomputing")
    padding_free: bool = Field(True, description="pack a micro-batch's sequences into rows (no padding)")
    share_prompt: bool = Field(True, description="compute each pair's prompt once ([prompt, chosen, rejected] with "
                                                 "a block mask); sdpa/eager only, else prompts run twice (logged)")
    disable_dropout: bool = Field(True, description="no dropout in the policy (the reference is computed without; "
                                                    "TRL's default)")


class KtoSettings(Section):
    """`pride kto`: unpaired feedback (TRL's KTOConfig). Lengths, the reference model and its pass are
    `preference`'s. The KL estimate of `kto` is formed over each optimizer step's rows on all
    processes (`train.global_batch_size`), where TRL forms it per device."""

    loss_type: Literal[UNPAIRED_LOSSES] = Field("kto", description="kto: KTO with the KL reference point; "
                                                                  "apo_zero_unpaired: APO-zero, no KL term")
    beta: float = Field(0.1, gt=0)
    desirable_weight: float = Field(1.0, gt=0, description="weight of a desirable row's loss (TRL's)")
    undesirable_weight: float = Field(1.0, gt=0, description="weight of an undesirable row's loss (TRL's)")


class RewardSettings(Section):
    """`pride rm`: a reward model on preference pairs (TRL's RewardTrainer: Bradley-Terry)."""

    max_length: int = Field(1024, gt=0, description="tokens per conversation (prompt and answer, chat template "
                                                    "applied); saved as the tokenizer's model_max_length, so a judge "
                                                    "cuts as training did")
    truncation_side: Literal["left", "right"] = Field(
        "left", description="where a longer conversation is cut: left keeps its end (the answer, whose last token "
                            "is scored); saved with the tokenizer")
    center_rewards_coefficient: float | None = Field(
        None, ge=0, description="adds c * (r_chosen + r_rejected)^2 to keep rewards centred on 0 (TRL's option; "
                                "0.01 in its docs)")


class JudgeSettings(Section):
    """Who ranks the samples: a Python function, a reward model, PairRM, or an LLM endpoint."""

    type: Literal["function", "reward_model", "pairrm", "llm"] = "function"
    function: str | None = Field(None, description="module:function(prompt, response) -> float")
    path: str | None = Field(None, description="reward model or PairRM-hf directory", json_schema_extra=INPUT)
    url: str | list[str] | None = Field(None, description="OpenAI-compatible base URL of the llm judge, or a list "
                                                          "of them (prompts spread over them)")
    model: str | None = Field(None, description="model name at that endpoint")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key")
    concurrency: int = Field(16, gt=0, description="llm judge: requests in flight per process (every ordered pair "
                                                   "of every prompt of a batch_size batch is one request)")
    batch_size: int = Field(16, gt=0)
    max_length: int | None = Field(None, gt=0, description="tokens per judged input (reward model); default: "
                                                           "the model's own (what `pride rm` trained with), else 2048")
    prompt_format: Literal["user_text", "chat_template", "role_lines"] = Field(
        "user_text", description="the prompt PairRM is shown: the user turn(s) as text; chat_template (SPPO's rank.py): "
                                 "the policy's chat template rendered up to the answer; role_lines (LIONs' "
                                 "gen_preference_pairs.py): a 'role: content' line per turn")


class GrpoSettings(Section):
    """`online.objective: grpo | rloo`: every sample trained, weighted by its advantage over its prompt's
    group (TRL's GRPOTrainer / RLOOTrainer names and defaults)."""

    loss_type: Literal[PG_LOSS_TYPES] = Field("dapo", description="grpo: how the per-token losses are normalised "
                                              "(TRL's loss_type); rloo has its own sequence-level loss")
    scale_rewards: Literal["group", "batch", "none"] | None = Field(
        None, description="advantages divided by the std of the group (grpo's default), of the round's batch, or "
                          "not (Dr. GRPO; rloo's default: batch is RLOOTrainer's normalize_advantages)")
    epsilon: float = Field(0.2, gt=0, description="clip range below 1 (and above, unless epsilon_high)")
    epsilon_high: float | None = Field(None, gt=0, description="clip range above 1 (DAPO's clip-higher: 0.28; "
                                                               "cispo: the weight's cap, 5.0 in ScaleRL)")
    delta: float | None = Field(None, gt=1, description="two-sided clipping: the ratio capped at delta (INTELLECT-2)")
    beta: float = Field(0.0, ge=0, description="KL to the reference (grpo: k3 per token in the loss; rloo: "
                                               "old - ref summed, in the reward); reference as in DPO")
    importance_sampling_level: Literal["token", "sequence"] = Field(
        "token", description="sequence: one ratio per completion, its tokens' mean (GSPO)")
    drop_flat_groups: bool = Field(False, description="train without prompts whose K scores are all equal (no "
                                                      "signal; DAPO's dynamic sampling); always counted")
    mask_truncated_completions: bool = Field(False, description="completions cut at online.max_new_tokens add no "
                                                                "loss (DAPO); always counted")
    sapo_temperature_pos: float = Field(1.0, gt=0, description="sapo: the gate's temperature where A > 0")
    sapo_temperature_neg: float = Field(1.05, gt=0, description="sapo: where A <= 0")
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0

    @field_validator("loss_type", mode="before")
    @classmethod
    def _not_a_pairwise_loss(cls, v):
        if v in LOSS_TYPES:
            raise ValueError(f"{v!r} is a DPO-family loss (preference.loss_type, for online.objective dpo or sppo); "
                             f"the GRPO family's are {', '.join(PG_LOSS_TYPES)}")
        return v

    @model_validator(mode="after")
    def _sequence_level_for_luspo(self):
        if self.loss_type == "luspo" and self.importance_sampling_level != "sequence":
            raise ValueError("online.grpo.loss_type=luspo scales GSPO's sequence ratio: it needs "
                             "online.grpo.importance_sampling_level=sequence")
        return self


class OnlineSettings(Section):
    """Online DPO (LIONs: K samples, best vs worst) and SPPO self-play iterations."""

    objective: Literal["dpo", "sppo", "grpo", "rloo", "kto"] = Field(
        "dpo", description="dpo: best vs worst, any preference.loss_type; sppo: SPPO's win probabilities "
                           "(online.pairs=sppo); grpo, rloo: every sample by its advantage (online.grpo); kto: "
                           "samples above their group's mean score desirable, below undesirable (the kto section)")

    iterations: int = Field(2, gt=0)
    samples_per_prompt: int = Field(5, ge=2, description="K")
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(256, gt=0)
    sampler: Literal["auto", "vllm", "transformers", "openai", "server"] = Field(
        "auto", description="auto: vllm on a GPU with vLLM installed, else transformers (pride's engine in process); "
                            "server: a generation server on each round's model (per node); openai: running servers "
                            "(sampler_url), told to load each round's model")
    tensor_parallel_size: int = Field(1, gt=0, description="GPUs one vLLM sampler shards the model over "
                                                           "(vLLM's tensor_parallel_size)")
    server: Literal["auto", "vllm", "sglang", "pride"] = Field(
        "auto", description="sampler=server: which server (auto: vLLM or sglang when installed on a GPU, else "
                            "pride serve)")
    server_args: list[str] = Field(default_factory=list, description="sampler=server: extra flags for the server "
                                                                     "(e.g. [--data-parallel-size, '8'])")
    sampler_url: str | list[str] | None = Field(None, description="sampler=openai: OpenAI-compatible base URL, or a "
                                                                  "list of them (prompts spread over them)")
    sampler_model: str | None = None
    sampler_api_key_env: str = "OPENAI_API_KEY"
    sampler_concurrency: int = Field(32, gt=0, description="sampler=openai or server: requests in flight per "
                                                           "process (one request per sample)")
    generation_batch_size: int = Field(16, gt=0, description="prompts generated at a time (x K samples); answers are saved every this many prompts")
    pairs: Literal["best_worst", "sppo"] = "best_worst"
    keep_ties: bool = Field(False, description="keep prompts whose answers tie or are identical, as SPPO's "
                                               "compute_prob.py does (argmax and argmin then both pick the first "
                                               "answer: a pair of an answer with itself); default: drop them")
    prompt_split: Literal["reuse", "split", "per_source"] = Field(
        "reuse", description="reuse: every prompt each iteration; split: disjoint slices; per_source: "
                             "data.sources[n-1] holds iteration n's prompts (SPPO's data-...-sppo-iter{n})")
    max_prompts: int | None = Field(None, gt=0, description="prompts used per iteration")
    pair_fraction: float = Field(1.0, gt=0, le=1, description="share of a round's own pairs it trains on (LIONs' "
                                                              "Gemma odpo mixer: 0.1)")
    mix_offline: SourceSettings | None = Field(None, description="offline preference rows mixed into each round; "
                                                                 "its fraction applies as in any source")
    mix_fraction: float | None = Field(None, ge=0, lt=1, description="instead of mix_offline's own fraction: as many "
                                                                     "offline pairs as make this share of the round")
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    grpo: GrpoSettings = Field(default_factory=GrpoSettings)
    save_every: int = Field(1, gt=0, description="save a round's model/ every N rounds and at the end; the rounds "
                                                 "between hand their weights to the next in memory (semi-online "
                                                 "rounds with pride's engine in one process); a resume restarts "
                                                 "from the last saved round")

    @model_validator(mode="after")
    def _objective_settings_used(self):
        """online.objective=sppo is SPPO's pairs; the GRPO family's settings only with its objectives
        (compared with their defaults, so a run's own config.yaml reads back)."""
        group = self.objective in ("grpo", "rloo")
        every_sample = group or self.objective == "kto"
        if self.objective == "sppo" and self.pairs != "sppo":
            object.__setattr__(self, "pairs", "sppo")
        changed = [k for k, v in self.grpo if v != GrpoSettings.model_fields[k].default]
        if not group and changed:
            raise ValueError(f"online.grpo.{changed[0]} is for online.objective grpo or rloo (this is objective "
                             f"{self.objective})")
        if every_sample and (self.mix_offline is not None or self.pair_fraction != 1.0):
            raise ValueError(f"online.mix_offline and online.pair_fraction mix the pairs of objectives dpo and sppo; "
                             f"objective {self.objective} trains on every sample of its own")
        if every_sample and (self.pairs != "best_worst" or self.keep_ties):
            raise ValueError(f"online.pairs and online.keep_ties make the pairs of objectives dpo and sppo; "
                             f"objective {self.objective} trains on every sample")
        if self.objective == "rloo" and self.grpo.loss_type != "dapo":
            raise ValueError("online.grpo.loss_type is for objective grpo; rloo trains RLOOTrainer's own "
                             "sequence-level loss")
        if self.objective == "rloo" and self.grpo.scale_rewards == "group":
            raise ValueError("online.grpo.scale_rewards=group is GRPO's; rloo's leave-one-out advantages take none "
                             "or batch (RLOOTrainer's normalize_advantages)")
        return self

    @model_validator(mode="after")
    def _sampler_settings_used(self):
        """A sampler setting another sampler ignores is an error, not a setting that silently does nothing."""
        if self.sampler_url and self.sampler != "openai":
            raise ValueError(f"online.sampler_url is for sampler=openai (this is sampler={self.sampler})")
        if self.sampler == "openai" and not self.sampler_url:
            raise ValueError("online.sampler=openai needs online.sampler_url (an OpenAI-compatible base URL, or a "
                             "list of them)")
        if self.sampler != "server" and (self.server_args or self.server != "auto"):
            raise ValueError(f"online.server and online.server_args are for sampler=server (this is "
                             f"sampler={self.sampler})")
        if self.save_every > self.iterations:
            raise ValueError(f"online.save_every={self.save_every} is more than online.iterations={self.iterations}: "
                             "only the last round would be saved, which it is anyway; set save_every to at most "
                             "the number of rounds")
        if self.mix_fraction is not None and self.mix_offline is None:
            raise ValueError("online.mix_fraction sets the share of online.mix_offline's rows, which is not set")
        return self

    def sampler_urls(self) -> list[str]:
        return urls(self.sampler_url)


def urls(value: str | list[str] | None) -> list[str]:
    """A URL setting as a list (one URL or several)."""
    return [value] if isinstance(value, str) else list(value or [])


class EvalJudgeSettings(Section):
    url: str | None = Field(None, description="OpenAI-compatible base URL of the judge")
    model: str | None = Field(None, description="judge model name at that endpoint")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the judge's API key")
    requests_per_second: float | None = Field(None, gt=0)
    max_retries: int = Field(5, ge=0)
    max_tokens: int | None = Field(None, gt=0, description="cap on judge output (default: each benchmark's own)")


class BenchmarkGeneration(Section):
    """How answers to one benchmark are generated."""

    max_new_tokens: int | None = Field(None, gt=0, description="None: the benchmark's official length")
    temperature: float | None = Field(None, ge=0, description="None: the benchmark's own (MT-Bench: FastChat's "
                                                                "per-category temperatures; others greedy)")
    top_p: float = Field(1.0, gt=0, le=1)


class EvalGeneration(Section):
    """Per benchmark, as the official tools generate (FastChat 1024 tokens; AlpacaEval's model
    configs and arena-hard-auto's answer config 4096)."""

    mt_bench: BenchmarkGeneration = Field(default_factory=BenchmarkGeneration)
    alpaca_eval: BenchmarkGeneration = Field(default_factory=BenchmarkGeneration)
    arena_hard: BenchmarkGeneration = Field(default_factory=BenchmarkGeneration)
    task_metrics: BenchmarkGeneration = Field(default_factory=BenchmarkGeneration)

    @model_validator(mode="after")
    def _official_lengths(self):
        """Unset lengths are the official tools' (so overriding one key keeps the others)."""
        for name, n in OFFICIAL_MAX_NEW_TOKENS.items():
            if getattr(self, name).max_new_tokens is None:
                getattr(self, name).max_new_tokens = n
        return self


OFFICIAL_MAX_NEW_TOKENS = {"mt_bench": 1024, "alpaca_eval": 4096, "arena_hard": 4096, "task_metrics": 512}


class TaskMetricsSettings(Section):
    """Outputs scored against references (pride.eval.task_metrics): translation, summarisation."""

    references: str | None = Field(None, description="JSONL: prompt, reference (string or list), source?",
                                   json_schema_extra=INPUT)
    metrics: list[Literal["bleu", "chrf", "rouge", "comet", "bertscore"]] = Field(
        default_factory=lambda: ["chrf", "bleu"], description="comet / bertscore need their optional packages")
    prompt_format: Literal["chat", "raw"] = Field(
        "chat", description="raw: string prompts go to /v1/completions as they are (models trained without a "
                            "chat template, like CustomPOs')")


class EvalSettings(Section):
    """`pride eval`: benchmarks on a model directory (or every checkpoint of a run)."""

    benchmarks: list[Literal["mt_bench", "alpaca_eval", "arena_hard", "open_llm_v1", "open_llm_v2",
                             "task_metrics", "reward_accuracy"]] = Field(
        default_factory=lambda: ["mt_bench"])
    reward_sources: list[SourceSettings] = Field(
        default_factory=list, description="reward_accuracy: held-out preference files (a `subset` column of "
                                          "RewardBench's subsets adds its section scores)")
    data_dir: str | None = Field(None, description="benchmark files (layout in the README)", json_schema_extra=INPUT)
    output_dir: str = Field("runs/eval", min_length=1)
    model_name: str | None = Field(None, description="name in answer files; default: the model dir's name")
    checkpoints: bool = Field(False, description="model.path is a run directory: evaluate its model/, iteration-*/model/ "
                                                 "and each checkpoints/checkpoint-N (exported, evaluated, removed)")
    server: Literal["auto", "vllm", "sglang", "pride"] = "auto"
    server_url: str | None = Field(None, description="use a running OpenAI-compatible endpoint instead")
    generation: EvalGeneration = Field(default_factory=EvalGeneration)
    max_new_tokens: int | None = Field(None, gt=0, description="caps every benchmark's generation.max_new_tokens")
    num_runs: int = Field(1, gt=0, description="repeat generation (seed + run); report mean, std and each run")
    max_questions: int | None = Field(None, gt=0, description="first N questions of each benchmark")
    generation_concurrency: int = Field(8, gt=0, description="answer requests in flight at once")
    judge_concurrency: int = Field(8, gt=0, description="judge requests in flight at once")
    judge: EvalJudgeSettings = Field(default_factory=EvalJudgeSettings)
    mt_bench_mode: Literal["single", "pairwise-baseline", "pairwise-all"] = "single"
    mt_bench_baseline: str = Field("gpt-3.5-turbo", description="pairwise-baseline: mt_bench/model_answer/<name>.jsonl")
    arena_hard_version: Literal["v2", "v0.1"] = Field("v2", description="whose official code scores and parses")
    arena_hard_set: str = Field("arena_hard_v0.1", description="folder of the question set in data_dir")
    arena_hard_baseline: str | None = Field(None, description="one baseline for every question; default: each "
                                            "category's official one (v2), gpt-4-0314 (v0.1)")
    task_metrics: TaskMetricsSettings = Field(default_factory=TaskMetricsSettings)
    bootstrap_rounds: int = Field(100, gt=0)
    style_control: bool = False
    open_llm_tasks: list[str] | None = Field(None, min_length=1, description="lm-eval tasks instead of the suite's "
                                                                             "(unset: the suite's)")
    open_llm_include_path: str | None = Field(None, description="a folder of lm-eval task YAMLs (local tasks)",
                                              json_schema_extra=INPUT)
    open_llm_batch_size: int | Literal["auto"] = "auto"
    open_llm_limit: int | None = Field(None, gt=0)
    report_to: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _reward_sources_with_their_benchmark(self):
        """reward_accuracy needs its files, and files without it would be read by nothing."""
        if "reward_accuracy" in self.benchmarks and not self.reward_sources:
            raise ValueError("benchmark reward_accuracy needs eval.reward_sources (held-out preference files)")
        if self.reward_sources and "reward_accuracy" not in self.benchmarks:
            raise ValueError("eval.reward_sources is read only by the reward_accuracy benchmark: add it to "
                             "eval.benchmarks, or leave reward_sources unset")
        return self


class Config(Section):
    """The whole run. `model` is required; `data` for every stage that trains or samples."""

    model: ModelSettings
    data: DataSettings | None = None
    train: TrainSettings = Field(default_factory=TrainSettings)
    preference: PreferenceSettings = Field(default_factory=PreferenceSettings)
    kto: KtoSettings = Field(default_factory=KtoSettings)
    reward: RewardSettings = Field(default_factory=RewardSettings)
    online: OnlineSettings = Field(default_factory=OnlineSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    output_dir: str = Field("runs/pride", min_length=1)
    seed: int = Field(42, ge=0, le=2**32 - 1)  # numpy's seeding takes 32 bits

    @model_validator(mode="after")
    def _evaluation_has_data(self):
        """An evaluation cadence without held-out rows would do nothing, without a word."""
        t, d = self.train, self.data
        asked = "train.eval_strategy=epoch" if t.eval_strategy == "epoch" else \
            f"train.eval_steps={t.eval_steps}" if t.eval_steps else None
        if asked and d is not None and not d.eval_sources and not d.eval_fraction:
            raise ValueError(f"{asked} evaluates on held-out rows, and there are none: set data.eval_sources or "
                             "data.eval_fraction, or leave it unset")
        if asked and self.online.objective in ("grpo", "rloo", "kto"):
            raise ValueError(f"{asked}: online.objective={self.online.objective} trains on its own samples and has no "
                             "held-out loss to evaluate; leave it unset (pride eval scores the rounds' models)")
        return self


# ---------------------------------------------------------------- loading


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""


def _no_duplicates(loader, node, deep=False):
    """A key given twice in the mapping itself is an error; keys merged in with `<<: *anchor`
    are overridden by the mapping's own, as YAML says."""
    seen = {}
    own = [k for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"]
    for key_node in own:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def load_yaml(path: Path):
    """A YAML file as Python data; problems (syntax, duplicate keys, encoding) name the file and line."""
    from pride.io import mark_inputs

    mark_inputs(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PrideError(f"{path}: not UTF-8 (byte {e.start})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        if problem.startswith("duplicate key"):
            raise PrideError(f"{path}{where}: {problem}") from None
        raise PrideError(f"{path}{where}: not valid YAML ({problem})") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a","b","c"], value parsed as YAML, so 1e-5 is a float)."""
    if "=" not in text:
        raise PrideError(f"override {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise PrideError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_override(tree: dict, parts: list[str], value: Any) -> None:
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            node = node[_index(node, part, parts)]
        else:
            if part not in node or node[part] is None:
                node[part] = [] if nxt.isdigit() else {}
            node = node[part]
        if not isinstance(node, (dict, list)):
            raise PrideError(f"override {'.'.join(parts)}: '{'.'.join(parts[:i + 1])}' is a value ({node!r}), "
                             "not a section or a list")
    last = parts[-1]
    if isinstance(node, list):
        node[_index(node, last, parts)] = value
    else:
        node[last] = value


def _index(node: list, part: str, parts: list[str]) -> int:
    if not part.isdigit():
        raise PrideError(f"override {'.'.join(parts)}: {part!r} is not a list index")
    idx = int(part)
    if idx > len(node):
        raise PrideError(f"override {'.'.join(parts)}: the list has {len(node)} item(s); index {idx} is past its end "
                         f"(use 0 to {len(node) - 1}, or {len(node)} to add one)")
    if idx == len(node):
        node.append({})
    return idx


def load_config(path: str | Path | None, overrides: list[str] = (), base: dict | None = None) -> Config:
    """Read YAML (or start from `base`), apply overrides, validate. Errors are one line."""
    source = str(path) if path is not None else "<overrides>"
    tree: dict = {}
    if base is not None:
        tree = json.loads(json.dumps(base))
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise PrideError(f"{p}: is a directory; the config is a YAML file")
        if not p.is_file():
            raise PrideError(f"config file not found: {p}")
        loaded = load_yaml(p)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise PrideError(f"{p}: the top level must be a mapping of sections, got {type(loaded).__name__}")
        tree.update(loaded)
    given: dict[str, str] = {}
    for text in overrides:
        parts, value = parse_override(text)
        apply_override(tree, parts, value)
        given[".".join(parts)] = text
    return validate_config(tree, source, overrides=given)


def validate_config(tree: dict, source: str, model: type[BaseModel] = Config, overrides: dict[str, str] | None = None):
    """`overrides`: key -> the `key=value` text that set it; an error in what an override set
    names the override, not the file."""
    try:
        return model.model_validate(tree)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        by = next((text for k, text in (overrides or {}).items() if key == k or key.startswith(k + ".")
                   or k.startswith(key + ".")), None)
        raise PrideError(f"{f'override {by}' if by else source}: {describe_error(err, model)}") from None


def did_you_mean(word: str, choices) -> str:
    """"; did you mean 'x'?" for the closest of `choices`, or "" when none is close."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def describe_error(err: dict, root: type[BaseModel]) -> str:
    loc = [str(x) for x in err["loc"]]
    key = ".".join(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(root, err["loc"][:-1])
        hint = did_you_mean(key, [".".join(loc[:-1] + [a]) for a in allowed])
        return f"unknown key '{key}'{hint} (allowed: {', '.join(allowed)})"
    if kind == "missing":
        return f"missing required key '{key}'"
    shown = err.get("input")
    message = err["msg"].removeprefix("Value error, ")
    if isinstance(shown, dict):  # a section's own check across its keys: its message names them
        return message
    hint = ""
    if kind == "literal_error" and isinstance(shown, str):  # a misspelt choice
        hint = did_you_mean(shown, re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", ""))))
    shown = json.dumps(shown) if isinstance(shown, (str, int, float, bool)) or shown is None else type(shown).__name__
    return f"key '{key}': {message} (got {shown}){hint}"


def _allowed_keys(root: type[BaseModel], loc: tuple) -> list[str]:
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        model = _section_type(field.annotation)
        if model is None:
            return []
    return sorted(model.model_fields) if hasattr(model, "model_fields") else []


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is not None or hasattr(annotation, "__args__"):
        for arg in get_args(annotation):
            found = _section_type(arg)
            if found is not None:
                return found
    return None


def write_resolved(cfg: BaseModel, run_dir: str | Path, world_size: int | None = None) -> Path:
    """Write the validated config (all defaults filled in) as `config.yaml` in the run dir
    (atomically); with `world_size`, a first comment line says the launch it ran with."""
    from pride.io import write_text

    head = ""
    if world_size is not None and hasattr(cfg, "train"):
        head = (f"# launch: world_size {world_size}, train.gradient_accumulation_steps "
                f"{cfg.train.gradient_accumulation_steps}, global batch "
                f"{world_size * cfg.train.gradient_accumulation_steps * cfg.train.micro_batch_size} rows\n")
    return write_text(Path(run_dir) / "config.yaml", head + yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def launched_processes(env=None) -> int:
    """The processes the launcher started (WORLD_SIZE, 1 without a launcher); a value that is not
    a positive whole number is one line, not a traceback or a division by zero."""
    import os

    value = (os.environ if env is None else env).get("WORLD_SIZE", "1") or "1"
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise PrideError(f"WORLD_SIZE={value}: not a number of processes (a positive whole number; the launcher sets "
                         "it, unset it to run one process)")
    return n


def with_global_batch(cfg, world_size: int):
    """`cfg` with `train.gradient_accumulation_steps` derived from `train.global_batch_size`, the
    micro-batch and the launch's processes; unchanged when no global batch is set."""
    t = cfg.train
    if t.global_batch_size is None:
        return cfg
    per_pass = t.micro_batch_size * world_size
    if t.global_batch_size % per_pass:
        raise PrideError(f"train.global_batch_size={t.global_batch_size} is not a multiple of train.micro_batch_size "
                         f"({t.micro_batch_size}) x processes ({world_size}) = {per_pass}; change one of them")
    accumulation = t.global_batch_size // per_pass
    if t.gradient_accumulation_steps not in (1, accumulation):
        raise PrideError(f"train.gradient_accumulation_steps={t.gradient_accumulation_steps} contradicts "
                         f"train.global_batch_size={t.global_batch_size} ({accumulation} with {world_size} process(es) "
                         f"of micro-batch {t.micro_batch_size}); set one of them")
    return cfg.model_copy(update={"train": t.model_copy(update={"gradient_accumulation_steps": accumulation})})
