"""A stage's identity: what it ran with, by content, so a re-run skips a stage only when
nothing it consumed changed (issue 27).

The identity hashes the resolved config, pride's version, the identity of the stage it starts
from, and the bytes of every local input: data files and directories, the starting model and
tokenizer directories, the evaluation's benchmark files. A file up to `WHOLE` bytes is hashed
whole; a larger one (model weights) by its size, modification time and its first and last
MiB, which changes when it is rewritten or replaced and costs milliseconds on a 16 GB file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pride import __version__

WHOLE = 64 * 2**20  # bytes hashed in full; above, size + mtime + first and last MiB
EDGE = 2**20


def file_digest(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if st.st_size <= WHOLE:
            for block in iter(lambda: f.read(EDGE), b""):
                h.update(block)
        else:
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
            h.update(f.read(EDGE))
            f.seek(-EDGE, os.SEEK_END)
            h.update(f.read(EDGE))
    return h.hexdigest()


def content_digest(path: str | Path) -> str | None:
    """The content of a local file or directory (every file under it, by relative name), or None
    when the path is not local (a hub id, `tiny:<arch>`)."""
    p = Path(path).expanduser()
    if p.is_file():
        return file_digest(p)
    if not p.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(f"{f.relative_to(p)}={file_digest(f)}\n".encode())
    return h.hexdigest()


def stage_inputs(cfg) -> list[str]:
    """The local paths a stage consumes: every setting the config marks as an input
    (`pride.config.input_paths`: models, tokenizers, data, reference model, judges, task
    references, benchmark files, lm-eval task folders)."""
    from pride.config import input_paths

    return list(dict.fromkeys([*(p for p in input_paths(cfg) if p), *user_code(cfg)]))


def user_code(cfg) -> list[str]:
    """The source files of the user's code a stage imports (a function judge's module), so an edit
    to it re-runs the rounds it judged, as an edited data file does."""
    import importlib.util

    judge = getattr(getattr(cfg, "online", None), "judge", None)
    if judge is None or judge.type != "function" or not judge.function or ":" not in judge.function:
        return []
    try:
        spec = importlib.util.find_spec(judge.function.split(":", 1)[0])
    except (ImportError, ValueError):
        return []  # not importable: the judge's own check says so, in one line
    origin = getattr(spec, "origin", None) if spec is not None else None
    return [origin] if origin and origin.endswith(".py") and Path(origin).is_file() else []


def stage_identity(cfg, upstream: str = "") -> str:
    """Config, pride's version, the upstream stage's identity and the inputs' content."""
    inputs = {p: content_digest(p) for p in stage_inputs(cfg)}
    body = json.dumps({"config": cfg.model_dump(mode="json"), "pride": __version__, "upstream": upstream,
                       "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def round_identity(cfg, n: int, previous: str) -> str:
    """An online round's identity: the stage's settings (less those a resume may change, and the
    number of rounds unless it splits the prompts), pride's version, the inputs' content, the round
    number and the previous round's identity. A round whose recorded identity differs is redone."""
    from pride.train.loop import run_identity

    settings = run_identity(cfg)
    if cfg.online.prompt_split != "split":
        settings.pop("online.iterations", None)  # adding rounds later does not change this one
    inputs = {p: content_digest(p) for p in stage_inputs(cfg)}
    body = json.dumps({"settings": settings, "pride": __version__, "round": n, "previous": previous,
                       "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def finished_earlier(cfg) -> bool:
    """A stage run directory whose summary.json records this config's identity (settings, pride's
    version, the inputs' content) and whose model is saved: running it again would redo finished
    work. `train.resume=never` always runs."""
    from pride.io import read_record
    from pride.rundir import is_saved_model, model_dir

    if cfg.train.resume == "never":
        return False
    summary = read_record(Path(cfg.output_dir) / "summary.json")
    return bool(summary) and summary.get("identity") == stage_identity(cfg) and is_saved_model(model_dir(cfg.output_dir))
