"""`pride run RECIPE.yaml`: the stages a recipe lists, each in its own run directory.

A recipe is one YAML file: shared sections (`model`, `train`, `preference`, `kto`, `online`,
`eval`, `seed`), `output_dir`, and `stages`, each with a `name`, a `type` (sft | dpo | kto | rm |
online | sppo | eval) and its own sections, merged over the shared ones. A stage starts
from the policy of the stage before it (or of the stage named in `from`); the first from
`model.path`. An rm stage's reward model is no policy: a later online stage judges with it
(`online.judge.path: stage:NAME`). Overrides: `key=value` for the shared sections, `STAGE.key=value` for one
stage (e.g. `sft.data.sources.0.path=chat.jsonl`).

Each finished stage writes `stage.json` with its identity (`pride.identity`): a hash of its
resolved config, pride's version, the content of its local inputs (data files, starting model,
tokenizer, benchmark files) and the identity of the stage it starts from, so a change anywhere
upstream (the SFT learning rate, a data file edited in place, a replaced model) re-runs
everything downstream. A re-run skips a stage whose identity matches and resumes an
interrupted one.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pride.config import (Config, apply_override, did_you_mean, launched_processes, load_yaml, parse_override,
                          validate_config)
from pride.errors import PrideError
from pride.identity import stage_identity
from pride.rundir import final_model, read_stage, write_stage
from pride.stages import STAGES

StageType = Literal[tuple(STAGES)]
SHARED = ("model", "data", "train", "preference", "kto", "reward", "online", "eval", "seed")
STAGE_REF = "stage:"  # online.judge.path: stage:NAME, the reward model an earlier rm stage trained


class StageSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    type: StageType
    from_: str | None = Field(None, alias="from")

    @field_validator("name")
    @classmethod
    def _a_directory_name(cls, v: str) -> str:
        """The stage's run directory is output_dir/<name>: it must stay inside output_dir."""
        if not v or v in (".", "..") or "/" in v or "\\" in v:
            raise ValueError(f"a stage name is one directory name (no '/', not '.' or '..'), got {v!r}")
        return v


