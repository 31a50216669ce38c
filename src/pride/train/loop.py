"""The one training loop (accelerate). SFT, the DPO family and online rounds all use it.

A stage hands over rows of token samples and an `Objective`: `batch -> (loss_sum, metric
sums)` plus how many normalisation units (trained tokens, pairs) a micro-batch holds. The
loop owns everything else, identically for every stage:

* a deterministic schedule: rows shuffled per epoch by seed, cut into micro-batches, and
  each optimizer step takes `processes x accumulation` consecutive micro-batches (rank r
  takes every r-th), so 1 process x accumulation 8 and 2 processes x 4 see the same data;
* the loss of a step is the sum over all its micro-batches and ranks divided by the step's
  units, so micro-batch 2 x accumulation 4 gives the gradient of micro-batch 8;
* AdamW, warmup + cosine/linear schedule, clipping, mixed precision, eval, progress bar,
  metrics.jsonl (and TensorBoard / W&B through accelerate's trackers);
* atomic checkpoints (temp dir, then rename) keeping the last K, and `resume=auto` from the
  newest complete one with model, optimizer, scheduler, RNG and data position restored, so
  an interrupted run ends with the weights of an uninterrupted one;
* a non-finite loss or gradient stops (checkpoints intact) or skips the step.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
from accelerate import Accelerator
from rich.console import Console

from pride.config import TrainSettings
from pride.data.packing import Batch, Sample, collate, hash_samples
from pride.errors import PrideError
from pride.progress import Phase
from pride.trackers import flat_hparams
from pride.io import append_jsonl, read_jsonl_tolerant, read_record, write_json, write_jsonl
from pride.logps import TokenLogps
from pride.models import attention_backend
from pride.rundir import METRICS, WANDB_RUN, checkpoint_dirs, checkpoints_dir, clear_run


class Objective(Protocol):
    metric_names: tuple[str, ...]  # keys of the metric sums it returns (besides the loss)
    layout: str  # how micro-batches are laid out (data.packing.collate)
    attention_weight: float  # for the shared layout's choice (data.packing.collate_shared)

    def units(self, rows: list[list[Sample]]) -> float:
        """Normalisation units in these rows (trained tokens for SFT, pairs for DPO)."""

    def __call__(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss summed over units, metric sums) for one micro-batch."""


@dataclass
class TrainResult:
    steps: int
    metrics: list[dict] = field(default_factory=list)
    prepared: torch.nn.Module | None = None  # the accelerate-prepared TokenLogps (what to save from)


def autocast_dtype(cfg: TrainSettings, model_dtype: str) -> str:
    """What accelerate autocasts to: the model's own low precision under precision=mixed.

    Under precision=pure the weights already are low precision, so no autocast (and no fp16
    grad scaler, which refuses fp16 weights)."""
    if cfg.mixed_precision != "auto":
        return cfg.mixed_precision
    if cfg.precision == "pure":
        return "no"
    from pride.models import resolve_dtype

    dtype = resolve_dtype(model_dtype)
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")


def make_accelerator(cfg: TrainSettings, run_dir: Path, model_dtype: str = "auto") -> Accelerator:
    from accelerate.state import AcceleratorState

    from pride.trackers import check_trackers

    check_trackers(cfg.report_to, "train.report_to")
    mp = autocast_dtype(cfg, model_dtype)

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != mp:
        # accelerate keeps one process-wide state; stages run in one process (`pride run`, the demo)
        # may autocast differently. Only the precision part is reset; the process group stays.
        AcceleratorState._reset_state(reset_partial_state=False)
    acc = Accelerator(mixed_precision=mp, log_with=list(cfg.report_to) or None, project_dir=str(run_dir),
                      cpu=not torch.cuda.is_available())
    if _fsdp_asked() and acc.distributed_type.name == "MULTI_CPU":
        shard_on_cpu(acc)
    check_launch(acc)
    return acc


