"""pride's one generation engine: `pride serve`, online sampling and the demo all run it.

Requests wait in a queue; a worker thread turns them into groups (requests with the same
sampling settings, up to `max_batch_size` rows; a seeded request is a group of its own so
its output does not depend on its neighbours, unless its caller batches it on purpose with
`batch`) and runs every active group a few tokens at a time, round robin. Each segment
continues the decode from the group's KV cache, so:

* a long generation never holds the others back for more than one segment;
* rows that finished (end of turn, a stop string, max_tokens) or whose client went away
  leave the batch between segments, cache rows included;
* streamed requests receive their text after every segment.

Every row samples with its own `torch.Generator` (choice k of a request seeded s: seed
s + k, or the request's `seeds[k]`), so a seeded sample is the same whatever else runs, and
the global RNG is never touched. In-process callers (online sampling, the demo) call
`generate`, which runs requests to the end in the calling thread.
"""

from __future__ import annotations

import inspect
import math
import queue
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch

SEGMENT_TOKENS = 8  # tokens per turn of a group: streaming granularity vs per-call overhead


@dataclass
class Request:
    """One completion request with `n` choices. `emit(event)` is called from the engine thread:
    ("delta", choice, text, logprob entries), ("finish", choice, reason, n_tokens), ("done",), ("error", message)."""

    prompt_ids: list[int]
    emit: Callable[[tuple], None]
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0
    seed: int | None = None  # choice k samples with seed + k
    seeds: list[int] | None = None  # or one seed per choice (online samples record theirs)
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens whatever the model says
    batch: object = None  # in-process callers: requests with the same key (and settings) run together
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def sampling(self) -> bool:
        return self.temperature > 0

    def choice_seed(self, k: int) -> int | None:
        """Within torch's seed range whatever the request said (seeds wrap modulo 2^64, as torch
        maps a negative seed), so no seed can stop the engine."""
        seed = self.seeds[k] if self.seeds is not None else None if self.seed is None else self.seed + k
        return None if seed is None else seed % 2**64

    def group_key(self):
        settings = (self.temperature if self.sampling else 0.0, self.top_p if self.sampling else 1.0, self.logprobs,
                    self.ignore_eos)
        if self.batch is not None:
            return ("batch", self.batch, *settings)
        if self.seed is not None or self.seeds is not None:
            return ("seeded", id(self))
        return settings


@dataclass
class Row:
    """One sequence being generated: choice `index` of `request` (greedy n>1: one row, copied)."""

    request: Request
    copies: list[int]  # choice indices this row answers
    tokens: list[int] = field(default_factory=list)
    logprobs: list[dict] = field(default_factory=list)
    sent: int = 0  # characters already emitted as deltas
    sent_logprobs: int = 0  # logprob entries already emitted
    finish: str | None = None
    n_tokens: int = 0  # tokens up to the end (a stop string's last token included)
    text: str = ""
    generator: torch.Generator | None = None  # sampling rows


class Group:
    def __init__(self, rows: list[Row], pad: int, device):
        self.rows = rows
        first = rows[0].request
        self.sampling, self.temperature, self.top_p = first.sampling, first.temperature, first.top_p
        self.logprobs = any(r.request.logprobs for r in rows)
        self.ignore_eos = first.ignore_eos
        width = max(len(r.request.prompt_ids) for r in rows)
        self.seq = torch.tensor([[pad] * (width - len(r.request.prompt_ids)) + r.request.prompt_ids for r in rows],
                                device=device)
        self.mask = torch.tensor([[0] * (width - len(r.request.prompt_ids)) + [1] * len(r.request.prompt_ids)
                                  for r in rows], device=device)
        self.cache = None

    def keep(self, keep: list[int]) -> None:
        """Only these rows go on (finished and cancelled ones leave, KV cache rows included)."""
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            return
        idx = torch.tensor(keep, device=self.seq.device)
        self.seq, self.mask = self.seq[idx], self.mask[idx]
        if self.cache is not None:
            self.cache.batch_select_indices(idx)


