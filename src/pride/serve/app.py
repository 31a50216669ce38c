"""`pride serve`: an OpenAI-compatible server (FastAPI + uvicorn) over the batching engine.

Routes: `POST /v1/chat/completions` and `POST /v1/completions` (with `stream`: server-sent
events in OpenAI's chunk format, ending with `data: [DONE]`), `GET /v1/models`, `GET /health`,
and sglang's weight reload: `POST /update_weights_from_disk` (`{"model_path": DIR}`) loads a
directory of the same architecture between decode steps (requests sent before it finish on
the old weights) and `GET /get_model_info` says which directory is served (online rounds
check it before sampling).
Request bodies are pydantic models: an invalid field is a 400 with OpenAI's error shape
naming it. `max_tokens` defaults to what the context leaves, capped by `--max-tokens`; a
prompt that does not fit the context is a 400 (a text too long for any tokenization of it
is refused before tokenizing, which runs off the event loop). A body over `max_body_bytes`
is a 413 before it is read whole. A client that disconnects cancels its generation within
a second. With `--api-key-env`, `/v1/*` needs `Authorization: Bearer <key>` (401 JSON
otherwise); the key is read from the environment and never logged. Binds to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import secrets
import socket
import threading
import time
import uuid
from typing import Literal

from fastapi import FastAPI, Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException

from pride.errors import PrideError
from pride.engine import Engine, Request


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send fields a server may not use (user, ...)

    @field_validator("*", mode="after")
    @classmethod
    def _unicode_text(cls, v):
        """JSON may escape a lone surrogate ("\\ud800"), which no tokenizer takes: a 400, not a 500."""
        for text in [v] if isinstance(v, str) else v if isinstance(v, list) else []:
            if isinstance(text, str):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as e:
                    raise ValueError(f"not valid Unicode text (a lone surrogate at character {e.start})") from None
        return v


MAX_MESSAGES = 4096  # per request; with MAX_PARTS per message, bounded work on the event loop
MAX_PARTS = 1024
MAX_STOPS, MAX_STOP_CHARS = 32, 256  # OpenAI takes 4 stops; each is checked at every token


def at_most(v, limit: int, what: str, per: str):
    """A list longer than `limit` is refused before its items are looked at."""
    if isinstance(v, list) and len(v) > limit:
        raise ValueError(f"{len(v)} {what}: at most {limit} {per}")
    return v


class Message(Body):
    role: Literal["system", "user", "assistant"]
    content: str | list[dict]

    @field_validator("content", mode="before")
    @classmethod
    def few_parts(cls, v):
        return at_most(v, MAX_PARTS, "content parts", "per message")

    @field_validator("content")
    @classmethod
    def text_parts(cls, v):
        if isinstance(v, list):  # [{"type": "text", "text": ...}, ...]
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in v):
                raise ValueError("only text content parts are supported")
            v = "".join(p["text"] for p in v)
            return cls._unicode_text(v)  # the joined text: its parts were not checked as strings
        return v


class StreamOptions(Body):
    include_usage: bool = False


class Sampling(Body):
    model: str | None = None
    n: int = Field(1, ge=1, le=64)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # OpenAI's: a 64-bit integer
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # vLLM's extension

    @field_validator("stop")
    @classmethod
    def few_short_stops(cls, v):
        stops = [v] if isinstance(v, str) else v or []
        if len(stops) > MAX_STOPS:
            raise ValueError(f"{len(stops)} stop strings: at most {MAX_STOPS}")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop string is longer than {MAX_STOP_CHARS} characters")
        return v

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @field_validator("messages", mode="before")
    @classmethod
    def few_messages(cls, v):
        """Counted before any message is validated: 100,000 empty ones cost nothing here."""
        return at_most(v, MAX_MESSAGES, "messages", "per request")


class CompletionRequest(Sampling):
    prompt: str
    logprobs: int | None = Field(None, ge=0, le=20)


class UpdateWeights(Body):
    """sglang's body (its other fields, load_format and so on, are ignored)."""

    model_path: str = Field(min_length=1)


def error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}},
                        status_code=status)