def _fsdp_asked(env=None) -> bool:
    env = os.environ if env is None else env
    return env.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def shard_on_cpu(acc: Accelerator) -> None:
    """Make an FSDP launch on CPU processes (gloo) shard, as it does on GPUs.

    accelerate switches a launch to FSDP only on accelerators; on CPU it would run it as plain
    data parallel. This makes the switch accelerate's own set-up makes on GPUs (distributed type
    FSDP, the FSDP plugin from the launch's FSDP_* settings, its mixed precision), so prepare,
    gradient clipping, checkpoints and the gathered final weights all take accelerate's FSDP
    code, the one GPUs run. Only FSDP2 (`fsdp_version: 2`): FSDP1 needs a GPU."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # reads FSDP_* from the launch's environment
    if plugin.fsdp_version != 2:
        raise PrideError("an FSDP launch on CPU needs fsdp_version: 2 (FSDP1 needs GPUs); see "
                         "configs/accelerate/fsdp.yaml")
    if acc.mixed_precision != "no":
        plugin.set_mixed_precision(acc.mixed_precision)
    AcceleratorState._shared_state["fsdp_plugin"] = plugin
    for shared in (AcceleratorState._shared_state, PartialState._shared_state):
        shared["distributed_type"] = DistributedType.FSDP


def check_launch(acc: Accelerator, env=None) -> None:
    """Stop when the set-up that runs is not the one the launch asked for, instead of training
    otherwise in silence: FSDP asked without a process group would run unsharded, processes
    started without a process group would each train alone, and DeepSpeed (not supported: see
    the message) would fail inside accelerate or step the optimizer per micro-batch."""
    env = os.environ if env is None else env
    kind = acc.distributed_type.name
    if kind == "DEEPSPEED" or env.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true"):
        raise PrideError("DeepSpeed launches are not supported: accelerate's DeepSpeed needs a dataloader pride does "
                         "not hand it, and it steps the optimizer on every micro-batch where pride accumulates "
                         "several. Launch with configs/accelerate/fsdp.yaml (FSDP2: the same full sharding as "
                         "ZeRO-3). Nothing was trained")
    if _fsdp_asked(env) and kind != "FSDP":
        raise PrideError(f"the launch asked for FSDP but accelerate runs {kind} with {acc.num_processes} "
                         "process(es) (start it with accelerate launch --config_file configs/accelerate/fsdp.yaml). "
                         "Nothing was trained")
    from pride.config import launched_processes

    started = launched_processes(env)
    if started != acc.num_processes:
        raise PrideError(f"{started} processes were started (WORLD_SIZE) but the process group has "
                         f"{acc.num_processes}: each would train alone and write the same run directory")


def distributed_summary(acc: Accelerator, cfg: TrainSettings) -> dict:
    """What really ran, for summary.json: accelerate's distributed type, processes, accumulation."""
    return {"type": "none" if acc.num_processes == 1 and acc.distributed_type.name == "NO" else
            acc.distributed_type.name, "world_size": acc.num_processes,
            "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
            "mixed_precision": acc.mixed_precision, "device": acc.device.type}


def epoch_schedule(n_rows: int, micro_batch_size: int, per_step: int, seed: int, epoch: int) -> list[list[list[int]]]:
    """steps -> micro-batches -> row indices, for one epoch (same on every rank)."""
    g = torch.Generator().manual_seed(seed * 1000003 + epoch)
    order = torch.randperm(n_rows, generator=g).tolist()
    mbs = [order[i:i + micro_batch_size] for i in range(0, n_rows, micro_batch_size)]
    return [mbs[i:i + per_step] for i in range(0, len(mbs), per_step)]