class Engine:
    """Batched generation for one model, in a background thread."""

    def __init__(self, model, tokenizer, max_batch_size: int = 8):
        self.model, self.tok = model.eval(), tokenizer
        self.device = next(model.parameters()).device
        self.max_batch_size = max_batch_size
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = model.generation_config.eos_token_id
        self.stop_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
        self.stop_ids.discard(None)
        self.queue: queue.Queue[Request | None] = queue.Queue()
        self.groups: list[Group] = []
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()
        self.unseeded = torch.Generator(device=self.device)
        self.unseeded.seed()  # unseeded requests: fresh randomness, still not the global RNG
        # transformers 5.24 renamed the KV cache argument and output `past_key_values` -> `cache`
        # (the old name goes in 5.40); earlier versions know only the old one
        self.cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def submit(self, request: Request) -> None:
        """Queue a request for the worker thread (started on first use)."""
        if self.thread is None:
            self.thread = threading.Thread(target=self._loop, name="pride-engine", daemon=True)
            self.thread.start()
        self.queue.put(request)

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what runs, end the worker thread and wait for it: a process must not exit while
        the thread is inside a forward pass (libtorch then aborts the process)."""
        self.stopping.set()
        for group in list(self.groups):
            for row in list(group.rows):
                row.request.cancelled.set()
        self.queue.put(None)  # wakes a worker waiting for work
        if self.thread is not None:
            self.thread.join(timeout)

    def generate(self, requests: list[Request]) -> None:
        """Run these requests to the end in the calling thread (no worker, no queue)."""
        with decode_attention(self.model):
            groups = self._groups(requests)
            while groups:
                for group in list(groups):
                    self._segment(group, SEGMENT_TOKENS)
                    if not group.rows:
                        groups.remove(group)

    @property
    def running(self) -> int:
        """Sequences being generated now."""
        return sum(len(g.rows) for g in list(self.groups))

    def complete(self, prompts: list[list[int]], n: int, seeds: list[list[int]] | None = None,
                 temperature: float = 1.0, top_p: float = 1.0, max_tokens: int = 256) -> list[list[str]]:
        """n texts per prompt, all prompts batched together (in rows of max_batch_size), choice k
        of prompt i sampled with seeds[i][k]. For in-process callers: online sampling, the demo."""
        texts = [[""] * n for _ in prompts]

        def collect(i):
            def emit(event):
                if event[0] == "delta":
                    texts[i][event[1]] += event[2]
                elif event[0] == "error":
                    raise RuntimeError(event[1])
            return emit

        batch = object()
        self.generate([Request(prompt_ids=ids, emit=collect(i), n=n, temperature=temperature, top_p=top_p,
                               max_tokens=max_tokens, seeds=seeds[i] if seeds else None, batch=batch)
                       for i, ids in enumerate(prompts)])
        return texts

    # -- scheduling ---------------------------------------------------------------

    def _loop(self) -> None:
        decode_attention(self.model).__enter__()  # the worker's model only generates (pride serve)
        while not self.stopping.is_set():
            self._admit(block=not self.groups)
            for group in list(self.groups):
                try:
                    self._segment(group)
                except Exception as e:  # noqa: BLE001 - the requests get the error, the server goes on
                    for r in {id(row.request): row.request for row in group.rows}.values():
                        r.emit(("error", f"{type(e).__name__}: {e}"))
                    group.rows = []
                if not group.rows:
                    self.groups.remove(group)

    def _admit(self, block: bool) -> None:
        new: list[Request] = []
        try:
            new.append(self.queue.get(block=block))
            while True:
                new.append(self.queue.get_nowait())
        except queue.Empty:
            pass
        new = [r for r in new if r is not None]  # None: stop() woke the worker
        try:
            self.groups += self._groups(new)
        except Exception as e:  # noqa: BLE001 - these requests get the error; the worker keeps serving
            for r in new:
                r.emit(("error", f"{type(e).__name__}: {e}"))

    def _groups(self, requests: list[Request]) -> list[Group]:
        """Rows of these requests, grouped by settings (and seed or batch), at most max_batch_size each."""
        by_key: dict = {}
        for req in requests:
            if req.cancelled.is_set():
                continue
            copies = [list(range(req.n))] if not req.sampling else [[k] for k in range(req.n)]
            pending = by_key.setdefault(req.group_key(), [[]])
            for c in copies:
                row = Row(req, c)
                if req.sampling:
                    seed = req.choice_seed(c[0])
                    row.generator = (torch.Generator(device=self.device).manual_seed(seed) if seed is not None
                                     else self.unseeded)
                if len(pending[-1]) >= self.max_batch_size:
                    pending.append([])
                pending[-1].append(row)
        return [Group(rows, self.pad, self.device) for groups in by_key.values() for rows in groups if rows]

    # -- one segment of one group ---------------------------------------------------

    @torch.no_grad()
    def _segment(self, g: Group, tokens: int = SEGMENT_TOKENS) -> None:
        g.keep([i for i, r in enumerate(g.rows) if not r.request.cancelled.is_set()])
        if not g.rows:
            return
        steps = min(tokens, max(r.request.max_tokens - len(r.tokens) for r in g.rows))
        new, logits = [], []
        stopped = [False] * len(g.rows)
        for _ in range(steps):
            last = self._forward(g)
            chosen = self._choose(g, last)
            new.append(chosen)
            logits.append(last)
            g.seq = torch.cat([g.seq, chosen[:, None]], dim=1)
            g.mask = torch.cat([g.mask, torch.ones_like(chosen)[:, None]], dim=1)
            stopped = [s or t in self.stop_ids for s, t in zip(stopped, chosen.tolist())]
            if all(stopped) and not g.ignore_eos:  # the rest of the segment would be thrown away
                break
        new_ids = torch.stack(new, dim=1).tolist()
        keep = []
        for i, row in enumerate(g.rows):
            self._advance(row, new_ids[i], logits, i)
            if row.finish is None:
                keep.append(i)
        g.keep(keep)

    def _forward(self, g: Group) -> torch.Tensor:
        """Logits [rows, vocab] of each row's next token; the prompt at first, then one token on the cache."""
        if g.cache is None:
            ids = g.seq
            positions = (g.mask.cumsum(-1) - 1).clamp(min=0)
        else:
            ids = g.seq[:, -1:]
            positions = g.mask.sum(-1, keepdim=True) - 1
        out = self.model(input_ids=ids, attention_mask=g.mask, position_ids=positions, **{self.cache_name: g.cache},
                         use_cache=True, logits_to_keep=1)  # never the prompt's [rows, T, vocab] logits
        g.cache = getattr(out, self.cache_name)
        return out.logits[:, -1, :].float()

    @staticmethod
    def _choose(g: Group, logits: torch.Tensor) -> torch.Tensor:
        """Greedy, or a sample per row from its own generator."""
        if not g.sampling:
            return logits.argmax(-1)
        probs = sampling_scores(logits, g.temperature, g.top_p).softmax(-1)
        return torch.cat([torch.multinomial(probs[i], 1, generator=row.generator) for i, row in enumerate(g.rows)])

    def _advance(self, row: Row, new: list[int], logits, i: int) -> None:
        req = row.request
        for step, tid in enumerate(new):
            if tid in self.stop_ids and not req.ignore_eos:
                row.finish = "stop"
                break
            row.tokens.append(tid)
            if req.logprobs:
                row.logprobs.append(self._logprob_entry(logits[step][i], tid, req.top_logprobs))
            if len(row.tokens) >= req.max_tokens:
                row.finish = "length"
                break
        text = self.tok.decode(row.tokens, skip_special_tokens=True)
        row.n_tokens = len(row.tokens)
        hits = [text.index(s) for s in req.stop if s and s in text]
        if hits:
            cut = min(hits)
            text, row.finish = text[:cut], "stop"
            row.n_tokens = self._tokens_through(row.tokens, cut)
            del row.logprobs[row.n_tokens:]
        row.text = text
        safe = len(text) if row.finish else _safe_length(text, req.stop)
        if safe > row.sent or (row.finish and len(row.logprobs) > row.sent_logprobs):
            entries = row.logprobs[row.sent_logprobs:] if safe == len(text) else []
            for k in row.copies:
                req.emit(("delta", k, text[row.sent:safe], entries))
            row.sent, row.sent_logprobs = safe, row.sent_logprobs + len(entries)
        if row.finish:
            for k in row.copies:
                req.emit(("finish", k, row.finish, row.n_tokens))

    def _tokens_through(self, tokens: list[int], chars: int) -> int:
        """Tokens generated until the text reached `chars` characters plus the stop string."""
        for k in range(1, len(tokens) + 1):
            if len(self.tok.decode(tokens[:k], skip_special_tokens=True)) > chars:
                return k
        return len(tokens)

    def _logprob_entry(self, logits: torch.Tensor, tid: int, top: int) -> dict:
        lp = torch.log_softmax(logits.float(), -1)
        entry = self._token(tid, float(lp[tid]))
        if top:
            values, idx = lp.topk(top)
            entry["top_logprobs"] = [self._token(int(j), float(v)) for v, j in zip(values, idx)]
        else:
            entry["top_logprobs"] = []
        return entry

    def _token(self, tid: int, logprob: float) -> dict:
        text = self.tok.decode([tid])
        return {"token": text, "logprob": logprob if math.isfinite(logprob) else -9999.0,
                "bytes": list(text.encode("utf-8"))}