class RecipeFile(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str | None = None
    source: str | None = Field(None, description="the paper/repository this recipe reproduces")
    reproduces: str | None = None
    output_dir: str = Field("runs/recipe", min_length=1)
    stages: list[StageSpec] = Field(min_length=1)


@dataclass
class Stage:
    name: str
    type: str
    start_from: str | None
    config: Config
    origin: dict[str, str] | None = None  # flattened key -> where its value came from (--dry-run)


def flatten(node, prefix: str = "") -> dict:
    """{"train.learning_rate": 1e-5, ...}: mappings walked, anything else (lists too) a value."""
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict = {}
    for k, v in node.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _origin(key: str, layers: list[tuple[str, set[str]]]) -> str:
    """The first layer that sets `key` or a section above it (a list index below it counts too)."""
    parts = key.split(".")
    prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    for name, keys in layers:
        if prefixes & keys or any(k.startswith(key + ".") for k in keys):
            return name
    return "default"


def deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_recipe(path: str | Path, overrides: list[str] = ()) -> tuple[RecipeFile, list[Stage]]:
    path = Path(path)
    if not path.is_file():
        raise PrideError(f"recipe not found: {path}")
    tree = load_yaml(path) or {}
    if not isinstance(tree, dict):
        raise PrideError(f"{path}: a recipe is a mapping (output_dir, shared sections, stages), "
                         f"got a {type(tree).__name__}")
    if not isinstance(tree.get("stages", []), list):
        raise PrideError(f"{path}: 'stages' must be a list of stages")
    names = [s.get("name") for s in tree.get("stages", []) if isinstance(s, dict)]
    clash = sorted({n for n in names if isinstance(n, str)} & (set(SHARED) | set(RecipeFile.model_fields)))
    if clash:  # `train.lr=...` on the command line would then set the stage's, not the shared section's
        raise PrideError(f"{path}: stage name '{clash[0]}' is also a shared section's key; name the stage otherwise "
                         f"(e.g. '{clash[0]}-1')")
    overridden: dict[str | None, set[str]] = {}  # stage name (None: shared) -> keys set on the command line
    texts: dict[str | None, dict[str, str]] = {}  # stage name (None: shared) -> key -> the override's text
    allowed_top = set(SHARED) | set(RecipeFile.model_fields)
    for text in overrides:
        parts, value = parse_override(text)
        if parts[0] not in names and parts[0] not in allowed_top:
            raise PrideError(f"override {text}: '{parts[0]}' is neither a stage of {path} "
                             f"({', '.join(n for n in names if isinstance(n, str))}) nor a shared section "
                             f"({', '.join(SHARED)}){did_you_mean(parts[0], [*names, *allowed_top])}")
        if parts[0] in names and len(parts) > 1:
            texts.setdefault(parts[0], {})[".".join(parts[1:])] = text
            apply_override(tree["stages"][names.index(parts[0])], parts[1:], value)
            overridden.setdefault(parts[0], set()).add(".".join(parts[1:]))
        else:
            apply_override(tree, parts, value)
            overridden.setdefault(None, set()).add(".".join(parts))
            texts.setdefault(None, {})[".".join(parts)] = text
    recipe = validate_config(tree, str(path), RecipeFile, overrides=texts.get(None))
    unknown = set(tree) - set(SHARED) - set(RecipeFile.model_fields)
    if unknown:
        raise PrideError(f"{path}: unknown key '{sorted(unknown)[0]}'{did_you_mean(sorted(unknown)[0], allowed_top)} (allowed: "
                         f"{', '.join(sorted(set(SHARED) | set(RecipeFile.model_fields)))})")
    shared = {k: tree[k] for k in SHARED if k in tree}
    stages, seen, types = [], set(), {}
    for i, spec in enumerate(recipe.stages):
        if spec.name in seen:
            raise PrideError(f"{path}: stage name '{spec.name}' is used twice")
        if spec.from_ is not None and spec.from_ not in seen:
            raise PrideError(f"{path}: stage '{spec.name}' starts from '{spec.from_}', which is not an earlier stage "
                             f"({', '.join(seen) or 'none'}){did_you_mean(spec.from_, seen)}")
        if spec.from_ is not None and types[spec.from_] == "eval":
            raise PrideError(f"{path}: stage '{spec.name}' starts from '{spec.from_}', an eval stage, which makes no "
                             "model; name the stage that trained it")
        if spec.from_ is not None and not STAGES[types[spec.from_]].policy and not reward_eval(tree["stages"][i], spec):
            raise PrideError(f"{path}: stage '{spec.name}' starts from '{spec.from_}', a reward model, not a policy; "
                             f"judge with it instead (online.judge.path: {STAGE_REF}{spec.from_}), or evaluate it "
                             "with an eval stage of eval.benchmarks [reward_accuracy]")
        seen.add(spec.name)
        types[spec.name] = spec.type
        own = {k: v for k, v in tree["stages"][i].items() if k not in ("name", "type", "from")}
        bad = set(own) - set(SHARED)
        if bad:
            raise PrideError(f"{path}: stage '{spec.name}': unknown key '{sorted(bad)[0]}'"
                             f"{did_you_mean(sorted(bad)[0], SHARED)} (allowed: {', '.join(SHARED)})")
        merged = deep_merge(shared, own)
        merged["output_dir"] = str(Path(recipe.output_dir) / spec.name)
        merged = deep_merge(STAGES[spec.type].defaults, merged)
        if spec.type == "eval":
            merged = deep_merge(merged, {"eval": {"output_dir": merged["output_dir"]}})
        config = validate_config(merged, f"{path} stage '{spec.name}'",
                                 overrides={**texts.get(None, {}), **texts.get(spec.name, {})})
        judge = config.online.judge.path or ""
        if judge.startswith(STAGE_REF) and types.get(judge[len(STAGE_REF):]) != "rm":
            raise PrideError(f"{path}: stage '{spec.name}': online.judge.path={judge} names no earlier rm stage "
                             f"(earlier rm stages: {', '.join(n for n, t in types.items() if t == 'rm') or 'none'})")
        layers = [("override", overridden.get(spec.name, set()) | overridden.get(None, set())),
                  (f"stage '{spec.name}'", set(flatten(own))), ("recipe (shared)", set(flatten(shared))),
                  (f"{spec.type} stage default", set(flatten(STAGES[spec.type].defaults))),
                  ("recipe output_dir/<stage>", {"output_dir", "eval.output_dir"})]
        origin = {k: _origin(k, layers) for k in flatten(config.model_dump(mode="json"))}
        stages.append(Stage(spec.name, spec.type, spec.from_, config, origin))
    return recipe, stages


def reward_eval(own: dict, spec) -> bool:
    """An eval stage whose only benchmark is reward_accuracy: what evaluating a reward model is."""
    benchmarks = ((own.get("eval") or {}).get("benchmarks") if isinstance(own.get("eval"), dict) else None) or []
    return spec.type == "eval" and list(benchmarks) == ["reward_accuracy"]


def starting_from(stage: Stage, start: str | None, models: dict[str, str] | None = None) -> Config:
    """The stage's config with `model.path` at the model it starts from (the first: its own), and
    a judge path `stage:NAME` at that stage's model."""
    cfg = stage.config
    judge = cfg.online.judge
    if judge.path and judge.path.startswith(STAGE_REF):
        path = (models or {}).get(judge.path[len(STAGE_REF):], judge.path)
        online = cfg.online.model_copy(update={"judge": judge.model_copy(update={"path": path})})
        cfg = cfg.model_copy(update={"online": online})
    if start is None:
        return cfg
    # the saved model directory carries its tokenizer (and the added chat tokens)
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": start, "tokenizer": None})})


def preflight(cfg: Config, kind: str, own_model: bool) -> str | None:
    """The checks a real run makes before its first expensive step, as one line (None: all pass):
    trackers installed and logged in, the model (its directory, or a hub id reachable or cached),
    local data files present, the judge usable (its directory, its function, its server)."""
    from pride.data.sources import check_local_source
    from pride.models import check_model_reference
    from pride.online.judges import check_judge
    from pride.trackers import check_trackers

    try:
        if kind == "eval":
            check_trackers(cfg.eval.report_to, "eval.report_to")
        else:
            check_trackers(cfg.train.report_to, "train.report_to")
        if own_model:
            check_model_reference(cfg.model)
        sources = [*cfg.data.sources, *cfg.data.eval_sources] if cfg.data else []
        for key, src in [(f"data.sources.{i}", s) for i, s in enumerate(sources)]:
            check_local_source(src, key)
        if kind in ("online", "sppo") and not (cfg.online.judge.path or "").startswith(STAGE_REF):
            check_judge(cfg.online.judge)
    except PrideError as e:
        return str(e)
    return None


def dry_run(path: str | Path, overrides: list[str] = (), world_size: int | None = None,
            all_settings: bool = False) -> str:
    """What `pride run` would do, without doing it: per stage, run / resume / skip and why, the
    checks the real run makes first (`preflight`), the launch's processes and the accumulation
    they give, and each resolved key that differs from pride's default (`all_settings`: every
    key) with its origin (override, the stage's own section, the recipe's shared sections, the
    stage type's defaults, pride's defaults)."""
    from pride.config import with_global_batch
    from pride.rundir import checkpoint_dirs

    recipe, stages = load_recipe(path, overrides)
    world = world_size or launched_processes()
    lines = [f"recipe {path}: {len(stages)} stage(s); this launch has {world} process(es)"]
    models, identities, runs = {}, {}, {}
    previous, previous_identity, previous_name = None, "", None
    for stage in stages:
        parent = stage.start_from or previous_name
        start = models[stage.start_from] if stage.start_from else previous
        upstream = identities[stage.start_from] if stage.start_from else previous_identity
        cfg = starting_from(stage, start, models)
        digest = stage_identity(cfg, upstream)
        info = read_stage(cfg.output_dir)
        ckpts = checkpoint_dirs(cfg.output_dir)
        judge = stage.config.online.judge.path or ""
        judge_stage = judge[len(STAGE_REF):] if judge.startswith(STAGE_REF) else None
        if parent is not None and runs[parent]:
            action, runs[stage.name] = f"run: the stage it starts from ({parent}) runs first", True
        elif judge_stage is not None and runs[judge_stage]:
            action, runs[stage.name] = f"run: the reward model it is judged by ({judge_stage}) is trained first", True
        elif info is not None and info.get("config_hash") == digest:
            action, runs[stage.name] = "skip: finished earlier with the same settings and inputs", False
        else:
            why = "its settings or inputs changed since it finished" if info is not None else "not finished yet"
            action = (f"resume from {ckpts[-1].name} if it was trained with these settings ({why})" if ckpts
                      else f"run ({why})")
            runs[stage.name] = True
        kind = STAGES[stage.type]
        model = (info or {}).get("model") if not runs[stage.name] else (
            str(final_model(cfg.output_dir, cfg.online.iterations if kind.iterative else None)) if kind.trains else None)
        try:
            t = with_global_batch(cfg, world).train
            batch = (f"global batch {world * t.gradient_accumulation_steps * t.micro_batch_size} rows = {world} "
                     f"process(es) x accumulation {t.gradient_accumulation_steps} x micro-batch {t.micro_batch_size}"
                     + (" (from train.global_batch_size)" if t.global_batch_size else ""))
        except PrideError as e:
            batch = f"cannot run with {world} process(es): {e}"
        problem = preflight(cfg, stage.type, own_model=start is None) if runs[stage.name] else None
        lines += ["", f"== {stage.name} ({stage.type}) -> {cfg.output_dir}", f"   {action}",
                  f"   checks: {'STOPS: ' + problem if problem else 'pass'}", f"   {batch}"]
        flat = flatten(cfg.model_dump(mode="json"))
        width = max(len(k) for k in flat)
        hidden = 0
        for key, value in flat.items():
            where = "the previous stage's model" if key == "model.path" and start is not None else stage.origin[key]
            if where == "default" and not all_settings:
                hidden += 1
                continue
            lines.append(f"   {key:<{width}} = {json.dumps(value, default=str)}   ({where})")
        if hidden:
            lines.append(f"   ({hidden} settings at pride's defaults not shown; --all-settings shows them)")
        identities[stage.name] = digest
        if model:
            models[stage.name] = model
        if model and kind.policy:
            previous, previous_identity, previous_name = model, digest, stage.name
    return "\n".join(lines)


def run_recipe(path: str | Path, overrides: list[str] = (), console=None) -> list[dict]:
    from rich.console import Console

    console = console or Console(stderr=True, soft_wrap=True)
    recipe, stages = load_recipe(path, overrides)
    models: dict[str, str] = {}
    identities: dict[str, str] = {}
    previous: str | None = None
    previous_identity = ""
    done = []
    for stage in stages:
        start = models[stage.start_from] if stage.start_from else previous
        upstream = identities[stage.start_from] if stage.start_from else previous_identity
        cfg = starting_from(stage, start, models)
        digest = stage_identity(cfg, upstream)
        info = read_stage(cfg.output_dir)
        if info is not None and info.get("config_hash") == digest:
            console.print(f"[bold]{stage.name}[/] ({stage.type}): finished earlier with the same inputs, skipped")
        else:
            console.rule(f"{stage.name} ({stage.type})")
            t = time.perf_counter()
            kind = STAGES[stage.type]
            kind.run(cfg)
            info = {"stage": stage.name, "type": stage.type, "config_hash": digest, "model": None,
                    "seconds": round(time.perf_counter() - t, 1)}
            if kind.trains:
                info["model"] = str(final_model(cfg.output_dir, cfg.online.iterations if kind.iterative else None))
            write_stage(cfg.output_dir, info)
        identities[stage.name] = digest
        if info.get("model"):
            models[stage.name] = info["model"]
        if info.get("model") and STAGES[stage.type].policy:
            previous, previous_identity = info["model"], digest
        done.append(info)
    from pride.plot import plot_runs

    try:  # one figure for the whole recipe; a figure never fails a finished run
        plot_runs([recipe.output_dir], Path(recipe.output_dir) / "curves.png",
                  f"{recipe.name or Path(recipe.output_dir).name}: every stage's training curves")
    except PrideError:
        pass
    return done