def schedule_size(n_rows: int, cfg: TrainSettings, world: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps) of `n_rows` rows on `world` processes."""
    per_step = world * cfg.gradient_accumulation_steps
    steps_per_epoch = math.ceil(math.ceil(n_rows / cfg.micro_batch_size) / per_step)
    return steps_per_epoch, cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))


def planned_steps(n_rows: int, cfg: TrainSettings, world: int, seed: int) -> list[list[list[int]]]:
    """Every step's micro-batches (row indices): the schedule `train` takes, and what an objective whose
    data depends on a step's rows (KTO's mismatched pairs) prepares ahead."""
    steps_per_epoch, total_steps = schedule_size(n_rows, cfg, world)
    per_step = world * cfg.gradient_accumulation_steps
    epochs = {}
    out = []
    for step in range(total_steps):
        epoch, k = divmod(step, steps_per_epoch)
        if epoch not in epochs:
            epochs = {epoch: epoch_schedule(n_rows, cfg.micro_batch_size, per_step, seed, epoch)}
        out.append(epochs[epoch][k])
    return out


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and "norm" not in name.lower() else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _scheduler(cfg: TrainSettings, optimizer, total_steps: int):
    from transformers import get_scheduler

    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.lr_scheduler]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps(cfg.warmup_ratio, total_steps),
                         num_training_steps=total_steps)


def warmup_steps(ratio: float, total_steps: int) -> int:
    """As HF's TrainingArguments.get_warmup_steps: the ratio's steps rounded up (math.ceil, float
    product and all), which the sources' Trainer runs used."""
    return math.ceil(total_steps * ratio)


# Settings that do not change what is trained: a run may resume with other values for these.
RESUMABLE_KEYS = ("output_dir", "eval", "train.resume", "train.logging_steps", "train.eval_steps", "train.eval_strategy",
                  "train.save_steps", "train.save_strategy", "train.save_total_limit", "train.report_to",
                  "data.on_bad_row", "online.sampler_url", "online.sampler_concurrency", "online.judge.url",
                  "online.judge.concurrency")


def run_identity(cfg) -> dict:
    """The flattened resolved config, less the settings a resume may change."""
    flat: dict = {}

    def walk(prefix, node):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = node

    walk("", cfg.model_dump(mode="json"))
    if flat.get("train.global_batch_size") is not None:  # derived from the launch: resumable on another GPU count
        flat.pop("train.gradient_accumulation_steps")
    return {k: v for k, v in flat.items() if not any(k == r or k.startswith(r + ".") for r in RESUMABLE_KEYS)}


def data_fingerprint(rows: list[list[Sample]]) -> str:
    """Hash of the exact training rows (token ids and targets, in order)."""
    import hashlib

    h = hashlib.sha256()
    for row in rows:
        hash_samples(h, row)
    return h.hexdigest()


def checkpoint_state(ckpt: Path) -> dict | None:
    """trainer_state.json of a complete, intact checkpoint, else None (with the reason in 'problem')."""
    from safetensors import safe_open

    state = read_record(ckpt / "trainer_state.json")
    if state is None:
        return {"problem": "trainer_state.json is missing or unreadable"}
    if not isinstance(state.get("step"), int):
        return {"problem": "trainer_state.json has no step"}
    for name, size in (state.get("files") or {}).items():
        f = ckpt / name
        if not f.is_file() or f.stat().st_size != size:
            return {"problem": f"{name} is missing or truncated"}
        if name.endswith(".safetensors"):
            try:
                with safe_open(str(f), framework="pt"):
                    pass
            except Exception as e:  # noqa: BLE001 - any unreadable header means a broken file
                return {"problem": f"{name} is unreadable ({e.__class__.__name__})"}
    return state


def find_checkpoint(run_dir: Path, resume: str, warn=None) -> Path | None:
    """The checkpoint to resume from: the newest intact one (auto/force), a given path, or none."""
    if resume == "never":
        return None
    if resume not in ("auto", "force"):
        path = Path(resume)
        state = checkpoint_state(path) if path.is_dir() else {"problem": "not a directory"}
        if "problem" in state:
            raise PrideError(f"train.resume={resume}: not a usable checkpoint ({state['problem']})")
        return path
    for ckpt in reversed(checkpoint_dirs(run_dir)):
        state = checkpoint_state(ckpt)
        if "problem" not in state:
            return ckpt
        if warn is not None:
            warn(f"[yellow]warning[/]: skipping {ckpt}: {state['problem']}")
    return None