@contextmanager
def decode_attention(model):
    """sdpa (eager where the architecture has none) while generating, when the model trains with flex_attention: flex pays off on the
    block masks of packed training rows, but a decode step (one query on a growing cache)
    recompiles its kernel as shapes change; the model is given back as it came."""
    from pride.models import attention_backend

    attn = attention_backend(model)
    if attn != "flex_attention":
        yield
        return
    model.set_attn_implementation("sdpa" if getattr(model, "_supports_sdpa", False) else "eager")
    try:
        yield
    finally:
        model.set_attn_implementation(attn)


def sampling_scores(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Logits after temperature and top-p, as transformers' TemperatureLogitsWarper and
    TopPLogitsWarper compute them (top_k off): tokens outside the nucleus get -inf."""
    scores = logits / temperature
    if top_p < 1.0:
        ordered, order = torch.sort(scores, descending=False)
        drop = ordered.softmax(-1).cumsum(-1) <= (1 - top_p)
        drop[..., -1:] = False  # keep at least one token
        scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return scores


def _safe_length(text: str, stops: list[str]) -> int:
    """How much of unfinished text can be streamed: not an incomplete character, nor a tail
    that may still become a stop string."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    for s in stops:
        for k in range(min(len(s) - 1, end), 0, -1):
            if text[:end].endswith(s[:k]):
                end -= k
                break
    return max(end, 0)
