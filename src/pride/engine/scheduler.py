"""Continuous batching: a `Lane` is a set of rows that decode together.

Each `step` of a lane:
1. drops rows whose client went away;
2. if no prefill is under way, admits waiting rows (first come, first served) while the lane
   has room (`max_rows`) and their prompts fit the step's budget (`prefill_tokens`);
3. feeds the prefill one chunk (at most `prefill_tokens` tokens: a prompt longer than that is
   fed over several steps; the n choices of one request feed their prompt once, and its cache
   is copied into each of their rows when it is in), so running rows never wait for more
   than a chunk; when the
   prompts are in, each new row samples its first token and joins the running batch: its KV
   cache written into a finished row's place when one is free and it fits the columns (a
   copy of the new rows alone), else merged in by one copy of the batch;
4. decodes one token for every running row; a row that finishes leaves the batch at once (its
   place kept for the next joining row while rows wait).

So a new request starts at the next step unless a burst is ahead of it in the budget, and a
slot freed by a finished row is taken at the next step (vLLM's scheduler does the same per
iteration, with a token budget too; it also
mixes the prefill chunk and the decode tokens into one forward, which needs a varlen
attention kernel: here they are two forwards of the same step)."""

from __future__ import annotations

from collections import deque

import torch

from pride.engine.cache import KV
from pride.engine.requests import Row
from pride.engine.sampling import choose

PREFILL_TOKENS = 512  # prompt tokens fed per step: what running rows wait for, and a burst's first token
OFFLINE_PREFILL_TOKENS = 8192  # in-process callers (online sampling, the demo): no one waits for a first token


class Prefill:
    """The prompts of rows admitted together, left-padded, fed a chunk of columns per step. The
    rows of one request (its n choices) share their prompt: it is fed once, and its cache and
    last logits are copied into each of its rows when the prompts are in (`prompt_of`)."""

    def __init__(self, rows: list[Row], pad: int, device):
        firsts: dict[int, int] = {}
        self.rows = rows
        self.prompt_of = [firsts.setdefault(id(r.request), len(firsts)) for r in rows]  # row -> fed prompt
        prompts = [r.request.prompt_ids for r in {id(r.request): r for r in rows}.values()]
        width = max(len(p) for p in prompts)
        self.ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        full = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        self.positions = (full.cumsum(-1) - 1).clamp(min=0)
        self.kv = KV(full[:, :0])
        self.full = full

    @property
    def fed(self) -> int:
        return self.kv.mask.shape[1]

    @property
    def prompts(self) -> int:
        return self.ids.shape[0]

    def select(self, keep: list[int]) -> None:
        """Only rows `keep` go on (the others were cancelled), and the prompts they need."""
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        used = sorted({self.prompt_of[i] for i in keep})
        self.prompt_of = [used.index(self.prompt_of[i]) for i in keep]
        if len(used) == self.prompts:
            return
        idx = torch.tensor(used, dtype=torch.long, device=self.ids.device)
        self.ids, self.full, self.positions = self.ids[idx], self.full[idx], self.positions[idx]
        fed = self.fed
        self.kv.select(used)  # may drop leading columns no row uses
        dropped = fed - self.fed
        self.ids, self.full, self.positions = self.ids[:, dropped:], self.full[:, dropped:], self.positions[:, dropped:]

    def spread(self, logits: torch.Tensor) -> torch.Tensor:
        """The prompts fed: each row gets its prompt's cache (a copy per row) and last logits."""
        if self.prompts == len(self.rows):
            return logits
        self.kv.rebuild(self.prompt_of)
        return logits[torch.tensor(self.prompt_of, dtype=torch.long, device=logits.device)]


