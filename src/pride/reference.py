"""Reference log-probs, in one place: computed once and stored as data (LION's speed and
memory trick), or from a live reference model on request.

One no-grad pass of the reference model gives, per pair, the summed log-probs of the
chosen and rejected completion tokens and their token counts. They are written to
`reference_logps.parquet` (one row per input pair, in input order), keyed by the reference
model (file metadata) and per pair by its exact token ids (so tokenizer, template, lengths
and truncation are all in it, and adding, dropping or reordering pairs keeps the others).
Ranks split the pairs and gather the results. The values then ride on the pair's samples
(`Sample.ref_logps`) into every micro-batch.
"""

from __future__ import annotations

import copy
import hashlib
import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from pride.config import Config, ModelSettings
from pride.data.packing import Sample, collate, hash_samples
from pride.data.preference import PairData
from pride.io import disk_error
from pride.logps import TokenLogps, attention_weight, pair_logps
from pride.models import load_model

COLUMNS = ("ref_chosen_logps", "ref_rejected_logps", "chosen_tokens", "rejected_tokens")


@dataclass
class PairLogps:
    chosen: torch.Tensor  # [pairs] summed log-probs
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor  # [pairs] completion lengths
    rejected_tokens: torch.Tensor


def model_fingerprint(settings: ModelSettings, seed: int) -> str:
    """Identity of a model's weights without reading them: config + weight files' sizes and times."""
    path = Path(settings.path)
    if settings.path.startswith("tiny:"):
        return json.dumps({"tiny": settings.path, "seed": seed, "overrides": settings.tiny}, sort_keys=True)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
        return json.dumps([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    return json.dumps({"hub": settings.path, "revision": settings.revision})


def cache_key(fingerprint: str) -> str:
    """Key of the reference model (stored in the file's metadata)."""
    return hashlib.sha256(fingerprint.encode()).hexdigest()


def pair_key(row: list[Sample]) -> str:
    """Key of one pair's content: its exact token ids and targets (template, truncation included)."""
    h = hashlib.sha256()
    hash_samples(h, row)
    return h.hexdigest()


@torch.no_grad()
def compute_pair_logps(acc: Accelerator, model: torch.nn.Module, rows: list[list[Sample]], pad_id: int,
                       batch_size: int, chunk_size: int = 256, layout: str = "repack",
                       attention_weight: float = 0.0, console=None) -> PairLogps:
    """Summed completion log-probs of every pair (in the order of `rows`), split across ranks, gathered on all
    (`console`: the main process's progress)."""
    from pride.progress import Phase

    wrapper = TokenLogps(model, chunk_size)
    was_training = model.training
    model.eval()
    index = {row[0].example: i for i, row in enumerate(rows)}
    local = []
    batches = [list(range(i, min(i + batch_size, len(rows)))) for i in range(0, len(rows), batch_size)]
    mine = batches[acc.process_index::acc.num_processes]
    with Phase(console, "reference log-probs", len(mine) and sum(map(len, mine)), "pairs",
               enabled=console is not None and acc.is_main_process) as progress:
        for idx in mine:
            batch = collate([rows[i] for i in idx], pad_id, layout=layout,
                            attention_weight=attention_weight).to(acc.device)
            with acc.autocast():
                logps = wrapper(**batch.inputs())
            w, l, len_w, len_l, c, _ = pair_logps(logps, batch)
            examples = batch.seq_example[c].tolist()
            local += [(index[ex], *values) for ex, *values in
                      zip(examples, w.tolist(), l.tolist(), len_w.tolist(), len_l.tolist())]
            progress.advance(len(idx))
    if was_training:
        model.train()
    gathered = gather_object(local) if acc.num_processes > 1 else local
    n = len(rows)
    out = PairLogps(torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64),
                    torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long))
    for i, w, l, len_w, len_l in gathered:
        out.chosen[i], out.rejected[i], out.chosen_tokens[i], out.rejected_tokens[i] = w, l, len_w, len_l
    return out


