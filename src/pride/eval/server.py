"""`pride serve`: an OpenAI-compatible chat server over transformers `generate`.

For users without vLLM/sglang (CPU, tests, the demo) and as a judge endpoint in tests.
Binds to 127.0.0.1 unless told otherwise; with an API key set (read from an environment
variable, never logged) every request must carry `Authorization: Bearer <key>`.

Requests arriving together are batched: a worker thread collects what is queued (up to
`max_batch_size`, waiting a few milliseconds), groups requests with the same sampling
settings and runs each group as one left-padded `generate` call. Supports `n`,
`temperature`, `top_p`, `max_tokens`, `seed` (seeded requests run alone, so they are
reproducible), `stop`, and `logprobs`/`top_logprobs` (from the raw logits).
"""

from __future__ import annotations

import json
import math
import os
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from pride.config import ModelSettings
from pride.errors import PrideError


@dataclass
class Job:
    messages: list[dict]
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0
    future: Future = field(default_factory=Future)

    def group_key(self):
        if self.seed is not None:
            return ("seeded", id(self))
        return (self.temperature, self.top_p, self.max_tokens, self.logprobs, self.top_logprobs)


class Generator:
    """Batched chat generation for one model."""

    def __init__(self, model_ref: str, device: str | None = None, max_batch_size: int = 8):
        from pride.models import load_model_and_tokenizer

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.tok, self.fmt = load_model_and_tokenizer(ModelSettings(path=model_ref), device=device)
        self.model.to(device).eval()
        self.device, self.max_batch_size = device, max_batch_size
        self.queue: queue.Queue[Job] = queue.Queue()
        threading.Thread(target=self._worker, daemon=True).start()

    def submit(self, job: Job) -> Future:
        self.queue.put(job)
        return job.future

    def _worker(self) -> None:
        while True:
            jobs = [self.queue.get()]
            deadline = time.monotonic() + 0.005
            while len(jobs) < self.max_batch_size:
                try:
                    jobs.append(self.queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            groups: dict = {}
            for j in jobs:
                groups.setdefault(j.group_key(), []).append(j)
            for group in groups.values():
                try:
                    for job, result in zip(group, self.run(group)):
                        job.future.set_result(result)
                except Exception as e:  # noqa: BLE001 - reported to the client as a 500
                    for job in group:
                        if not job.future.done():
                            job.future.set_exception(e)

    @torch.no_grad()
    def run(self, jobs: list[Job]) -> list[list[dict]]:
        first = jobs[0]
        encoded = [self.fmt.encode_prompt(j.messages) for j in jobs]
        width = max(len(e) for e in encoded)
        pad = self.tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=self.device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=self.device)
        if first.seed is not None:
            torch.manual_seed(first.seed)
        sampling = first.temperature > 0
        n = max(j.n for j in jobs)
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=first.max_tokens, do_sample=sampling,
            num_return_sequences=n, pad_token_id=pad, return_dict_in_generate=True, output_logits=first.logprobs,
            **({"temperature": first.temperature, "top_p": first.top_p, "top_k": 0} if sampling else {}))
        stops = set(self.model.generation_config.eos_token_id if isinstance(self.model.generation_config.eos_token_id, list)
                    else [self.model.generation_config.eos_token_id]) | {self.tok.eos_token_id}
        results = []
        for b, job in enumerate(jobs):
            choices = []
            for k in range(job.n):
                row = b * n + k
                new = out.sequences[row, width:].tolist()
                cut = next((i for i, t in enumerate(new) if t in stops or t == pad), None)
                finish = "stop" if cut is not None else "length"
                tokens = new[:cut] if cut is not None else new
                text = self.tok.decode(tokens, skip_special_tokens=True)
                for s in job.stop:
                    if s and s in text:
                        text, finish = text[:text.index(s)], "stop"
                choice = {"index": k, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                          "_tokens": (len(encoded[b]), len(tokens))}
                if job.logprobs:
                    choice["logprobs"] = {"content": self._logprobs(out.logits, row, tokens, job.top_logprobs)}
                choices.append(choice)
            results.append(choices)
        return results

    def _logprobs(self, logits, row: int, tokens: list[int], top: int) -> list[dict]:
        content = []
        for step, tid in enumerate(tokens):
            lp = torch.log_softmax(logits[step][row].float(), -1)
            entry = self._token_entry(tid, float(lp[tid]))
            values, idx = lp.topk(max(top, 0)) if top else (torch.tensor([]), torch.tensor([], dtype=torch.long))
            entry["top_logprobs"] = [self._token_entry(int(i), float(v)) for v, i in zip(values, idx)]
            content.append(entry)
        return content

    def _token_entry(self, tid: int, logprob: float) -> dict:
        text = self.tok.decode([tid])
        return {"token": text, "logprob": logprob if math.isfinite(logprob) else -9999.0,
                "bytes": list(text.encode("utf-8"))}