def check_resume(ckpt: Path, identity: dict | None, fingerprint: str, resume: str) -> None:
    """Refuse to continue a run whose checkpoint was trained with other settings or data."""
    state = read_record(ckpt / "trainer_state.json") or {}
    if resume == "force" or "identity" not in state:
        return
    old = state["identity"]
    diff = sorted(k for k in set(old) | set(identity or {}) if old.get(k) != (identity or {}).get(k))
    if state.get("data") != fingerprint:
        diff.append("the training data (token ids)")
    if diff:
        shown = "; ".join(f"{k}: {old.get(k)!r} -> {(identity or {}).get(k)!r}" if k in old or k in (identity or {})
                          else k for k in diff[:5])
        raise PrideError(f"{ckpt} was trained with other settings ({shown}{'; ...' if len(diff) > 5 else ''}). "
                         "Use a new output_dir, train.resume=never to start over, or train.resume=force to "
                         "continue anyway")


def num_nodes(acc) -> int:
    """Machines in this launch: all processes over those on this machine (torchrun's LOCAL_WORLD_SIZE)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", acc.num_processes))
    return max(1, acc.num_processes // max(1, local))


def mask_embedding_grad(model, start: int, end: int | None) -> Callable[[], None]:
    """Only rows [start, end) of the input embeddings (and an untied LM head) get gradients (LIONs'
    mask_embed_grad: train the chat tokens' rows, keep the vocabulary's).

    Where autograd computes with these parameters (one process, DDP, DeepSpeed) a gradient hook
    masks them, and the returned function does nothing. Under FSDP2 the parameters are sharded
    DTensors whose gradients FSDP assigns after its reduce-scatter, outside autograd, so hooks on
    them never fire: the returned function masks those gradients, and the loop calls it after
    each step's backward passes."""
    weights = [model.get_input_embeddings().weight]
    rows = weights[0].shape[0]
    if start >= rows:  # every row masked: the embeddings would silently never train
        shown = f"[{start}, {'null' if end is None else end}]"
        raise PrideError(f"train.mask_embed_grad={shown} starts past the embedding's {rows} rows, so no row would "
                         f"train; the rows of tokens a chat template added start at the old vocabulary "
                         f"size (at most {rows - 1} here)")
    out = model.get_output_embeddings()
    if out is not None and out.weight is not weights[0]:
        weights.append(out.weight)
    masks = []
    for w in weights:
        keep = torch.zeros(w.shape[0], 1, dtype=w.dtype, device=w.device)
        keep[start:end] = 1
        if hasattr(w, "device_mesh"):  # FSDP2: the mask sharded as the weight's rows are
            from torch.distributed.tensor import distribute_tensor

            masks.append((w, distribute_tensor(keep, w.device_mesh, w.placements)))
        else:
            w.register_hook(lambda g, keep=keep: g * keep.to(g.dtype))

    def apply() -> None:
        for w, keep in masks:
            if w.grad is not None:
                w.grad.mul_(keep.to(w.grad.dtype))

    return apply


