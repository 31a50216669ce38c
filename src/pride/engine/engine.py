"""The engine: one model, a worker thread, and the lanes it steps in turn.

Requests wait in a queue; the worker puts their rows into lanes (`Request.lane_key`): every
request shares one lane, whatever its sampling settings and seed (with `strict_seeds` a seeded
request has a lane of its own, so not even its padding depends on its neighbours); in-process
callers batch theirs on purpose (`batch`). The worker steps every lane in turn, one token each (`scheduler.Lane`),
so a long generation holds no other back, and new requests join a running batch at the
next step. Every sampling row draws from its own `torch.Generator` (choice k of a request
seeded s: seed s + k, or the request's `seeds[k]`); the global RNG is never touched.
In-process callers (online sampling, the demo) call `generate` or `complete`, which run
requests to the end in the calling thread. A server loads new weights with `swap`: the
requests queued before it finish on the old weights, those after it start on the new ones,
and no sequence mixes the two.
"""

from __future__ import annotations

import inspect
import queue
import sys
import threading
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch

from pride.engine.cache import KV
from pride.engine.requests import Request
from pride.engine.scheduler import OFFLINE_PREFILL_TOKENS, PREFILL_TOKENS, Lane


@dataclass
class Swap:
    """New weights for the worker to load once the requests queued before them are done."""

    state: dict
    done: Callable[[str | None], None]  # called from the worker: None, or why it failed