def make_handler(gen: Generator, model_name: str, api_key: str | None):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet; never log headers (keys)
            pass

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            if not api_key:
                return True
            if self.headers.get("Authorization", "") == f"Bearer {api_key}":
                return True
            self._send(401, {"error": {"message": "invalid or missing API key", "type": "invalid_request_error"}})
            return False

        def do_GET(self):
            if self.path.rstrip("/") in ("/health", "/v1/health"):
                return self._send(200, {"status": "ok"})
            if not self._authorized():
                return
            if self.path.rstrip("/") == "/v1/models":
                return self._send(200, {"object": "list", "data": [{"id": model_name, "object": "model",
                                                                    "owned_by": "pride"}]})
            self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self):
            if not self._authorized():
                return
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                job = Job(messages=body["messages"], n=int(body.get("n", 1)),
                          temperature=float(body.get("temperature", 1.0)), top_p=float(body.get("top_p", 1.0)),
                          max_tokens=int(body.get("max_tokens") or body.get("max_completion_tokens") or 256),
                          seed=body.get("seed"), stop=_as_list(body.get("stop")),
                          logprobs=bool(body.get("logprobs", False)), top_logprobs=int(body.get("top_logprobs") or 0))
            except (KeyError, ValueError, TypeError) as e:
                return self._send(400, {"error": {"message": f"bad request: {e}", "type": "invalid_request_error"}})
            try:
                choices = gen.submit(job).result()
            except Exception as e:  # noqa: BLE001
                return self._send(500, {"error": {"message": str(e), "type": "server_error"}})
            counts = [c.pop("_tokens") for c in choices]
            usage = {"prompt_tokens": counts[0][0], "completion_tokens": sum(c[1] for c in counts)}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            self._send(200, {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
                             "created": int(time.time()), "model": model_name, "choices": choices, "usage": usage})

    return Handler


def _as_list(x) -> list[str]:
    if x is None:
        return []
    return [x] if isinstance(x, str) else list(x)


def serve(model_ref: str, host: str = "127.0.0.1", port: int = 8000, api_key_env: str | None = None,
          model_name: str | None = None, max_batch_size: int = 8, ready=None) -> None:
    api_key = os.environ.get(api_key_env) if api_key_env else None
    if api_key_env and not api_key:
        raise PrideError(f"--api-key-env {api_key_env}: that environment variable is not set")
    gen = Generator(model_ref, max_batch_size=max_batch_size)
    name = model_name or model_ref.rstrip("/").split("/")[-1]
    server = ThreadingHTTPServer((host, port), make_handler(gen, name, api_key))
    print(f"pride serve: {name} on http://{host}:{server.server_port}/v1"
          f"{' (API key required)' if api_key else ''}", flush=True)
    if ready is not None:
        ready(server)
    try:
        server.serve_forever()
    finally:
        server.server_close()