class Lane:
    """Rows that may share a batch: continuous admission, chunked prefill, one decode step per `step`."""

    def __init__(self, forward, max_rows: int, pad: int, device, prefill_tokens: int = PREFILL_TOKENS,
                 admit_min: int = 1):
        self.forward, self.max_rows, self.pad, self.device = forward, max_rows, pad, device
        self.prefill_tokens = prefill_tokens
        self.admit_min = admit_min  # free slots a prefill waits for (fewer, larger merges: throughput)
        self.waiting: deque[Row] = deque()
        self.prefill: Prefill | None = None
        self.running: list[Row] = []  # the batch's rows, in cache order
        self.gone: set[int] = set()  # of them, those finished or cancelled (see _let_go)
        self.kv: KV | None = None
        self.next_ids: list[int] = []  # each running row's last token, not yet in the cache
        self.phase = "decode"  # the forward under way: "prefill" or "decode" (what `recover` fails)
        self.solo = 0  # admissions to make one request at a time (after a shared prefill failed)

    def add(self, rows: list[Row]) -> None:
        self.waiting.extend(rows)

    @property
    def active(self) -> int:
        """Rows being generated (prefilling or decoding)."""
        return len(self.running) - len(self.gone) + (len(self.prefill.rows) if self.prefill else 0)

    @property
    def done(self) -> bool:
        return not (self.waiting or self.prefill or len(self.running) > len(self.gone))

    def _live(self) -> list[int]:
        return [i for i in range(len(self.running)) if i not in self.gone]

    def rows(self) -> list[Row]:
        return [*self.waiting, *(self.prefill.rows if self.prefill else []), *(self.running[i] for i in self._live())]

    @torch.no_grad()
    def step(self) -> None:
        self._drop_cancelled()
        free = self.max_rows - self.active
        if self.prefill is None and self.waiting and free >= min(self.admit_min, len(self.waiting)):
            self.prefill = Prefill(self._admit(), self.pad, self.device)
        if self.prefill is not None:
            self.phase = "prefill"
            self._prefill_chunk()
        if self.running:
            self.phase = "decode"
            self._decode()

    def _admit(self) -> list[Row]:
        """Waiting rows, first come first served, while the lane has room and their prompts fit
        the step's prefill budget (always one: a longer prompt is fed in chunks)."""
        rows = [self.waiting.popleft()]
        tokens = len(rows[0].request.prompt_ids)
        solo, self.solo = self.solo > 0, max(0, self.solo - 1)
        while self.waiting and self.active + len(rows) < self.max_rows:
            shared = self.waiting[0].request is rows[-1].request  # another choice of the same prompt: fed once
            if not shared:
                more = len(self.waiting[0].request.prompt_ids)
                if solo or tokens + more > self.prefill_tokens:
                    break
                tokens += more
            rows.append(self.waiting.popleft())
        return rows

    def _drop_cancelled(self) -> None:
        self.waiting = deque(r for r in self.waiting if not r.cancelled)
        if self.prefill is not None:
            self.prefill.select([i for i, r in enumerate(self.prefill.rows) if not r.cancelled])
            if not self.prefill.rows:
                self.prefill = None
        cancelled = [i for i in self._live() if self.running[i].cancelled]
        if cancelled:
            self._let_go(cancelled)

    def _let_go(self, rows: list[int]) -> None:
        """Rows that finished or were cancelled. Their slots are free at once; joining rows take
        their places in the cache; the cache drops them when a quarter of the batch has gone, or
        when no waiting row will take their places (each removal copies the whole cache:
        measured, removing on every finish while new rows came in cost more than decoding the
        finished rows meanwhile)."""
        self.gone.update(rows)
        if len(self.gone) == len(self.running):
            self.running, self.next_ids, self.kv, self.gone = [], [], None, set()
        elif 4 * len(self.gone) >= len(self.running) or not (self.waiting or self.prefill):  # no one takes the slots
            self._compact()

    def _compact(self) -> None:
        """The finished rows out of the cache, and the columns no remaining row uses."""
        keep = self._live()
        self.running = [self.running[i] for i in keep]
        self.next_ids = [self.next_ids[i] for i in keep]
        self.kv.rebuild(keep)
        self.gone = set()

    def _prefill_chunk(self) -> None:
        p = self.prefill
        start = p.fed
        end = min(p.ids.shape[1], start + max(1, self.prefill_tokens // p.prompts))
        p.kv.extend(end - start)
        p.kv.mask[:, start:end] = p.full[:, start:end]
        logits = self.forward(p.ids[:, start:end], p.kv, p.positions[:, start:end])
        if end < p.ids.shape[1]:
            return
        self._join(p, logits)
        self.prefill = None  # only now: a failure before this is the prefill's (see `recover`)

    def _join(self, p: Prefill, logits: torch.Tensor) -> None:
        """The prefilled rows take their first token and join the running batch."""
        logits = p.spread(logits)
        tokens = choose(logits, p.rows)
        keep = [i for i, row in enumerate(p.rows) if not row.accept(tokens[i], logits[i])]
        if not keep:
            return
        p.kv.select(keep)
        slots = sorted(self.gone)[:len(keep)]
        if self.kv is not None and len(slots) == len(keep) and self.kv.place(slots, p.kv):
            for slot, i in zip(slots, keep):  # the new rows took finished rows' places
                self.running[slot], self.next_ids[slot] = p.rows[i], tokens[i]
                self.gone.discard(slot)
            if 2 * self.kv.unused_columns(self._live()) > self.kv.mask.shape[1]:  # in place, columns only grow
                self._compact()
            return
        live = self._live()
        if self.kv is None:
            self.kv = p.kv
        else:  # one copy: the finished rows leave as the new ones join
            self.kv.rebuild(live, p.kv)
        self.running = [self.running[i] for i in live] + [p.rows[i] for i in keep]
        self.next_ids = [self.next_ids[i] for i in live] + [tokens[i] for i in keep]
        self.gone = set()

    def _decode(self) -> None:
        self.kv.extend(1)
        positions = self.kv.mask.sum(-1, keepdim=True) - 1
        ids = torch.tensor(self.next_ids, device=self.device)[:, None]
        logits = self.forward(ids, self.kv, positions)
        live = self._live()
        tokens = choose(logits[live] if self.gone else logits, [self.running[i] for i in live])
        finished = []
        for i, token in zip(live, tokens):
            self.next_ids[i] = token
            if self.running[i].accept(token, logits[i]):
                finished.append(i)
        if finished:
            self._let_go(finished)

    def recover(self, message: str, log) -> None:
        """A forward failed; fail the requests that must fail, and no others. A prefill's failure
        is its requests': one alone gets the error; several go back to wait, to be prefilled one
        request at a time, so that a second failure names the request that causes it. A decode
        failure fails the running rows' requests (their cache is all there is of them)."""
        if self.phase == "prefill" and self.prefill is not None:
            rows, self.prefill = self.prefill.rows, None
            requests = {id(r.request): r.request for r in rows}
            if len(requests) > 1:
                self.waiting.extendleft(reversed(rows))
                self.solo += len(requests)
                return
        else:
            requests = {id(self.running[i].request): self.running[i].request for i in self._live()}
            self.running, self.next_ids, self.kv, self.gone = [], [], None, set()
        for request in requests.values():
            log(f"request {request.rid or '(in process)'} failed: {message}")
            try:
                request.emit(("error", message, 500))
            except Exception:  # noqa: BLE001 - a caller that cannot be told; the lane goes on
                pass
        failed = set(requests)  # their other choices, still waiting or being prefilled, go too
        self.waiting = deque(r for r in self.waiting if id(r.request) not in failed)
        if self.prefill is not None:
            self.prefill.select([i for i, r in enumerate(self.prefill.rows) if id(r.request) not in failed])
            if not self.prefill.rows:
                self.prefill = None