def train(
    cfg: TrainSettings,
    *,
    accelerator: Accelerator,
    model: torch.nn.Module,
    objective: Objective,
    rows: list[list[Sample]],
    eval_rows: list[list[Sample]] | None,
    pad_id: int,
    run_dir: Path,
    seed: int,
    console: Console | None = None,
    on_step_end: Callable[[int], None] | None = None,
    identity: dict | None = None,
    on_start: Callable[[], None] | None = None,
) -> TrainResult:
    """Train `model` in place: resume, then per step `_step`, `evaluate`, `_log`, `save_checkpoint`.
    The caller saves the final model (unwrapped) afterwards."""
    acc = accelerator
    console = console or Console(stderr=True, soft_wrap=True)
    if not rows:
        raise PrideError("no training rows left after tokenization and filtering")
    steps_per_epoch, total_steps = schedule_size(len(rows), cfg, acc.num_processes)
    if sum(objective.units([r]) for r in rows) == 0:
        raise PrideError("nothing to train: no row has a trained token (check data.train_on and the chat template)")

    wrap = getattr(objective, "wrap", None)  # a reward model is scored, not log-probbed
    wrapper = wrap(model, cfg.logps_chunk_size) if wrap else TokenLogps(model, cfg.logps_chunk_size)
    lr = cfg.learning_rate
    if cfg.lr_scaling == "sqrt_nodes":
        nodes = num_nodes(acc)
        lr = cfg.learning_rate * math.sqrt(nodes)
        console.print(f"learning rate {cfg.learning_rate:g} x sqrt({nodes} nodes) = {lr:g} (train.lr_scaling)")
    if cfg.optimizer == "rmsprop":  # SPPO's published runs
        optimizer = torch.optim.RMSprop(_param_groups(wrapper, cfg.weight_decay), lr=lr)
    else:
        groups = _param_groups(wrapper, cfg.weight_decay)
        # fused: one kernel for all parameters, no per-parameter temporaries (HF Trainer's default
        # adamw_torch_fused); the same update, computed in another order of float operations
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for g in groups for p in g["params"])
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2), fused=fused)
    scheduler = _scheduler(cfg, optimizer, total_steps)
    # an online stage trains a round after a round on one accelerator: what the last round prepared and
    # registered would be saved into this round's checkpoints too (model_1, a second scheduler), and a
    # run resumed in this round, which never trained the earlier ones, could not load them
    acc.free_memory()
    acc._custom_objects.clear()  # not cleared by free_memory (accelerate 1.x): the registered schedulers
    wrapper, optimizer = acc.prepare(wrapper, optimizer)
    acc.register_for_checkpointing(scheduler)
    # after prepare: FSDP's parameters are new (sharded) ones
    mask_grads = mask_embedding_grad(model, *cfg.mask_embed_grad) if cfg.mask_embed_grad is not None else None
    flat = attention_backend(model) == "flash_attention_2"

    run_dir = Path(run_dir)
    fingerprint = data_fingerprint(rows)
    start_step = _resume(acc, cfg, run_dir, identity, fingerprint, console)
    if on_start is not None and acc.is_main_process:  # e.g. config.yaml: only once the run is really going
        on_start()
    if cfg.report_to:
        group = {"wandb": {"group": cfg.wandb_group}} if "wandb" in cfg.report_to and cfg.wandb_group else {}
        acc.init_trackers(cfg.wandb_project, config=flat_hparams({"train": cfg.model_dump(mode="json")}),
                          init_kwargs=group)
        if "wandb" in cfg.report_to and acc.is_main_process:  # so `pride eval` logs into this run
            run = acc.get_tracker("wandb", unwrap=True)
            write_json(run_dir / WANDB_RUN, {"project": cfg.wandb_project, "group": cfg.wandb_group, "id": run.id})

    def batch_for(idx: list[int], source: list[list[Sample]]) -> Batch:
        return collate([source[i] for i in idx], pad_id, flat=flat, layout=objective.layout,
                       attention_weight=objective.attention_weight).to(acc.device)

    plan = planned_steps(len(rows), cfg, acc.num_processes, seed)
    result = TrainResult(steps=start_step, prepared=wrapper)
    skipped = 0
    tokens_seen, t0 = 0, time.perf_counter()
    progress = Phase(console, "train", total_steps, "steps", enabled=acc.is_main_process, completed=start_step)
    with progress:
        for step in range(start_step, total_steps):
            step_mbs = plan[step]
            logged, grad_norm, units, local_tokens = _step(acc, wrapper, objective, rows, step_mbs, batch_for,
                                                           cfg.max_grad_norm, mask_grads)
            if not math.isfinite(logged["loss"]) or grad_norm is None or not math.isfinite(grad_norm):
                bad = "loss" if not math.isfinite(logged["loss"]) else "gradient norm"
                if cfg.on_nan == "stop":
                    last = find_checkpoint(run_dir, "auto")
                    raise PrideError(f"non-finite {bad} at step {step + 1}; stopped. Last good checkpoint: "
                                     f"{last or 'none'} (train.on_nan=skip skips such steps)")
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                continue
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            tokens_seen += int(acc.reduce(torch.tensor(local_tokens, device=acc.device), "sum").item())
            done = step + 1
            record = {"step": done, "epoch": round(step / steps_per_epoch, 4), **logged,
                      "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                      "tokens_per_s": round(tokens_seen / max(time.perf_counter() - t0, 1e-9), 1), "units": units}
            if skipped:
                record["skipped_steps"] = skipped
            if eval_rows and _due(cfg.eval_strategy, cfg.eval_steps, done, steps_per_epoch, total_steps, final=True):
                record.update(evaluate(acc, wrapper, objective, eval_rows, cfg.micro_batch_size, batch_for))
            if done % cfg.logging_steps == 0 or done == total_steps:
                _log(acc, cfg, run_dir, record)
                result.metrics.append(record)
            progress.update(done, info=f"loss {logged['loss']:.4f}  lr {record['lr']:.2e}  "
                                       f"{record['tokens_per_s']:.0f} tok/s")
            if done < total_steps and _due(cfg.save_strategy, cfg.save_steps, done, steps_per_epoch, total_steps):
                save_checkpoint(acc, run_dir, done, cfg.save_total_limit, identity, fingerprint)
            result.steps = done
            if on_step_end is not None:
                on_step_end(done)
    if cfg.report_to:
        acc.end_training()
    return result


def _due(strategy: str, every: int | None, done: int, steps_per_epoch: int, total_steps: int,
         final: bool = False) -> bool:
    """Whether step `done` evaluates or saves: every `every` steps, or at each epoch's end
    (`strategy: epoch`); `final` adds the last step (evaluation always ends on one)."""
    if strategy == "epoch":
        return done % steps_per_epoch == 0 or (final and done == total_steps)
    return bool(every) and (done % every == 0 or (final and done == total_steps))


def _resume(acc: Accelerator, cfg: TrainSettings, run_dir: Path, identity: dict | None, fingerprint: str,
            console: Console) -> int:
    """The step to start from: the newest usable checkpoint's (restored into the accelerator), or 0."""
    metrics_path = run_dir / METRICS
    ckpt = find_checkpoint(run_dir, cfg.resume, warn=console.print if acc.is_main_process else None)
    if ckpt is None:  # a new run: nothing of an earlier one stays beside it
        removed = clear_run(run_dir) if acc.is_main_process else []
        if removed:
            console.print(f"starting from step 0: removed the earlier run's {', '.join(removed)} from {run_dir}")
        acc.wait_for_everyone()
        return 0
    check_resume(ckpt, identity, fingerprint, cfg.resume)
    try:
        acc.load_state(str(ckpt))
    except Exception as e:  # noqa: BLE001 - intact files that still do not load: say which
        raise PrideError(f"{ckpt}: cannot resume from this checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); train.resume=never starts over") from None
    start_step = read_record(ckpt / "trainer_state.json")["step"]
    if acc.is_main_process:
        console.print(f"resumed from {ckpt} at step {start_step}")
        _truncate_metrics(metrics_path, start_step)
    return start_step


def _step(acc: Accelerator, wrapper, objective: Objective, rows, step_mbs: list[list[int]], batch_for,
          max_grad_norm: float | None, mask_grads: Callable[[], None] | None = None
          ) -> tuple[dict, float | None, float, int]:
    """Forward and backward over this rank's micro-batches of one optimizer step, gradients
    clipped. Returns (loss and metrics per unit over all ranks, gradient norm or None when the
    loss is not finite, the step's units, this rank's tokens)."""
    world, rank = acc.num_processes, acc.process_index
    units = sum(objective.units([rows[i] for i in mb]) for mb in step_mbs)
    mine = step_mbs[rank::world]
    n_local = math.ceil(len(step_mbs) / world)
    plan = [(mb, 1.0) for mb in mine] + [(step_mbs[0], 0.0)] * (n_local - len(mine))  # ranks run as many
    names = ["loss", *objective.metric_names]
    sums = {n: torch.zeros((), device=acc.device) for n in names}
    local_tokens = 0
    wrapper.train()
    if hasattr(objective, "prepare"):  # a value over the whole step's rows, before any of its losses (KTO's KL)
        objective.prepare(acc, wrapper, rows, step_mbs, plan, batch_for)
    for i, (mb, weight) in enumerate(plan):
        batch = batch_for(mb, rows)
        sync = i == len(plan) - 1
        with (nullcontext() if sync else acc.no_sync(wrapper)), acc.autocast():
            loss_sum, metrics = objective(wrapper, batch)
            acc.backward(loss_sum * (weight * world / max(units, 1e-12)))
        for name, v in {"loss": loss_sum, **metrics}.items():
            sums[name] += weight * v.detach().float()
        local_tokens += int(weight) * batch.n_tokens
    if mask_grads is not None:
        mask_grads()
    reduced = acc.reduce(torch.stack([sums[n] for n in names]), "sum")
    logged = {n: (reduced[j] / max(units, 1e-12)).item() for j, n in enumerate(names)}
    if hasattr(objective, "finish"):
        logged = objective.finish(logged)
    grad_norm = None
    if math.isfinite(logged["loss"]):
        # max_norm inf: the total norm, nothing clipped (computed by accelerate, sharded or not)
        grad_norm = float(acc.clip_grad_norm_(wrapper.parameters(), max_grad_norm or math.inf))
    return logged, grad_norm, units, local_tokens


def _log(acc: Accelerator, cfg: TrainSettings, run_dir: Path, record: dict) -> None:
    """One line of metrics.jsonl (main process) and the trackers."""
    if acc.is_main_process:
        append_jsonl(run_dir / METRICS, [record])
    if cfg.report_to:
        acc.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["step"])