def write_parquet(path: Path, data: PairData, logps: PairLogps, key: str, where: list[str]) -> None:
    """One row per input pair, in input order; skipped pairs carry their status and nulls."""
    n = len(data.status)
    cols: dict[str, list] = {"pair": list(range(n)), "where": where, "status": data.status, "pair_key": [None] * n}
    for name in COLUMNS:
        cols[name] = [None] * n
    for k, i in enumerate(data.kept):
        cols["pair_key"][i] = pair_key(data.rows[k])
        cols["ref_chosen_logps"][i] = float(logps.chosen[k])
        cols["ref_rejected_logps"][i] = float(logps.rejected[k])
        cols["chosen_tokens"][i] = int(logps.chosen_tokens[k])
        cols["rejected_tokens"][i] = int(logps.rejected_tokens[k])
    table = pa.table(cols).replace_schema_metadata({"pride_cache_key": key})
    tmp = path.with_suffix(".parquet.tmp")
    try:
        pq.write_table(table, tmp)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise disk_error(e, path.parent) from None
    tmp.replace(path)


def same_layout(path: Path, data: PairData, where: list[str]) -> bool:
    """Whether the file's rows are this input's pairs, in this order, with these statuses."""
    cols = pq.read_table(path, columns=["where", "status"]).to_pydict()
    return cols["where"] == list(where) and cols["status"] == list(data.status)


def read_cached(path: Path, data: PairData, key: str, warn=print) -> PairLogps | None:
    """The stored values of every kept pair, looked up by content, if all are there for this model.

    Pairs added, removed, skipped or reordered since do not matter; a pair whose tokens
    changed is a miss (everything is computed again). An unreadable file is a miss with a warning.
    """
    if not path.exists():
        return None
    try:
        table = pq.read_table(path)
        if (table.schema.metadata or {}).get(b"pride_cache_key", b"").decode() != key:
            return None
        cols = table.to_pydict()
        stored = {k: i for i, k in enumerate(cols["pair_key"]) if k is not None}
        idx = [stored.get(pair_key(row)) for row in data.rows]
        if any(i is None for i in idx):
            return None
        return PairLogps(*(torch.tensor([cols[name][i] for i in idx], dtype=dtype) for name, dtype in (
            ("ref_chosen_logps", torch.float64), ("ref_rejected_logps", torch.float64),
            ("chosen_tokens", torch.long), ("rejected_tokens", torch.long))))
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as e:
        warn(f"warning: {path} is unreadable ({e}); computing the reference log-probs again")
        return None


def reference_settings(cfg: Config) -> ModelSettings:
    """The reference model: `preference.reference_model`, else the starting policy (without its LoRA)."""
    if cfg.preference.reference_model is None:
        return cfg.model
    return cfg.model.model_copy(update={"path": cfg.preference.reference_model, "lora": None,
                                        "gradient_checkpointing": False})


def attach(rows: list[list[Sample]], logps: PairLogps) -> None:
    """Put each pair's reference sums on its chosen and rejected samples."""
    for row, w, l in zip(rows, logps.chosen.tolist(), logps.rejected.tolist()):
        row[0].ref_logps, row[1].ref_logps = w, l


def precompute(ctx, policy, tokenizer, data: PairData, where: list[str], path: Path, layout: str) -> PairLogps:
    """Reference sums of every kept pair, from the cache when it matches, else computed with the
    reference model (the policy itself by default: no second model in memory) and stored."""
    cfg, acc = ctx.cfg, ctx.acc
    settings = reference_settings(cfg)
    key = cache_key(model_fingerprint(settings, cfg.seed))
    cached = read_cached(path, data, key, warn=ctx.console.print)
    if cached is not None:
        ctx.console.print(f"reference log-probs: cached in {path}")
        if acc.is_main_process and not same_layout(path, data, where):  # re-align rows to this input
            write_parquet(path, data, cached, key, where)
        acc.wait_for_everyone()
        return cached
    model = policy if cfg.preference.reference_model is None else load_model(
        settings, seed=cfg.seed, device=acc.device).to(acc.device)
    ctx.console.print(f"reference log-probs: computing for {len(data.rows)} pairs")
    with model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext():
        out = compute_pair_logps(acc, model, data.rows, tokenizer.pad_token_id, cfg.preference.reference_batch_size,
                                 cfg.train.logps_chunk_size, layout, attention_weight(model.config), ctx.console)
    if model is not policy:
        del model
    if acc.is_main_process:
        write_parquet(path, data, out, key, where)
    acc.wait_for_everyone()
    return out