MAX_BODY_BYTES = 4 * 2**20  # far above any prompt a context holds as JSON, far below what hurts the server


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is a 413 in OpenAI's error shape, as soon
    as its Content-Length (or, chunked, the bytes so far) says so; it is never read whole."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self.too_large(scope, receive, send)
        seen, answered = 0, False

        async def counted():
            nonlocal seen, answered
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit and not answered:  # answer now; the app sees a client that left
                answered = True
                await self.too_large(scope, receive, send)
                return {"type": "http.disconnect"}
            return message

        async def unless_answered(message):
            if not answered:
                await send(message)

        try:
            await self.app(scope, counted, unless_answered)
        except asyncio.CancelledError:
            # only uvicorn cancels a request task, for what still runs after --shutdown-timeout: the
            # stream's own cleanup has run (its generation is cancelled); no traceback in the log
            return

    async def too_large(self, scope, receive, send):
        response = error(413, f"the request body is larger than this server's limit of {self.limit} bytes "
                              "(pride serve --max-body-bytes)")
        await response(scope, receive, send)


class ApiKey:
    """ASGI middleware: `/v1/*` needs `Authorization: Bearer <key>` (a 401 in OpenAI's shape
    otherwise). Plain ASGI, not starlette's BaseHTTPMiddleware, whose wrapped `receive` hides a
    client's disconnect from the route (a plain request would then run on after its client left)."""

    def __init__(self, app, key: str):
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and (scope["path"].startswith("/v1") or scope["path"] in GUARDED):
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):
                return await error(401, "invalid or missing API key", "authentication_error")(scope, receive, send)
        await self.app(scope, receive, send)


GUARDED = ("/update_weights_from_disk", "/get_model_info")  # beside /v1/*: need the API key when one is set


