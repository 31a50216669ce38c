"""What every training stage does around the loop: run dir, seeds, model, final save."""

from __future__ import annotations

import functools
import os
import random
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from rich.console import Console

from pride.config import Config, write_resolved
from pride.errors import PrideError
from pride.io import disk_error
from pride.io import write_json
from pride.models import load_model_and_tokenizer


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def exclusive(run_dir: Path):
    """One pride process per run directory (per rank): a second one stops with a clear message
    instead of interleaving metrics and mixing models and configs."""
    from filelock import FileLock, Timeout

    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / f".pride-lock-rank{os.environ.get('RANK', '0')}"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise PrideError(f"{run_dir} is in use by another pride process (it holds {lock.lock_file}); "
                         "wait for it to finish or choose another output_dir") from None
    try:
        yield
    finally:
        lock.release()


def exclusive_run_dir(stage):
    """Decorator for a stage `fn(cfg, ...)`: holds the lock of cfg.output_dir while it runs."""
    @functools.wraps(stage)
    def run(cfg, *args, **kwargs):
        with exclusive(Path(cfg.output_dir)):
            return stage(cfg, *args, **kwargs)
    return run


def prepare_run_dir(cfg: Config, acc: Accelerator, write_config: bool = True) -> Path:
    """The run directory; `config.yaml` now, or (training stages) once the run is really going."""
    run_dir = Path(cfg.output_dir)
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        if write_config:
            write_resolved(cfg, run_dir)
    acc.wait_for_everyone()
    return run_dir


def load_for_training(cfg: Config, acc: Accelerator, console: Console | None = None):
    """Model (trainable weights per `train.precision`, on the device) + tokenizer + chat format."""
    model, tokenizer, fmt = load_model_and_tokenizer(cfg.model, seed=cfg.seed, device=acc.device)
    note = apply_precision(model, cfg.train.precision)
    if note and console is not None:
        console.print(note)
    return model, tokenizer, fmt


def apply_precision(model: torch.nn.Module, precision: str) -> str:
    """Keep trainable weights (and so gradients and optimizer state) in fp32 under `mixed`.

    AdamW on bf16 weights rounds away every update smaller than the weight's resolution (about
    0.4% of it): at DPO learning rates (1e-7 to 5e-7) almost nothing moves. accelerate's
    autocast computes in low precision but keeps no fp32 master copy (only FSDP upcasts),
    so pride upcasts the trainable weights itself; frozen ones (LoRA's base) stay as loaded.
    Returns a line for the console, or "" when there is nothing to say.
    """
    low = [p for p in model.parameters() if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16)]
    if not low:
        return ""
    dtype = str(low[0].dtype).replace("torch.", "")
    if precision == "pure":
        return (f"[yellow]warning[/]: train.precision=pure: weights and optimizer state stay in {dtype}; updates "
                f"smaller than a weight's {dtype} resolution are lost (the default, mixed, keeps them in fp32)")
    for p in low:
        p.data = p.data.float()
    return f"precision: trainable weights and optimizer state in fp32, compute in {dtype} (autocast)"


def save_final_model(acc: Accelerator, prepared, tokenizer, out_dir: Path) -> Path:
    """An HF directory (safetensors + tokenizer + chat template) that transformers/vLLM load as is.

    `prepared` is what the loop trained (the accelerate-prepared `TokenLogps`): its state
    dict is gathered from every rank (FSDP, ZeRO-3) and stripped of the wrapper's prefix.
    LoRA adapters are merged into the weights (the adapter alone goes to `adapter/`).
    """
    from pride.logps import TokenLogps

    out_dir = Path(out_dir)
    unwrapped = acc.unwrap_model(prepared)
    model = unwrapped.model if isinstance(unwrapped, TokenLogps) else unwrapped
    state = acc.get_state_dict(prepared)
    if isinstance(unwrapped, TokenLogps):
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    if acc.is_main_process:
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            if hasattr(model, "merge_and_unload"):  # peft
                model.save_pretrained(tmp / "adapter")
                model = model.merge_and_unload()
                state = None
            model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        except Exception as e:
            shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written is left looking like a model
            full = isinstance(e, OSError) or "No space left" in str(e)
            if full:
                needed = sum(t.numel() * t.element_size() for t in (state or model.state_dict()).values())
                raise disk_error(e if isinstance(e, OSError) else OSError(28, str(e)), out_dir.parent,
                                 needed) from None
            raise
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
    acc.wait_for_everyone()
    return out_dir


def finish_stage(acc: Accelerator, result, tokenizer, run_dir: Path, stats: dict, console: Console) -> dict:
    """Save the final model and `summary.json` (model path, steps, data stats, last metrics)."""
    out = save_final_model(acc, result.prepared, tokenizer, run_dir / "model")
    summary = {"model": str(out), "steps": result.steps, "data": stats,
               "final": result.metrics[-1] if result.metrics else {}}
    if acc.is_main_process:
        write_json(run_dir / "summary.json", summary)
        console.print(f"[bold green]done[/]: model saved to {out}")
    return summary


def console_for(acc: Accelerator) -> Console:
    """Main process only; wide enough for tables when writing to a file or pipe."""
    import sys

    return Console(stderr=True, quiet=not acc.is_main_process, soft_wrap=True,
                   width=None if sys.stderr.isatty() else 160)
