"""What every stage does around its work, in one place: `StageContext`.

    with StageContext.open(cfg) as ctx:          # lock, seed, accelerator, console, run dir
        model, tokenizer, fmt = ctx.load_model() # on the device, trainable weights per train.precision
        result = ctx.train(model, objective, rows, eval_rows, tokenizer.pad_token_id)
        return ctx.finish(result, tokenizer, stats)   # model/ and summary.json

An online round trains inside its stage with `ctx.within(cfg, it_dir)`: the same
accelerator, console and lock, its own config, seed and run directory.
"""

from __future__ import annotations

import os
import random
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from rich.console import Console

from pride.config import Config, with_global_batch, write_resolved
from pride.errors import PrideError
from pride.io import check_not_input, clear_inputs, disk_error, make_dir, share, write_problem
from pride.rundir import exclusive
from pride.io import write_json
from pride.models import load_model_and_tokenizer
from pride.rundir import SUMMARY, model_dir


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class StageContext:
    """A running stage: its config, accelerator, console and run directory."""

    cfg: Config
    acc: Accelerator
    console: Console
    run_dir: Path
    # an online round handed its starting model in memory (the round before trained it: semi-online,
    # online.save_every), whether its own model is saved, and that model once trained
    preloaded: tuple | None = None
    save_model: bool = True
    trained: torch.nn.Module | None = None
    loaded: tuple | None = None  # (tokenizer, chat format) of the model `load_model` gave
    timing: dict = field(default_factory=dict)  # seconds of the phases inside a round's training (iteration.json)

    @classmethod
    @contextmanager
    def open(cls, cfg: Config, write_config: bool = False):
        """Holds the run directory's lock while the stage runs. `write_config`: config.yaml now
        (training stages write it once training really starts, see `train`)."""
        from pride.train.loop import make_accelerator

        run_dir = Path(cfg.output_dir)
        with exclusive(run_dir):
            seed_everything(cfg.seed)
            acc = make_accelerator(cfg.train, run_dir, cfg.model.dtype)
            if cfg.model.attn_implementation == "flex_attention" and acc.device.type == "cpu":  # before any work
                raise PrideError("model.attn_implementation=flex_attention: torch has no flex_attention backward on "
                                 "the CPU, so this stage cannot train here; use sdpa (or auto) on the CPU, flex on a GPU")
            cfg = with_global_batch(cfg, acc.num_processes)
            ctx = cls(cfg, acc, console_for(acc), run_dir)
            if acc.is_main_process and write_config:
                write_resolved(cfg, run_dir, acc.num_processes)
            acc.wait_for_everyone()
            try:
                yield ctx
            finally:
                clear_inputs()  # the next stage of a recipe may write what this one read (the demo's data)

    def within(self, cfg: Config, run_dir: Path, preloaded: tuple | None = None,
               save_model: bool = True) -> "StageContext":
        """A training run inside this stage (an online round): same accelerator, own config and directory;
        `preloaded`: its starting (model, tokenizer, format), already in memory; `save_model`: False
        keeps the trained model in memory only (`trained`) for the next round."""
        seed_everything(cfg.seed)
        if self.acc.is_main_process:
            make_dir(run_dir)
        self.acc.wait_for_everyone()
        return replace(self, cfg=cfg, run_dir=Path(run_dir), preloaded=preloaded, save_model=save_model, trained=None,
                       loaded=None, timing={})

    def load_model(self, head: str = "lm"):
        """Model (trainable weights per `train.precision`, on the device) + tokenizer + chat format;
        head="score": a reward model."""
        if self.preloaded is not None:  # the previous round's trained model: its weights already train as set
            model, tokenizer, fmt = self.preloaded
        else:
            model, tokenizer, fmt = load_model_and_tokenizer(self.cfg.model, seed=self.cfg.seed,
                                                             device=self.acc.device, head=head)
            note = apply_precision(model, self.cfg.train.precision)
            if note:
                self.console.print(note)
        self.loaded = (tokenizer, fmt)
        return model.to(self.acc.device), tokenizer, fmt

    def train(self, model, objective, rows, eval_rows, pad_id: int):
        """The one loop, resuming from this run's checkpoints; config.yaml once training starts (its
        seconds go to `timing["loop_s"]`)."""
        import time

        check_not_input(model_dir(self.run_dir))  # before training, not after: the result could not be saved
        started = time.perf_counter()
        try:
            return self._train(model, objective, rows, eval_rows, pad_id)
        finally:
            self.timing["loop_s"] = time.perf_counter() - started

    def _train(self, model, objective, rows, eval_rows, pad_id: int):
        from pride.train.loop import run_identity, train

        return train(self.cfg.train, accelerator=self.acc, model=model, objective=objective, rows=rows,
                     eval_rows=eval_rows, pad_id=pad_id, run_dir=self.run_dir, seed=self.cfg.seed,
                     console=self.console, identity=run_identity(self.cfg),
                     on_start=lambda: write_resolved(self.cfg, self.run_dir, self.acc.num_processes))

    def write_json(self, name: str, value) -> None:
        """A record in the run directory, written by the main process."""
        if self.acc.is_main_process:
            write_json(self.run_dir / name, value)

    def finish(self, result, tokenizer, stats: dict, kind: str = "sft") -> dict:
        """Save the final model (with its model card, README.md) and `summary.json` (model path,
        steps, data stats, last metrics); `kind`: the stage that trained it (sft, dpo, rm, grpo). With
        `save_model` False (a semi-online round) the model stays in memory only (`trained`)."""
        from pride.train.loop import distributed_summary

        from pride.identity import stage_identity

        if not self.save_model:
            self.trained = self.acc.unwrap_model(result.prepared).model
            self.trained.eval()
            summary = {"model": None, "steps": result.steps, "data": stats, "identity": stage_identity(self.cfg),
                       "final": result.metrics[-1] if result.metrics else {},
                       "distributed": distributed_summary(self.acc, self.cfg.train)}
            self.write_json(SUMMARY, summary)
            self.console.print("[bold green]done[/]: model kept in memory for the next round (online.save_every)")
            return summary
        out = save_final_model(self.acc, result.prepared, tokenizer, model_dir(self.run_dir))
        summary = {"model": str(out), "steps": result.steps, "data": stats, "identity": stage_identity(self.cfg),
                   "final": result.metrics[-1] if result.metrics else {},
                   "distributed": distributed_summary(self.acc, self.cfg.train)}
        if self.acc.is_main_process:
            from pride.io import write_text
            from pride.model_card import model_card

            write_text(out / "README.md", model_card(self.cfg, kind, summary))
        self.write_json(SUMMARY, summary)
        if self.acc.is_main_process:
            from pride.plot import stage_curves

            stage_curves(self.run_dir, f"{self.run_dir.name}: training curves")
        self.console.print(f"[bold green]done[/]: model saved to {out}")
        return summary


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

    `prepared` is what the loop trained (the accelerate-prepared `TokenLogps` or `SequenceScores`): its state
    dict is gathered from every rank (FSDP, ZeRO-3) and stripped of the wrapper's prefix.
    LoRA adapters are merged into the weights (the adapter alone goes to `adapter/`).
    """
    from pride.logps import TokenLogps
    from pride.scores import SequenceScores

    out_dir = Path(out_dir)
    check_not_input(out_dir)  # the model this run started from is never replaced by its result
    unwrapped = acc.unwrap_model(prepared)
    wrapped = isinstance(unwrapped, (TokenLogps, SequenceScores))
    model = unwrapped.model if wrapped else unwrapped
    state = acc.get_state_dict(prepared)
    if wrapped:
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
            if write_problem(e):
                needed = sum(t.numel() * t.element_size() for t in (state or model.state_dict()).values())
                raise disk_error(e, out_dir.parent, needed) from None
            raise
        share(tmp)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
    acc.wait_for_everyone()
    return out_dir


def console_for(acc: Accelerator) -> Console:
    """Main process only; wide enough for tables when writing to a file or pipe."""
    import sys

    return Console(stderr=True, quiet=not acc.is_main_process, soft_wrap=True,
                   width=None if sys.stderr.isatty() else 160)