def evaluate(acc: Accelerator, wrapper, objective: Objective, eval_rows, micro_batch_size: int, batch_for) -> dict:
    """Unit-weighted mean of the objective's loss and metrics over the eval rows."""
    wrapper.eval()
    world, rank = acc.num_processes, acc.process_index
    mbs = [list(range(i, min(i + micro_batch_size, len(eval_rows)))) for i in range(0, len(eval_rows), micro_batch_size)]
    names = ["loss", *objective.metric_names]
    sums = {n: torch.zeros((), device=acc.device) for n in names}
    units = sum(objective.units([eval_rows[i] for i in mb]) for mb in mbs)
    if hasattr(objective, "prepare"):  # over the whole eval set; ranks run as many micro-batches
        mine = mbs[rank::world]
        n_local = math.ceil(len(mbs) / world)
        objective.prepare(acc, wrapper, eval_rows, mbs,
                          [(mb, 1.0) for mb in mine] + [(mbs[0], 0.0)] * (n_local - len(mine)), batch_for)
    with torch.no_grad():
        for mb in mbs[rank::world]:
            with acc.autocast():
                loss_sum, metrics = objective(wrapper, batch_for(mb, eval_rows))
            for name, v in {"loss": loss_sum, **metrics}.items():
                sums[name] += v.detach().float()
    reduced = acc.reduce(torch.stack([sums[n] for n in names]), "sum")
    wrapper.train()
    out = {f"eval/{n}": (reduced[j] / max(units, 1e-12)).item() for j, n in enumerate(names)}
    return objective.finish(out, "eval/") if hasattr(objective, "finish") else out


