"""A training checkpoint (`checkpoints/checkpoint-N`) as an HF model directory, so that
`eval.checkpoints` evaluates what it names (as LIONs' `find_checkpoint_paths` does): the
run's config.yaml rebuilds the model, the checkpoint's weights go in, and the exported
directory is removed once evaluated."""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from pride.errors import PrideError
from pride.rundir import checkpoint_dirs


def checkpoint_paths(run_dir: str | Path) -> list[Path]:
    """The run's intact checkpoints (as resuming judges them), in step order."""
    from pride.train.loop import checkpoint_state

    return [p for p in checkpoint_dirs(run_dir) if "problem" not in checkpoint_state(p)]


def checkpoint_weights(checkpoint: Path) -> dict:
    """The trained weights in a checkpoint, whichever set-up wrote it: `model.safetensors` (one
    process, DDP), `pytorch_model_fsdp.bin` (FSDP, full state dict) or `pytorch_model_fsdp_0/`
    (FSDP, sharded: merged by accelerate's `merge_fsdp_weights`). Keys as the loop's wrapper has them."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    single, full, sharded = (checkpoint / "model.safetensors", checkpoint / "pytorch_model_fsdp.bin",
                             checkpoint / "pytorch_model_fsdp_0")
    try:
        if single.is_file():
            return load_file(single)
        if full.is_file():
            return torch.load(full, map_location="cpu", weights_only=True)
        if sharded.is_dir():
            from accelerate.utils import merge_fsdp_weights

            with tempfile.TemporaryDirectory(prefix=f"{checkpoint.name}-merge-", dir=checkpoint.parent) as tmp:
                merge_fsdp_weights(str(sharded), tmp, safe_serialization=True)
                return load_file(Path(tmp) / "model.safetensors")
    except (SafetensorError, RuntimeError, OSError) as e:
        raise PrideError(f"{checkpoint}: its weights are unreadable ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    raise PrideError(f"{checkpoint}: no model weights (model.safetensors, or FSDP's pytorch_model_fsdp.bin or "
                     "pytorch_model_fsdp_0/)")


@contextmanager
def exported(checkpoint: str | Path):
    """Yield an HF directory with the checkpoint's weights (merged LoRA), removed afterwards: a causal
    LM, or for a reward model's run (a score head in the weights) a sequence-classification model."""
    from pride.config import load_config
    from pride.io import disk_error
    from pride.models import load_model_and_tokenizer

    checkpoint = Path(checkpoint)
    run_dir = checkpoint.parent.parent
    cfg = load_config(run_dir / "config.yaml")
    state = {k[len("model."):]: v for k, v in checkpoint_weights(checkpoint).items() if k.startswith("model.")}
    scored = any(k == "score.weight" or k.endswith(".score.weight") for k in state)  # a reward model's run
    model, tokenizer, _ = load_model_and_tokenizer(cfg.model, seed=cfg.seed, device="cpu",
                                                   head="score" if scored else "lm")
    if scored:  # saved as pride rm saves its model: a judge cuts and pools as training did
        from pride.scores import tokenizer_digest

        tokenizer.model_max_length, tokenizer.truncation_side = cfg.reward.max_length, cfg.reward.truncation_side
        tokenizer.init_kwargs["truncation_side"] = cfg.reward.truncation_side
        (model.get_base_model() if hasattr(model, "get_base_model") else model).config.update(
            {"pride_tokenizer": tokenizer_digest(tokenizer)})
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:  # a tied LM head is not stored twice
        raise PrideError(f"{checkpoint}: its weights do not fit the model of {run_dir / 'config.yaml'} "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if hasattr(model, "merge_and_unload"):  # peft
        model = model.merge_and_unload()
    out = Path(tempfile.mkdtemp(prefix=f"{checkpoint.name}-export-", dir=checkpoint.parent))
    try:
        try:
            model.save_pretrained(out, safe_serialization=True)
            tokenizer.save_pretrained(out)
        except Exception as e:  # noqa: BLE001 - a full disk, whatever library raised it, is one line
            error = disk_error(e, checkpoint.parent)
            if error is e:
                raise
            raise error from None
        del model
        yield out
    finally:
        shutil.rmtree(out, ignore_errors=True)