def live(cfg: Config, acc: Accelerator, policy):
    """A callable batch -> reference token log-probs, with a reference model held in memory
    (`preference.reference=live`; with LoRA and no reference_model, the policy with its adapter off)."""
    if cfg.preference.reference_model is None and hasattr(policy, "disable_adapter"):
        wrapper = TokenLogps(policy, cfg.train.logps_chunk_size)

        def with_adapter_off(batch):
            with policy.disable_adapter():
                return wrapper(**batch.inputs())

        return with_adapter_off
    if cfg.preference.reference_model is None:
        ref = copy.deepcopy(policy).eval()  # the starting policy, frozen
    else:
        ref = load_model(reference_settings(cfg), seed=cfg.seed, device=acc.device).to(acc.device).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    wrapper = TokenLogps(ref, cfg.train.logps_chunk_size)
    return lambda batch: wrapper(**batch.inputs())


@torch.no_grad()
def token_logps(acc: Accelerator, model: torch.nn.Module, rows: list[list[Sample]], pad_id: int, batch_size: int,
                chunk_size: int = 256, temperature: float = 1.0, console=None,
                label: str = "old log-probs", layout: str = "repack") -> list[list[float]]:
    """Per-token log-probs of each sample of the rows (in their order; `layout` group: a row's
    samples share its prompt, computed once; `batch_size` counts samples): the GRPO family's
    old log-probs (the policy that sampled) and, with beta > 0, the reference's. Split across
    ranks, gathered on all. The logits are divided by the sampling temperature, as the training
    forward divides them, so the ratio of the two is exact."""
    from pride.progress import Phase

    wrapper = TokenLogps(model, chunk_size, temperature)
    was_training = model.training
    model.eval()
    samples = [s for row in rows for s in row]
    index = {(s.example, s.seq): i for i, s in enumerate(samples)}
    batches, current = [], []
    for i, row in enumerate(rows):  # whole rows, about batch_size samples a batch
        current.append(i)
        if sum(len(rows[j]) for j in current) >= batch_size:
            batches.append(current)
            current = []
    batches += [current] if current else []
    mine = batches[acc.process_index::acc.num_processes]
    local = []
    with Phase(console, label, sum(len(rows[i]) for idx in mine for i in idx), "samples",
               enabled=console is not None and acc.is_main_process) as progress:
        for idx in mine:
            batch = collate([rows[i] for i in idx], pad_id, layout=layout).to(acc.device)
            with acc.autocast():
                logps = wrapper(**batch.inputs()).float().cpu()
            seq = batch.target_seq.cpu()
            for s, (example, kind) in enumerate(zip(batch.seq_example.tolist(), batch.seq_kind.tolist())):
                local.append((index[(example, kind)], logps[seq == s].tolist()))
            progress.advance(sum(len(rows[i]) for i in idx))
    if was_training:
        model.train()
    gathered = gather_object(local) if acc.num_processes > 1 else local
    out: list[list[float]] = [[] for _ in samples]
    for i, values in gathered:
        out[i] = values
    return out


def reference_policy(cfg: Config, acc: Accelerator, policy):
    """The reference model of a policy-gradient round: `preference.reference_model`, loaded, or
    None when it is the round's starting policy (whose values the old log-probs already are)."""
    if cfg.preference.reference_model is None:
        return None
    return load_model(reference_settings(cfg), seed=cfg.seed, device=acc.device).to(acc.device)
