"""What a caller asks the engine for (`Request`) and how generated tokens become what it
receives (`Row`): text, logprobs and a finish reason, streamed as each token is decoded."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import torch

from pride.engine.sampling import logprob_entry


GREEDY_BELOW = 1e-5  # vLLM's _SAMPLING_EPS


@dataclass
class Request:
    """One completion request with `n` choices. `emit(event)` is called from the engine thread:
    ("delta", choice, text, logprob entries), ("finish", choice, reason, n_tokens), ("error", message)."""

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
    batch: object = None  # in-process callers: requests with the same key run in one lane
    rid: str | None = None  # the server's response id: what its log names
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def sampling(self) -> bool:
        """Greedy below GREEDY_BELOW, as vLLM (a temperature of 1e-40 would overflow the scores)."""
        return self.temperature >= GREEDY_BELOW

    def choice_seed(self, k: int) -> int | None:
        """Within torch's seed range whatever the request said (seeds wrap modulo 2^64, as torch
        maps a negative seed), so no seed can stop the engine."""
        seed = self.seeds[k] if self.seeds is not None else None if self.seed is None else self.seed + k
        return None if seed is None else seed % 2**64

    def lane_key(self, strict_seeds: bool = False):
        """Which rows may share a batch with this request's. Every request shares one lane, seeded
        or not, each sampling row drawing from its own generator (as vLLM does): its draws do not
        depend on its neighbours, though batched kernels may round its logits differently beside
        them. `strict_seeds` gives a seeded request a lane of its own, so not even that changes
        its text. In-process callers batch theirs on purpose (`batch`)."""
        if self.batch is not None:
            return ("batch", id(self.batch))
        if strict_seeds and (self.seed is not None or self.seeds is not None):
            return ("seeded", id(self))
        return "shared"

    def rows(self, tokenizer, stop_ids: set[int], unseeded: torch.Generator, device) -> list[Row]:
        """A row per choice; greedy choices are all the same, so one row answers them all (as vLLM)."""
        if not self.sampling:
            return [Row(self, list(range(self.n)), tokenizer, stop_ids, None)]
        rows = []
        for k in range(self.n):
            seed = self.choice_seed(k)
            generator = unseeded if seed is None else torch.Generator(device=device).manual_seed(seed)
            rows.append(Row(self, [k], tokenizer, stop_ids, generator))
        return rows


class Row:
    """One sequence being generated: the choices `copies` of `request`.

    Text is detokenized incrementally, as vLLM and TGI do: a short window of tokens is decoded
    with and without the newest ones and the difference is the new text, held back while it
    ends in an incomplete character. So a token costs the same however long the answer is, and
    a stream gets a chunk per token (per complete character)."""

    def __init__(self, request: Request, copies: list[int], tokenizer, stop_ids: set[int],
                 generator: torch.Generator | None):
        self.request, self.copies, self.tok, self.stop_ids = request, copies, tokenizer, stop_ids
        self.generator = generator  # sampling rows: their own (seeded) or the engine's unseeded one
        self.tokens: list[int] = []
        self.logprobs: list[dict] = []
        self.text = ""
        self.finish: str | None = None
        self.n_tokens = 0  # tokens up to the end (a stop string's last token included)
        self.prefix = self.read = 0  # detokenization window: tokens[prefix:read] made text already
        self.prefix_text = ""  # their text
        self.decode = text_decoder(tokenizer)
        self.sent = self.sent_logprobs = 0  # characters and logprob entries emitted

    @property
    def cancelled(self) -> bool:
        return self.request.cancelled.is_set()

    def accept(self, tid: int, logits: torch.Tensor) -> bool:
        """Take the token sampled for this row (`logits`: the row's next-token logits); emit what
        it adds. True when the row has finished."""
        req = self.request
        if tid in self.stop_ids and not req.ignore_eos:
            self.finish = "stop"
        else:
            self.tokens.append(tid)
            self.n_tokens = len(self.tokens)
            if req.logprobs:
                self.logprobs.append(logprob_entry(self.tok, logits, tid, req.top_logprobs))
            if len(self.tokens) >= req.max_tokens:
                self.finish = "length"
            before = len(self.text)
            self._detokenize(final=self.finish is not None)
            self._cut_at_stop(before)
        self._emit()
        return self.finish is not None

    def _detokenize(self, final: bool) -> None:
        full = self.decode(self.tokens[self.prefix:])
        if len(full) > len(self.prefix_text) and (final or not full.endswith("\ufffd")):
            self.text += full[len(self.prefix_text):]
            self.prefix, self.read = self.read, len(self.tokens)
            self.prefix_text = self.decode(self.tokens[self.prefix:self.read])

    def _cut_at_stop(self, before: int) -> None:
        stops = [s for s in self.request.stop if s]
        if not stops:
            return
        hits = [i for s in stops if (i := self.text.find(s, max(0, before - len(s) + 1))) >= 0]
        if hits:
            cut = min(hits)
            self.text, self.finish = self.text[:cut], "stop"
            self.n_tokens = self._tokens_through(cut)
            del self.logprobs[self.n_tokens:]

    def _tokens_through(self, chars: int) -> int:
        """Tokens generated until the text passed `chars` characters (the stop string's first):
        a binary search over prefixes (a longer prefix never decodes shorter), a few decodes
        however long the answer, where trying every prefix stalled every stream."""
        lo, hi = 1, len(self.tokens)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(self.decode(self.tokens[:mid])) > chars:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _emit(self) -> None:
        req = self.request
        safe = len(self.text) if self.finish else _safe_length(self.text, req.stop)
        if safe > self.sent or (self.finish and len(self.logprobs) > self.sent_logprobs):
            entries = self.logprobs[self.sent_logprobs:] if safe == len(self.text) else []
            for k in self.copies:
                req.emit(("delta", k, self.text[self.sent:safe], entries))
            self.sent, self.sent_logprobs = safe, self.sent_logprobs + len(entries)
        if self.finish:
            for k in self.copies:
                req.emit(("finish", k, self.finish, self.n_tokens))


def text_decoder(tokenizer):
    """Token ids -> text as `tokenizer.decode(ids, skip_special_tokens=True)` gives it; for a
    fast tokenizer that does not clean up spaces, its Rust backend directly (what `decode`
    calls, less the Python wrapper's cost: two calls per generated token add up)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return lambda ids: backend.decode(ids, skip_special_tokens=True)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


def _safe_length(text: str, stops: list[str]) -> int:
    """How much of unfinished text can be streamed: not a tail that may still become a stop string."""
    end = len(text)
    for s in stops:
        for k in range(min(len(s) - 1, end), 0, -1):
            # no copy of the text (O(k), not O(text so far)), and only where the last characters agree
            if s[k - 1] == text[end - 1] and text.endswith(s[:k], 0, end):
                end -= k
                break
    return max(end, 0)