def save_checkpoint(acc: Accelerator, run_dir: Path, step: int, keep: int, identity: dict | None = None,
                    fingerprint: str | None = None) -> Path:
    """Write checkpoint-<step> atomically: everything goes to a temp dir, renamed when complete.

    trainer_state.json, written last, records the step, what the run was trained with (to
    refuse resuming with other settings) and every file's size (to detect a truncated one)."""
    from pride.io import disk_error, share

    root = checkpoints_dir(run_dir)
    final, tmp = root / f"checkpoint-{step}", root / f"checkpoint-{step}.tmp"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    try:
        acc.save_state(str(tmp))
    except Exception as e:  # noqa: BLE001 - a full disk arrives as OSError, RuntimeError or SafetensorError
        shutil.rmtree(tmp, ignore_errors=True)
        error = disk_error(e, root)
        if error is e:
            raise
        raise error from None
    acc.wait_for_everyone()
    if acc.is_main_process:
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        try:
            (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "identity": identity,
                                                                "data": fingerprint, "files": files}))
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise disk_error(e, root) from None
        share(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in checkpoint_dirs(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from (they will be redone),
    and a torn last line a kill may have left."""
    if path.exists():
        write_jsonl(path, [r for r in read_jsonl_tolerant(path) if r.get("step", 0) <= step])


