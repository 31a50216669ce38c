"""Reference log-probs, computed once and stored as data (LION's speed and memory trick).

One no-grad pass of the reference model gives, per pair, the summed log-probs of the
chosen and rejected completion tokens and their token counts. They are written to
`reference_logps.parquet` (one row per input pair, in input order), keyed by the reference
model (file metadata) and per pair by its exact token ids (so tokenizer, template, lengths
and truncation are all in it, and adding, dropping or reordering pairs keeps the others). Ranks split the pairs and gather the results.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from pride.config import ModelSettings
from pride.data.packing import Sample, collate, hash_samples
from pride.data.preference import PairData
from pride.io import disk_error
from pride.logps import TokenLogps, sequence_logps

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
                       attention_weight: float = 0.0) -> PairLogps:
    """Summed completion log-probs of every pair, split across ranks, gathered on all."""
    wrapper = TokenLogps(model, chunk_size)
    was_training = model.training
    model.eval()
    first = min(s.example for row in rows for s in row) if rows else 0
    local = []
    batches = [list(range(i, min(i + batch_size, len(rows)))) for i in range(0, len(rows), batch_size)]
    for idx in batches[acc.process_index::acc.num_processes]:
        batch = collate([rows[i] for i in idx], pad_id, layout=layout, attention_weight=attention_weight)
        batch = {k: (v.to(acc.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        with acc.autocast():
            logps = wrapper(**batch)
        seq = sequence_logps(logps.float(), batch["target_seq"], batch["n_seqs"]).cpu()
        counts = torch.bincount(batch["target_seq"].cpu(), minlength=batch["n_seqs"])
        for j in range(batch["n_seqs"]):
            local.append((int(batch["seq_example"][j]) - first, int(batch["seq_kind"][j]), float(seq[j]), int(counts[j])))
    if was_training:
        model.train()
    gathered = gather_object(local) if acc.num_processes > 1 else local
    n = len(rows)
    out = PairLogps(torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64),
                    torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long))
    for ex, kind, lp, count in gathered:
        (out.chosen if kind == 0 else out.rejected)[ex] = lp
        (out.chosen_tokens if kind == 0 else out.rejected_tokens)[ex] = count
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