class Engine:
    """Continuous batching for one model, in a background thread (or the caller's, `generate`)."""

    def __init__(self, model, tokenizer, max_batch_size: int = 64, prefill_tokens: int = PREFILL_TOKENS,
                 offline: bool = False, strict_seeds: bool = False):
        """`offline`: in-process callers that want throughput, not a quick first token (online
        sampling, the demo): prompts are prefilled OFFLINE_PREFILL_TOKENS a step, and new rows
        wait until a sixteenth of the batch is free, so they are prefilled a few at a time (a
        forward's fixed cost shared) and take the finished rows' places in the cache.
        `strict_seeds`: a seeded request runs alone (see `Request.lane_key`)."""
        self.model, self.tok = model.eval(), tokenizer
        self.device = next(model.parameters()).device
        self.max_batch_size = max_batch_size
        self.prefill_tokens = OFFLINE_PREFILL_TOKENS if offline else prefill_tokens
        self.admit_min = max(1, max_batch_size // 16) if offline else 1
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = model.generation_config.eos_token_id
        self.stop_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
        self.stop_ids.discard(None)
        self.strict_seeds = strict_seeds
        self.queue: queue.Queue[Request | Swap | None] = queue.Queue()
        self.held: deque[Request | Swap] = deque()  # taken from the queue, behind a swap not yet done
        self.lanes: dict[object, Lane] = {}
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()
        self.stop_message = "the server is stopping"
        self.abort_message: str | None = None  # set from another thread: the worker fails everything with it
        self.dead: str | None = None  # why the worker thread died, if it did
        self.counts = (0, 0)  # (running, waiting in lanes), written by the worker after each step
        self.log = lambda message: print(f"pride serve: {message}", file=sys.stderr, flush=True)
        self.unseeded = torch.Generator(device=self.device)
        self.unseeded.seed()  # unseeded requests: fresh randomness, still not the global RNG
        # transformers 5.24 renamed the KV cache argument and output `past_key_values` -> `cache`
        # (the old name goes in 5.40); earlier versions know only the old one
        self.cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def submit(self, request: Request | Swap) -> None:
        """Queue a request for the worker thread (started on first use)."""
        if self.dead is not None:
            return fail(request, f"the engine has stopped: {self.dead}", 503)
        if self.thread is None:
            self.thread = threading.Thread(target=self._loop, name="pride-engine", daemon=True)
            self.thread.start()
        self.queue.put(request)

    def swap(self, state: dict, done: Callable[[str | None], None]) -> None:
        """Load `state` (a state dict of this model's shape) between steps, once every request
        submitted before it has finished; requests submitted after it wait for it."""
        self.submit(Swap(state, done))

    def stop(self, timeout: float = 10.0) -> None:
        """End the worker thread and wait for it: a process must not exit while the thread is
        inside a forward pass (libtorch then aborts the process). What still runs or waits gets
        an error (503); the worker, which alone touches the lanes, sends it."""
        self.stopping.set()
        self.queue.put(None)  # wakes a worker waiting for work
        if self.thread is not None:
            self.thread.join(timeout)
        else:
            self._fail_all(self.stop_message)

    def abort(self, message: str) -> None:
        """Every request queued or running now gets `message` (503) at the next step; the engine
        serves on (a server's graceful shutdown, before its deadline)."""
        self.abort_message = message
        self.queue.put(None)

    @property
    def running(self) -> int:
        """Sequences being generated now (as of the worker's last step)."""
        return self.counts[0]

    @property
    def waiting(self) -> int:
        """Requests not yet admitted, and rows waiting for a slot."""
        return self.queue.qsize() + self.counts[1]

    def generate(self, requests: list[Request]) -> None:
        """Run these requests to the end in the calling thread (no worker, no queue)."""
        for _ in self.steps(requests):
            pass

    def steps(self, requests: list[Request]):
        """`generate`, handing control back after every step: a caller takes what its requests
        emitted so far (online sampling writes each prompt's answers as soon as they are done)."""
        lanes: dict[object, Lane] = {}
        self._place(requests, lanes)
        with decode_attention(self.model):
            while lanes:
                for key, lane in list(lanes.items()):
                    lane.step()
                    if lane.done:
                        del lanes[key]
                yield

    def complete(self, prompts: list[list[int]], n: int, seeds: list[list[int]] | None = None,
                 temperature: float = 1.0, top_p: float = 1.0, max_tokens: int = 256) -> list[list[str]]:
        """n texts per prompt (see `answers`), in prompt order."""
        done = dict(self.answers(prompts, n, seeds, temperature, top_p, max_tokens))
        return [done[i] for i in range(len(prompts))]

    def answers(self, prompts: list[list[int]], n: int, seeds: list[list[int]] | None = None,
                temperature: float = 1.0, top_p: float = 1.0, max_tokens: int = 256, reasons: bool = False):
        """(i, n texts) for each prompt as soon as its n choices are done; all prompts in one lane
        (max_batch_size rows at a time), choice k of prompt i sampled with seeds[i][k]. For
        in-process callers: online sampling, the demo. `reasons`: (i, n texts, n finish reasons)."""
        texts = [[""] * n for _ in prompts]
        finish = [[""] * n for _ in prompts]
        left, done = [n] * len(prompts), []

        def collect(i):
            def emit(event):
                if event[0] == "delta":
                    texts[i][event[1]] += event[2]
                elif event[0] == "finish":
                    finish[i][event[1]] = event[2]
                    left[i] -= 1
                    if not left[i]:
                        done.append(i)
                elif event[0] == "error":
                    raise RuntimeError(event[1])
            return emit

        batch = object()
        requests = [Request(prompt_ids=ids, emit=collect(i), n=n, temperature=temperature, top_p=top_p,
                            max_tokens=max_tokens, seeds=seeds[i] if seeds else None, batch=batch)
                    for i, ids in enumerate(prompts)]
        for _ in self.steps(requests):
            while done:
                i = done.pop(0)
                yield (i, texts[i], finish[i]) if reasons else (i, texts[i])

    # -- the worker -------------------------------------------------------------------

    def _place(self, requests: list[Request], lanes: dict[object, Lane]) -> None:
        for req in requests:
            if req.cancelled.is_set():
                continue
            key = req.lane_key(self.strict_seeds)
            if key not in lanes:
                lanes[key] = Lane(self._forward, self.max_batch_size, self.pad, self.device, self.prefill_tokens,
                                  self.admit_min)
            lanes[key].add(req.rows(self.tok, self.stop_ids, self.unseeded, self.device))

    def _loop(self) -> None:
        try:
            decode_attention(self.model).__enter__()  # the worker's model only generates (pride serve)
            while not self.stopping.is_set():
                if self.abort_message is not None:
                    message, self.abort_message = self.abort_message, None
                    self._fail_all(message)
                if self.held and not self.lanes:  # a swap waits at the front, and everything before it is done
                    self._load(self.held.popleft())
                    self._release()
                if not self.held:
                    self._admit(block=not self.lanes)
                for key, lane in list(self.lanes.items()):
                    try:
                        lane.step()
                    except Exception as e:  # noqa: BLE001 - the requests that must get the error; the server goes on
                        lane.recover(f"{type(e).__name__}: {e}", self.log)
                    if lane.done:
                        del self.lanes[key]
                self.counts = (sum(lane.active for lane in self.lanes.values()),
                               len(self.held) + sum(len(lane.waiting) for lane in self.lanes.values()))
        except BaseException as e:  # noqa: BLE001 - a dead worker must be seen: /health says so, requests get 503
            self.dead = f"{type(e).__name__}: {e}"
            self.log(f"the engine's worker thread died: {self.dead}")
            self._fail_all(f"the engine has stopped: {self.dead}")
        else:
            self._fail_all(self.stop_message)

    def _fail_all(self, message: str) -> None:
        """Every request in the lanes, held or queued gets `message` (503); swaps are told too."""
        requests = {id(r.request): r.request for lane in self.lanes.values() for r in lane.rows()}
        self.lanes = {}
        items = list(self.held)
        self.held.clear()
        try:
            while True:
                items.append(self.queue.get_nowait())
        except queue.Empty:
            pass
        for item in [*requests.values(), *items]:
            if item is not None:
                fail(item, message, 503)
        self.counts = (0, 0)

    def _admit(self, block: bool) -> None:
        new: list[Request] = []
        try:
            new.append(self.queue.get(block=block))
            while True:
                new.append(self.queue.get_nowait())
        except queue.Empty:
            pass
        self.held.extend(r for r in new if r is not None)  # None: stop() or abort() woke the worker
        self._release()

    def _release(self) -> None:
        """Place the held requests up to the first swap (which waits for the lanes to drain)."""
        new = []
        while self.held and not isinstance(self.held[0], Swap):
            new.append(self.held.popleft())
        try:
            self._place(new, self.lanes)
        except Exception as e:  # noqa: BLE001 - these requests get the error; the worker keeps serving
            for r in new:
                fail(r, f"{type(e).__name__}: {e}", 500)

    def _load(self, swap: Swap) -> None:
        """The new weights, copied into the model's own tensors (its device and dtype kept)."""
        try:
            with torch.no_grad():
                self.model.load_state_dict(swap.state, strict=True)
        except Exception as e:  # noqa: BLE001 - the caller is told; the old weights keep serving
            swap.done(f"{type(e).__name__}: {e}")
            return
        swap.done(None)

    def _forward(self, ids: torch.Tensor, kv: KV, positions: torch.Tensor) -> torch.Tensor:
        """Logits [rows, vocab] of the token after the last of `ids` (fed on top of the cache)."""
        out = self.model(input_ids=ids, attention_mask=kv.mask, position_ids=positions, **{self.cache_name: kv.cache},
                         use_cache=True, logits_to_keep=1)  # never the prompt's [rows, T, vocab] logits
        return out.logits[:, -1, :].float()


def fail(item: Request | Swap, message: str, status: int) -> None:
    """Tell a request (or a swap) it failed; a caller that cannot be told any more is skipped."""
    try:
        if isinstance(item, Swap):
            item.done(message)
        else:
            item.emit(("error", message, status))
    except Exception:  # noqa: BLE001 - e.g. a closed event loop at shutdown: nobody is waiting
        pass


@contextmanager
def decode_attention(model):
    """sdpa (eager where the architecture has none) while generating, when the model trains with
    flex_attention: flex pays off on the block masks of packed training rows, but a decode step
    (one query on a growing cache) recompiles its kernel as shapes change; the model is given
    back as it came."""
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
