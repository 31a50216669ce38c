"""The run-directory layout, in one place: every writer and reader of a run asks here.

    <run>/config.yaml, metrics.jsonl, summary.json, data_stats.json
    <run>/model/                 the final model (HF format)
    <run>/checkpoints/checkpoint-<step>/
    <run>/iteration-<n>/         an online round: generations, scores, pairs, then a training run
    <run>/iteration-<n>/round.json (its identity), iteration.json (when finished), <run>/iterations.jsonl
    <run>/stage.json             a finished recipe stage: its identity, model and seconds
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from pride.errors import PrideError
from pride.io import make_dir, read_record, write_json

MODEL = "model"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
STAGE_MARKER = "stage.json"
ITERATION_SUMMARY = "iteration.json"
ITERATIONS = "iterations.jsonl"
ROUND_IDENTITY = "round.json"  # an online round's identity, written when it starts
SUMMARY = "summary.json"
WANDB_RUN = "wandb.json"  # the training run's wandb project, group and id, for `pride eval` to log into


def model_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / MODEL


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """The run's `checkpoint-<step>` directories (not the temp ones being written), in step order."""
    found = [p for p in checkpoints_dir(run_dir).glob("checkpoint-*")
             if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def is_checkpoint(path: str | Path) -> bool:
    """Whether `path` is one of a run's checkpoint directories."""
    p = Path(path)
    return p.parent.name == CHECKPOINTS and p in checkpoint_dirs(p.parent.parent)


def iteration_dir(run_dir: str | Path, n: int) -> Path:
    return Path(run_dir) / f"iteration-{n}"


def is_saved_model(path: str | Path) -> bool:
    """Whether a saved model is there (`save_final_model` renames a finished temp dir into place)."""
    return (Path(path) / "config.json").exists()


def final_model(run_dir: str | Path, iterations: int | None = None) -> Path:
    """Where a finished stage leaves its model: `model/`, or an online stage's last iteration's."""
    if iterations:
        return model_dir(iteration_dir(run_dir, iterations))
    return model_dir(run_dir)


def saved_models(run_dir: str | Path) -> list[tuple[str, Path]]:
    """Every saved model of a run, in training order: ("", model/) then ("iteration-<n>", ...)."""
    root = Path(run_dir)
    found = [("", model_dir(root))] if is_saved_model(model_dir(root)) else []
    iterations = [p for p in root.glob("iteration-*") if p.name.split("-", 1)[1].isdigit()]
    for p in sorted(iterations, key=lambda p: int(p.name.split("-", 1)[1])):
        if is_saved_model(model_dir(p)):
            found.append((p.name, model_dir(p)))
    return found


def clear_run(run_dir: str | Path) -> list[str]:
    """Remove what an earlier run left in `run_dir` (checkpoints, metrics, model, summary, stage
    marker, wandb run) when a new run starts from step 0, so a run directory holds one run.
    Returns the names removed."""
    import shutil

    from pride.io import check_not_input

    removed = []
    for name in (CHECKPOINTS, METRICS, MODEL, MODEL + ".tmp", SUMMARY, STAGE_MARKER, WANDB_RUN):
        path = Path(run_dir) / name
        if path.exists() or path.is_symlink():
            check_not_input(path)  # e.g. model/ is the model this run starts from
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def read_stage(run_dir: str | Path) -> dict | None:
    """A finished recipe stage's record, or None: also when what it made is gone (its model, or an
    eval stage's scores.json, deleted since): a stage without its outputs is not finished."""
    info = read_record(Path(run_dir) / STAGE_MARKER)
    if info is None:
        return None
    if info.get("model") and not is_saved_model(info["model"]):
        return None
    if info.get("type") == "eval" and not (Path(run_dir) / "scores.json").is_file():
        return None
    return info


def write_stage(run_dir: str | Path, info: dict) -> None:
    write_json(Path(run_dir) / STAGE_MARKER, info)


def read_iteration(it_dir: str | Path) -> dict | None:
    """A finished online round's summary (readable and its model saved), else None."""
    info = read_record(Path(it_dir) / ITERATION_SUMMARY)
    return info if info is not None and is_saved_model(model_dir(it_dir)) else None


def start_round(it_dir: str | Path, identity: str) -> bool:
    """Make `it_dir` this round's: kept (to resume) when it was started with the same identity,
    else emptied first. Returns whether an earlier round's different work was removed."""
    import shutil

    it_dir = Path(it_dir)
    recorded = read_record(it_dir / ROUND_IDENTITY) or {}
    stale = it_dir.is_dir() and recorded.get("identity") != identity and any(it_dir.iterdir())
    if stale:
        from pride.io import check_not_input

        check_not_input(it_dir)
        shutil.rmtree(it_dir)
    write_json(it_dir / ROUND_IDENTITY, {"identity": identity})
    return stale


def write_iteration(it_dir: str | Path, info: dict) -> None:
    write_json(Path(it_dir) / ITERATION_SUMMARY, info)


@contextmanager
def exclusive(run_dir: Path, setting: str = "output_dir"):
    """One pride process per run directory (per rank): a second one stops with a clear message
    instead of interleaving metrics and mixing models and configs."""
    from filelock import FileLock, Timeout

    make_dir(run_dir)
    lock = FileLock(str(run_dir / f".pride-lock-rank{os.environ.get('RANK', '0')}"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise PrideError(f"{run_dir} is in use by another pride process (it holds {lock.lock_file}); "
                         f"wait for it to finish or choose another {setting}") from None
    except OSError as e:  # a read-only filesystem, no permission
        raise PrideError(f"{run_dir}: cannot write there ({e.strerror}); choose another {setting}") from None
    try:
        yield
    finally:  # no lock file left behind once the run ends (removed while still held)
        Path(lock.lock_file).unlink(missing_ok=True)
        lock.release()