def template_chars_per_message(fmt) -> int:
    """The characters the chat template adds around each message (its role header and end of
    turn), at least 1: the size pre-check counts them, so many empty messages are no way past it."""
    try:
        one, _ = fmt.render([{"role": "user", "content": ""}])
        two, _ = fmt.render([{"role": "user", "content": ""}, {"role": "assistant", "content": ""},
                             {"role": "user", "content": ""}])
        return max(1, (len(two) - len(one)) // 2)
    except Exception:  # noqa: BLE001 - a template that refuses these conversations: count one per message
        return 1


def max_chars_per_token(tokenizer) -> int:
    """The longest vocabulary entry, in characters: no tokenization of a text of C characters has
    fewer than C / this many tokens, so longer texts are refused before tokenizing."""
    return max((len(piece) for piece in tokenizer.get_vocab()), default=1) or 1


class Inbox:
    """A request's engine events, handed from the engine thread to the event loop. The loop is
    woken once for whatever arrived meanwhile, not once per token: with every row of a batch
    emitting each step, a wake-up per event keeps the loop and the engine thread trading the
    GIL (measured: the loop's request handling then lagged and time to first token grew)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.items, self.lock = loop, [], threading.Lock()
        self.ready = asyncio.Event()

    def put(self, event: tuple) -> None:  # engine thread
        with self.lock:
            self.items.append(event)
            wake = len(self.items) == 1
        if wake:
            try:
                self.loop.call_soon_threadsafe(self.ready.set)
            except RuntimeError:  # the event loop has closed (shutdown): nobody waits for this request
                pass

    async def take(self, timeout: float | None = None) -> list[tuple]:
        """What has arrived (waiting for something first, or at most `timeout` seconds)."""
        if timeout is None:
            await self.ready.wait()
        else:
            try:
                await asyncio.wait_for(self.ready.wait(), timeout)
            except asyncio.TimeoutError:
                return []
        with self.lock:
            items, self.items = self.items, []
            self.ready.clear()
        return items


def create_app(engine: Engine, fmt, model_name: str, api_key: str | None, context: int, max_tokens: int,
               max_body_bytes: int = MAX_BODY_BYTES, model_path: str | None = None, load_weights=None) -> FastAPI:
    """`load_weights(path) -> state dict` (checked against the served model, a PrideError naming
    the problem otherwise) serves `/update_weights_from_disk`; without it that route says no."""
    from concurrent.futures import ThreadPoolExecutor

    app = FastAPI(title="pride serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    tokenizing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pride-tokenize")  # one tokenizer, one thread
    chars_per_token = max_chars_per_token(fmt.tokenizer)
    per_message = template_chars_per_message(fmt)

    async def tokenized(encode, text_chars: int, param: str) -> list[int] | JSONResponse:
        """`encode()` off the event loop, after a length check that needs no tokenizer."""
        if text_chars > context * chars_per_token:
            return error(400, f"the prompt has {text_chars} characters: more than this model's context of {context} "
                              "tokens can hold", param=param)
        try:
            return await asyncio.get_running_loop().run_in_executor(tokenizing, encode)
        except ValueError as e:  # the chat template refuses this conversation
            return error(400, str(e), param=param)

    @app.exception_handler(RequestValidationError)
    async def invalid(_, exc: RequestValidationError):
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"] if x != "body")
        return error(400, f"{where or 'body'}: {first['msg'].removeprefix('Value error, ')}", param=where or None)

    @app.exception_handler(HTTPException)
    async def http_error(_, exc: HTTPException):
        return error(exc.status_code, str(exc.detail), "not_found_error" if exc.status_code == 404 else
                     "invalid_request_error")

    if api_key:
        app.add_middleware(ApiKey, key=api_key)

    @app.get("/health")
    async def health():
        if engine.dead is not None:  # the worker thread died: nothing would be answered
            return JSONResponse({"status": "error", "error": engine.dead}, status_code=503)
        return {"status": "ok", "running": engine.running, "waiting": engine.waiting}

    served = {"model_path": model_path or model_name, "weight_version": 0}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "pride",
                                            "root": served["model_path"], "max_model_len": context}]}

    @app.get("/get_model_info")
    async def model_info():
        return {"model_path": served["model_path"], "tokenizer_path": served["model_path"], "is_generation": True,
                "weight_version": str(served["weight_version"])}

    @app.post("/update_weights_from_disk")
    async def update_weights(body: UpdateWeights):
        def refused(message: str) -> JSONResponse:
            return JSONResponse({"success": False, "message": message, "num_paused_requests": 0}, status_code=400)

        if load_weights is None:
            return refused("this server was started without a way to load weights")
        loop = asyncio.get_running_loop()
        try:
            state = await loop.run_in_executor(None, load_weights, body.model_path)
        except PrideError as e:
            return refused(str(e))
        except Exception as e:  # noqa: BLE001 - a directory transformers cannot load: the old weights serve on
            return refused(f"{body.model_path}: cannot load ({type(e).__name__}: {e})")
        loaded = loop.create_future()
        engine.swap(state, lambda problem: loop.call_soon_threadsafe(loaded.set_result, problem))
        if (problem := await loaded) is not None:
            return refused(problem)
        served["model_path"], served["weight_version"] = body.model_path, served["weight_version"] + 1
        print(f"pride serve: now serving {body.model_path}", flush=True)
        return {"success": True, "message": f"loaded {body.model_path}", "num_paused_requests": 0}

    def check_model(body: Sampling) -> JSONResponse | None:
        if body.model and body.model != model_name:
            return error(404, f"the model {body.model!r} does not exist (this server has {model_name!r})",
                         "not_found_error", "model")
        return None

    def engine_request(body: Sampling, ids: list[int], logprobs: bool, top: int, emit,
                       rid: str) -> Request | JSONResponse:
        if not ids:  # an empty prompt to a tokenizer that adds no BOS: nothing to condition on
            return error(400, "the prompt is empty: it gives no tokens", param="prompt")
        if len(ids) >= context:
            return error(400, f"the prompt has {len(ids)} tokens; this model's context is {context} tokens",
                         param="messages")
        asked = getattr(body, "max_completion_tokens", None) or body.max_tokens
        room = min(context - len(ids), max_tokens)
        if asked is not None and asked > context - len(ids):
            return error(400, f"max_tokens={asked} does not fit: the prompt has {len(ids)} tokens of a "
                              f"{context}-token context", param="max_tokens")
        return Request(prompt_ids=ids, emit=emit, n=body.n, temperature=body.temperature, top_p=body.top_p,
                       max_tokens=min(asked or room, room), stop=body.stops(), logprobs=logprobs, top_logprobs=top,
                       seed=body.seed, ignore_eos=body.ignore_eos, rid=rid)

    async def run(request: HttpRequest, body: Sampling, ids: list[int], logprobs: bool, top: int, shape):
        """Submit to the engine; answer as one JSON body or as server-sent events."""
        loop = asyncio.get_running_loop()
        events = Inbox(loop)
        rid, created = shape.id(), int(time.time())
        req = engine_request(body, ids, logprobs, top, events.put, rid)
        if isinstance(req, JSONResponse):
            return req
        engine.submit(req)
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(stream(request, req, events, shape, rid, created, len(ids), usage),
                                     media_type="text/event-stream")
        choices = [{"text": "", "logprobs": [], "finish": None, "tokens": 0} for _ in range(body.n)]
        checked = loop.time()  # the last disconnect check
        while not all(c["finish"] for c in choices):
            # woken by the engine's events, or every DISCONNECT_CHECK_S while tokens flow or stall
            for event in await events.take(timeout=DISCONNECT_CHECK_S) or []:
                if event[0] == "error":  # ("error", message, HTTP status)
                    return error(event[2], event[1], "server_error")
                if event[0] == "delta":
                    choices[event[1]]["text"] += event[2]
                    choices[event[1]]["logprobs"] += event[3]
                elif event[0] == "finish":
                    choices[event[1]].update(finish=event[2], tokens=event[3])
            if checked + DISCONNECT_CHECK_S <= loop.time():
                checked = loop.time()
                if await request.is_disconnected():
                    req.cancelled.set()
                    return error(499, "client disconnected")
        completion = sum(c["tokens"] for c in choices)
        return {"id": rid, "object": shape.object, "created": created, "model": model_name,
                "choices": [shape.choice(k, c, logprobs) for k, c in enumerate(choices)],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": completion,
                          "total_tokens": len(ids) + completion}}

    async def stream(request, req: Request, events: Inbox, shape, rid, created, prompt_tokens, usage):
        def sse(choices, **extra):
            chunk = {"id": rid, "object": shape.chunk_object, "created": created, "model": model_name,
                     "choices": choices, **extra}
            return f"data: {json.dumps(chunk)}\n\n"

        finished, completion = 0, 0
        try:
            if shape.chunk_object == "chat.completion.chunk":
                yield sse([{"index": k, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                            "finish_reason": None} for k in range(req.n)])
            while finished < req.n:
                out = []  # a chunk per event; those that arrived together are written together
                for event in await events.take():
                    if event[0] == "error":
                        out.append(f"data: {json.dumps({'error': {'message': event[1], 'type': 'server_error'}})}\n\n")
                        yield "".join(out)
                        return
                    if event[0] == "delta":
                        out.append(sse([shape.delta(event[1], event[2], event[3] if req.logprobs else None)]))
                    elif event[0] == "finish":
                        finished, completion = finished + 1, completion + event[3]
                        out.append(sse([shape.delta(event[1], None, None, event[2])]))
                yield "".join(out)
            if usage:
                yield sse([], usage={"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                                     "total_tokens": prompt_tokens + completion})
            yield "data: [DONE]\n\n"
        finally:  # the client went away (or we are done): stop generating for it
            req.cancelled.set()

    @app.post("/v1/chat/completions")
    async def chat(request: HttpRequest, body: ChatRequest):
        if (bad := check_model(body)) is not None:
            return bad
        messages = [{"role": m.role, "content": m.content} for m in body.messages]
        ids = await tokenized(lambda: fmt.encode_prompt(messages),  # what the template renders, counted
                              sum(len(m["content"]) + per_message for m in messages), "messages")
        if isinstance(ids, JSONResponse):
            return ids
        return await run(request, body, ids, body.logprobs, body.top_logprobs or 0, ChatShape)

    @app.post("/v1/completions")
    async def completions(request: HttpRequest, body: CompletionRequest):
        if (bad := check_model(body)) is not None:
            return bad
        ids = await tokenized(lambda: list(fmt.tokenizer(body.prompt)["input_ids"]),  # special tokens added, as vLLM
                              len(body.prompt), "prompt")
        if isinstance(ids, JSONResponse):
            return ids
        return await run(request, body, ids, body.logprobs is not None, body.logprobs or 0, CompletionShape)

    return app


DISCONNECT_CHECK_S = 0.5


class ResponseShape:
    """How one OpenAI route writes its choices and stream chunks."""

    object: str
    chunk_object: str
    id_prefix: str

    @classmethod
    def id(cls) -> str:
        return f"{cls.id_prefix}-{uuid.uuid4().hex[:24]}"


class ChatShape(ResponseShape):
    object, chunk_object, id_prefix = "chat.completion", "chat.completion.chunk", "chatcmpl"

    @staticmethod
    def choice(k: int, c: dict, logprobs: bool) -> dict:
        return {"index": k, "message": {"role": "assistant", "content": c["text"]},
                "logprobs": {"content": c["logprobs"]} if logprobs else None, "finish_reason": c["finish"]}

    @staticmethod
    def delta(k: int, text: str | None, entries, finish: str | None = None) -> dict:
        return {"index": k, "delta": {"content": text} if text is not None else {},
                "logprobs": {"content": entries} if entries is not None else None, "finish_reason": finish}


class CompletionShape(ResponseShape):
    object, chunk_object, id_prefix = "text_completion", "text_completion", "cmpl"

    @staticmethod
    def _logprobs(entries):
        return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries]}

    @classmethod
    def choice(cls, k: int, c: dict, logprobs: bool) -> dict:
        return {"index": k, "text": c["text"], "logprobs": cls._logprobs(c["logprobs"]) if logprobs else None,
                "finish_reason": c["finish"]}

    @classmethod
    def delta(cls, k: int, text: str | None, entries, finish: str | None = None) -> dict:
        return {"index": k, "text": text or "", "logprobs": cls._logprobs(entries) if entries else None,
                "finish_reason": finish}


def serve(model_ref: str, host: str = "127.0.0.1", port: int = 8000, api_key_env: str | None = None,
          model_name: str | None = None, max_batch_size: int = 64, max_prefill_tokens: int = 512,
          max_model_len: int | None = None,
          max_tokens: int = 4096, max_body_bytes: int = MAX_BODY_BYTES, shutdown_timeout: float = 5.0,
          threads: int | None = None, strict_seeds: bool = False) -> None:
    """Load the model and serve until interrupted. SIGTERM or Ctrl-C: no new connections, running
    requests get `shutdown_timeout` seconds to finish and are cancelled after, exit 0."""
    import torch
    import uvicorn

    from pride.config import ModelSettings
    from pride.models import load_model_and_tokenizer

    Server = _server_class()
    api_key = os.environ.get(api_key_env) if api_key_env else None
    if api_key_env and not api_key:
        raise PrideError(f"--api-key-env {api_key_env}: that environment variable is not set")
    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok, fmt = load_model_and_tokenizer(ModelSettings(path=model_ref), device=device)
    model.to(device)
    positions = getattr(model.config, "max_position_embeddings", None)
    if max_model_len and positions and max_model_len > positions:
        raise PrideError(f"--max-model-len {max_model_len} is longer than {model_ref}'s positions ({positions}); at "
                         f"most {positions}")
    context = max_model_len or positions or 4096
    name = model_name or model_ref.rstrip("/").split("/")[-1]
    engine = Engine(model, tok, max_batch_size, max_prefill_tokens, strict_seeds=strict_seeds)

    app = create_app(engine, fmt, name, api_key, context, max_tokens, max_body_bytes, model_ref,
                     weights_loader(model, tok))
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        raise PrideError(f"cannot listen on {host}:{port} ({e.strerror})") from None
    sock.listen(2048)
    if not api_key and not is_loopback(host):
        print(f"pride serve: warning: listening on {host} without an API key: anyone who can reach this machine "
              "can use the model (set --api-key-env)", file=sys.stderr, flush=True)
    print(f"pride serve: {name} on http://{host}:{sock.getsockname()[1]}/v1"
          f"{' (API key required)' if api_key else ''}", flush=True)
    server = Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                   timeout_graceful_shutdown=shutdown_timeout))
    server.before_deadline = lambda: engine.abort("the server is shutting down")
    try:
        server.run(sockets=[sock])
    finally:
        engine.stop()


def weights_loader(model, tok):
    """`path -> state dict` for `/update_weights_from_disk`: the directory loaded on the CPU and
    checked against the served model (the engine copies it into the model's own tensors)."""
    from pride.config import ModelSettings
    from pride.models import load_model_and_tokenizer

    def load(path: str) -> dict:
        new, new_tok, _ = load_model_and_tokenizer(ModelSettings(path=path), device="cpu")
        return same_shape_state(model, tok, new, new_tok, path)

    return load


def same_shape_state(model, tok, new, new_tok, path: str) -> dict:
    """`new`'s state dict when it can replace `model`'s in place (same tensors, same tokenizer),
    else a PrideError that names the first difference."""
    state, own = new.state_dict(), model.state_dict()
    if set(state) != set(own):
        extra, missing = sorted(set(state) - set(own)), sorted(set(own) - set(state))
        raise PrideError(f"{path}: not the served architecture (tensors {(extra or missing)[:3]} "
                         f"{'not in' if extra else 'missing from'} it); start a server for it instead")
    for key, tensor in own.items():
        if state[key].shape != tensor.shape:
            raise PrideError(f"{path}: {key} has shape {tuple(state[key].shape)}, the served model "
                             f"{tuple(tensor.shape)}; start a server for it instead")
    if new_tok.get_vocab() != tok.get_vocab() or new_tok.chat_template != tok.chat_template:
        raise PrideError(f"{path}: its tokenizer or chat template differs from the served one; start a server "
                         "for it instead")
    mine, theirs = config_fields(model.config), config_fields(new.config)
    changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if changed:  # same shapes, other computation (activation, rope, norm epsilon, ...): the old config would run
        k = changed[0]
        raise PrideError(f"{path}: its config.json has {k}={theirs.get(k)!r} where the served model has "
                         f"{mine.get(k)!r}; the served config would compute with its weights. Start a server for "
                         "it instead")
    return state


# config.json fields that do not change what a forward computes (names, versions, loading and caching hints)
NOT_COMPUTATION = {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "use_cache", "architectures",
                   "_attn_implementation", "_attn_implementation_autoset", "attn_implementation", "pride_tokenizer",
                   "_commit_hash", "output_attentions", "output_hidden_states", "return_dict", "tie_encoder_decoder",
                   "pad_token_id", "id2label", "label2id", "num_labels"}  # a head's labels: its shape says enough


def config_fields(config) -> dict:
    """A model config's fields that decide its computation (see NOT_COMPUTATION)."""
    return {k: v for k, v in config.to_dict().items() if k not in NOT_COMPUTATION}


def _server_class():
    import signal
    from contextlib import contextmanager

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn, less re-raising SIGTERM / SIGINT at the end: a stop asked for is a clean exit (0);
        and before its graceful-shutdown deadline cancels what still runs (a plain-text 500 for
        the client, "ASGI callable returned without completing response" in the log),
        `before_deadline` makes the engine answer every request with a 503 in OpenAI's shape."""

        before_deadline = staticmethod(lambda: None)

        async def shutdown(self, sockets=None):
            import asyncio

            timeout = self.config.timeout_graceful_shutdown or 0.0
            # half the timeout to finish, then an answer: the rest covers closing the connections,
            # joining the engine and the interpreter's teardown (about 1 s with torch loaded, measured)
            handle = asyncio.get_running_loop().call_later(timeout / 2, self.before_deadline)
            try:
                await super().shutdown(sockets)
            finally:
                handle.cancel()

        @contextmanager
        def capture_signals(self):
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
