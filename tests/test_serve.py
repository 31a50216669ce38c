"""`pride serve` with the official `openai` client (issue 12).

The server runs in this process (uvicorn in a thread, the engine's own thread behind it)
on a free loopback port, with the tiny random-init Llama: texts are random bytes, so the
tests check structure, reproducibility and limits rather than content.
"""

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
import uvicorn

from pride.config import ModelSettings
from pride.models import load_model_and_tokenizer
from pride.serve.app import create_app
from pride.engine import Engine

MSG = [{"role": "user", "content": "Say something."}]


def start(app):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    for _ in range(100):
        try:
            httpx.get(base + "/health", timeout=1)
            return server, base
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


@pytest.fixture(scope="module")
def model():
    return load_model_and_tokenizer(ModelSettings(path="tiny:llama"), seed=0)


@pytest.fixture(scope="module")
def servers(model):
    m, tok, fmt = model
    engine = Engine(m, tok, max_batch_size=8)
    open_server, open_base = start(create_app(engine, fmt, "tiny", None, context=4096, max_tokens=4096))
    key_server, key_base = start(create_app(engine, fmt, "tiny", "secret-key", context=4096, max_tokens=4096))
    yield open_base, key_base
    open_server.should_exit = key_server.should_exit = True


@pytest.fixture(scope="module")
def client(servers):
    return openai.OpenAI(base_url=servers[0] + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_plain_completion(client):
    r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=12, temperature=0)
    assert r.object == "chat.completion" and r.model == "tiny" and len(r.choices) == 1
    c = r.choices[0]
    assert c.message.role == "assistant" and isinstance(c.message.content, str)
    assert c.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert client.models.list().data[0].id == "tiny"


def test_streamed_equals_plain(client):
    args = dict(model="tiny", messages=MSG, max_tokens=30, temperature=1.0, seed=7)
    plain = client.chat.completions.create(**args)
    chunks = list(client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    assert len(chunks) >= 3  # role, several deltas, finish
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == plain.choices[0].message.content
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_n_choices_sampled_and_greedy(client):
    r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=10, temperature=1.0, n=3, seed=1)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.message.content for c in r.choices}) > 1
    greedy = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=10, temperature=0, n=2)
    assert greedy.choices[0].message.content == greedy.choices[1].message.content  # n copies, as vLLM
    assert greedy.usage.completion_tokens == 2 * client.chat.completions.create(
        model="tiny", messages=MSG, max_tokens=10, temperature=0).usage.completion_tokens


def test_seed_reproducible_under_load(client):
    args = dict(model="tiny", messages=MSG, max_tokens=20, temperature=1.0, seed=1234)
    with ThreadPoolExecutor(8) as pool:  # other requests interleave with the seeded ones
        noise = [pool.submit(client.chat.completions.create, model="tiny", messages=MSG, max_tokens=20)
                 for _ in range(6)]
        a = pool.submit(client.chat.completions.create, **args)
        b = pool.submit(client.chat.completions.create, **args)
        [f.result() for f in noise]
    assert a.result().choices[0].message.content == b.result().choices[0].message.content
    other = client.chat.completions.create(**{**args, "seed": 4321})
    assert other.choices[0].message.content != a.result().choices[0].message.content


def test_stop_string_cuts_text_and_usage(client):
    base = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=40, temperature=0)
    text = base.choices[0].message.content
    cut = next(i for i in range(4, len(text) - 2) if "\ufffd" not in text[i:i + 2])
    stop = text[cut:cut + 2]
    r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=40, temperature=0, stop=[stop, "zzzz"])
    first = text.index(stop)
    assert r.choices[0].message.content == text[:first] and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < base.usage.completion_tokens  # tokens after the stop are not counted


def test_logprobs_greedy_token_is_the_top_one(client):
    r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=6, temperature=0, logprobs=True,
                                       top_logprobs=3)
    entries = r.choices[0].logprobs.content
    assert len(entries) == r.usage.completion_tokens
    for e in entries:
        tops = [t.logprob for t in e.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and all(t <= 0 for t in tops)
        # the same float32 value through JSON (pytest's default relative 1e-6)
        assert e.logprob == pytest.approx(tops[0])  # greedy picks the most likely token


def test_bad_key_then_good_request_on_the_same_connection(servers):
    bad = openai.OpenAI(base_url=servers[1] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model="tiny", messages=MSG, max_tokens=3)
    assert e.value.status_code == 401 and e.value.body["type"] == "authentication_error"
    good = bad.with_options(api_key="secret-key")  # shares the keep-alive connection pool
    assert good.chat.completions.create(model="tiny", messages=MSG, max_tokens=3).choices
    assert httpx.get(servers[1] + "/health").status_code == 200  # health needs no key


@pytest.mark.parametrize("change", [
    {"n": 0}, {"messages": "hi"}, {"messages": [{"role": "user"}]}, {"messages": [{"content": "hi"}]},
    {"messages": []}, {"max_tokens": -5}, {"top_logprobs": 100000, "logprobs": True}, {"seed": "abc"},
    {"temperature": -1}, {"top_p": 5}, {"stop": 3}, {"max_tokens": 10_000_000}, {"model": "other"},
    {"messages": [{"role": "user", "content": "x" * 5000}]},  # longer than the 4096-token context
])
def test_malformed_requests_get_a_json_4xx(servers, change):
    body = {"model": "tiny", "messages": MSG, "max_tokens": 3, **change}
    r = httpx.post(servers[0] + "/v1/chat/completions", json=body, timeout=30)
    assert 400 <= r.status_code < 500, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]


def test_wrong_methods_and_paths_are_json(servers):
    with httpx.Client(base_url=servers[0]) as h:  # one keep-alive connection throughout
        assert h.put("/v1/chat/completions", json={}).json()["error"]["code"] == 405
        assert h.delete("/v1/models").status_code == 405
        assert h.get("/v1/nothing").json()["error"]["code"] == 404
        assert h.post("/v1/chat/completions", content=b"{not json").status_code == 400
        assert h.post("/v1/chat/completions", json={"model": "tiny", "messages": MSG, "max_tokens": 2}).status_code == 200


def test_64_concurrent_requests_all_answered(client):
    def one(i):
        return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"q{i}"}],
                                              max_tokens=8, temperature=0.7)
    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, range(64)))
    assert len(results) == 64 and all(r.choices[0].finish_reason in ("stop", "length") for r in results)


def test_long_generation_blocks_nobody_and_stops_when_its_client_leaves(servers, client):
    base = servers[0]
    long_body = {"model": "tiny", "messages": MSG, "max_tokens": 3000, "stream": True, "ignore_eos": True}
    with httpx.Client(timeout=60) as h, h.stream("POST", base + "/v1/chat/completions", json=long_body) as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith("data:")  # the role chunk
        assert next(line for line in lines if line.startswith("data:"))  # first text: it is generating
        assert httpx.get(base + "/health").json()["running"] == 1
        t = time.monotonic()
        assert httpx.get(base + "/health", timeout=10).status_code == 200
        short = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=4)
        waited = time.monotonic() - t
        assert short.choices and waited < 10, waited  # generous: the long one gets one segment per turn
    # the client closed its stream: its generation is cancelled
    deadline = time.monotonic() + 10
    while httpx.get(base + "/health").json()["running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert httpx.get(base + "/health").json()["running"] == 0


def test_completions_endpoint(client):
    r = client.completions.create(model="tiny", prompt="Once upon", max_tokens=5, temperature=0, logprobs=2)
    assert r.object == "text_completion" and isinstance(r.choices[0].text, str)
    assert len(r.choices[0].logprobs.tokens) == r.usage.completion_tokens
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="Once upon", max_tokens=5, temperature=0, stream=True))
    assert streamed == r.choices[0].text


def test_a_body_over_the_limit_is_a_413_before_it_is_read(servers):
    """Content-Length over the limit: answered at once, no body sent at all; a chunked body is cut
    where it passes the limit. /health answers throughout (issue 26: an 8 MB body froze it)."""
    import http.client

    host, port = servers[0].split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(64 * 2**20))
    conn.endheaders()  # and never the 64 MiB
    r = conn.getresponse()
    assert r.status == 413 and "limit of 4194304 bytes" in __import__("json").loads(r.read())["error"]["message"]

    def chunks():
        yield b'{"model": "tiny", "messages": [{"role": "user", "content": "'
        for _ in range(6):
            yield b"x" * 2**20
        yield b'"}]}'

    r = httpx.post(servers[0] + "/v1/chat/completions", content=chunks(), timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == 413
    assert httpx.get(servers[0] + "/health", timeout=5).status_code == 200


def test_a_prompt_too_long_for_any_tokenization_is_refused_without_tokenizing(servers, monkeypatch):
    from pride.chat import ChatFormat

    def never(*a, **k):
        raise AssertionError("tokenized")

    monkeypatch.setattr(ChatFormat, "encode_prompt", never)
    body = {"model": "tiny", "messages": [{"role": "user", "content": "x" * 3_000_000}], "max_tokens": 3}
    r = httpx.post(servers[0] + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400 and "more than this model's context of 4096 tokens can hold" in r.json()["error"]["message"]


@pytest.mark.parametrize("seed", [2**70, -(2**63) - 1])
def test_a_seed_out_of_range_is_a_400_and_the_engine_keeps_serving(client, seed):
    with pytest.raises(openai.BadRequestError, match="seed"):
        client.chat.completions.create(model="tiny", messages=MSG, max_tokens=3, seed=seed)
    edge = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=3, seed=2**63 - 1, n=3,
                                          temperature=1.0)  # seed + k passes 2^63: wraps, no overflow
    assert len(edge.choices) == 3
    assert client.chat.completions.create(model="tiny", messages=MSG, max_tokens=3).choices


def test_a_plain_request_whose_client_leaves_is_cancelled_within_a_second(servers):
    base = servers[0]
    body = {"model": "tiny", "messages": MSG, "max_tokens": 3000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(base + "/v1/chat/completions", json=body, timeout=1.5)  # gives up while tokens flow
    left = time.monotonic()
    while httpx.get(base + "/health").json()["running"] and time.monotonic() - left < 10:
        time.sleep(0.05)
    assert httpx.get(base + "/health").json()["running"] == 0
    assert time.monotonic() - left < 2.5  # the check runs every 0.5 s, plus one engine segment


def test_loopback_addresses():
    from pride.serve.app import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.4", "example.com"))


def test_sigterm_under_load_stops_within_the_shutdown_timeout_and_exits_0(tmp_path):
    """20 plain and 20 streamed long generations in flight at SIGTERM: the server exits 0 within
    --shutdown-timeout (4 s: requests get 2 s, then their answer; the process's teardown takes
    about 1 s on the development machine), every client gets an error in OpenAI's shape (plain: a 503 JSON
    body; streamed: an error chunk), and the log holds no traceback and no ASGI warning."""
    import signal
    import subprocess
    import sys

    from pride.eval.hosting import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pride", "serve", "tiny:llama", "--port", str(port),
                             "--shutdown-timeout", "4", "--threads", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                httpx.get(base + "/health", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.1)
        body = {"model": "tiny:llama", "messages": MSG, "max_tokens": 3000, "stream": True, "ignore_eos": True}

        def plain():
            r = httpx.post(base + "/v1/chat/completions", json={**body, "stream": False}, timeout=60)
            return r.status_code, r.json()

        def streamed():
            with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=60) as r:
                return [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")][-1]

        pool = ThreadPoolExecutor(40)
        answers = [pool.submit(plain) for _ in range(20)] + [pool.submit(streamed) for _ in range(20)]
        deadline = time.monotonic() + 120
        while httpx.get(base + "/health").json()["running"] < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(base + "/health").json()["running"] == 40
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert time.monotonic() - t < 4
        for status, reply in (a.result() for a in answers[:20]):
            assert status == 503 and reply["error"]["message"] == "the server is shutting down"
        for last in (a.result() for a in answers[20:]):
            assert last["error"]["message"] == "the server is shutting down" and last["error"]["type"] == "server_error"
        pool.shutdown()
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read()
    assert proc.returncode == 0, log
    assert "Traceback" not in log and "ASGI callable" not in log, log


@pytest.mark.parametrize("route,body", [
    ("/v1/chat/completions", '{"model": "tiny", "messages": [{"role": "user", "content": "a\\ud800b"}]}'),
    ("/v1/completions", '{"model": "tiny", "prompt": "a\\udc00"}'),
    ("/v1/chat/completions", '{"model": "tiny", "stop": ["\\ud800"], "messages": [{"role": "user", "content": "a"}]}'),
    ("/v1/chat/completions",
     '{"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", "text": "a\\ud800"}]}]}'),
])
def test_a_lone_surrogate_is_a_400_naming_the_field(servers, route, body):
    """JSON can escape half a surrogate pair; the tokenizer then raised a plain-text 500."""
    r = httpx.post(servers[0] + route, content=body, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400 and "lone surrogate" in r.json()["error"]["message"], r.text


def test_a_short_request_joins_the_running_batch_and_finishes_first(servers, client, model, monkeypatch):
    """Continuous batching: two long generations run; a short request sent meanwhile joins their
    batch at the next step (the batch holds all three at once) and is answered while they go on."""
    from pride.engine.scheduler import Lane

    sizes = []
    decode = Lane._decode
    monkeypatch.setattr(Lane, "_decode", lambda lane: (sizes.append(len(lane.running)), decode(lane))[1])
    base = servers[0]
    long_body = {"model": "tiny", "messages": MSG, "max_tokens": 3000, "stream": True, "ignore_eos": True}
    with httpx.Client(timeout=60) as h, h.stream("POST", base + "/v1/chat/completions", json=long_body) as a, \
            h.stream("POST", base + "/v1/chat/completions", json=long_body) as b:
        readers = [stream.iter_lines() for stream in (a, b)]  # kept: a dropped reader closes its stream
        for lines in readers:
            assert next(line for line in lines if '"content": "' in line and '"role"' not in line)  # generating
        sizes.clear()
        short = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=4, temperature=0)
        assert short.choices[0].finish_reason in ("stop", "length")
        assert httpx.get(base + "/health").json()["running"] == 2  # the long ones go on
    assert max(sizes) == 3  # one batch: the short request decoded beside the long ones


def test_a_stream_gets_a_chunk_per_token(model):
    """A model that only ever says lowercase letters (every other token's logit pushed down by a
    bias): each token is a whole character, so each is one chunk, with its one logprob entry."""
    import copy

    m, tok, fmt = model
    letters = model_with_only_letters(copy.deepcopy(m), tok)
    engine = Engine(letters, tok, max_batch_size=8)
    server, base = start(create_app(engine, fmt, "tiny", None, context=4096, max_tokens=4096))
    try:
        c = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)
        chunks = list(c.chat.completions.create(model="tiny", messages=MSG, max_tokens=25, temperature=1.0, seed=3,
                                                stream=True, logprobs=True, extra_body={"ignore_eos": True}))
    finally:
        server.should_exit = True
    content = [ch.choices[0] for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert len(content) == 25
    assert all(len(c.delta.content) == 1 and c.delta.content.islower() for c in content)
    assert all(len(c.logprobs.content) == 1 and c.logprobs.content[0].token == c.delta.content for c in content)


def model_with_only_letters(m, tok):
    import torch

    vocab = m.lm_head.out_features
    head = torch.nn.Linear(m.lm_head.in_features, vocab, bias=True)
    head.weight.data.copy_(m.lm_head.weight.data)
    allowed = [tok.convert_tokens_to_ids(ch) for ch in "abcdefghijklmnopqrstuvwxyz"]
    head.bias.data.fill_(-1e4)  # exp(-1e4 + O(1)) is 0 in fp32: those tokens are never drawn
    head.bias.data[allowed] = 0.0
    m.lm_head = head
    return m


def saved_tiny(path, arch="llama", seed=0):
    m, tok, _ = load_model_and_tokenizer(ModelSettings(path=f"tiny:{arch}"), seed=seed)
    m.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def greedy_ids(model_dir, prompt_ids, n):
    """The greedy continuation of the directory's model, loaded directly (no server). Compared with
    the engine's greedy text exactly, as test_engine's greedy test does: the two paths round the
    last bits differently, which changes an argmax only on a near-tie (none in these random-init
    models' 400 tokens here; a different CPU could in principle find one)."""
    m, _, _ = load_model_and_tokenizer(ModelSettings(path=str(model_dir)))
    out = m.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[0, len(prompt_ids):].tolist()


def test_update_weights_from_disk_swaps_between_requests_and_says_what_it_serves(tmp_path):
    """sglang's reload routes: a request sent before the reload finishes on the old weights, the next
    one runs on the new ones (greedy text equal to the new directory's model loaded directly),
    `/get_model_info` and `/v1/models` name the directory; another architecture or a missing
    directory is refused and the last good weights serve on; with a key the routes need it."""
    from pride.serve.app import weights_loader

    old, new = saved_tiny(tmp_path / "old", seed=0), saved_tiny(tmp_path / "new", seed=1)
    other = saved_tiny(tmp_path / "gemma", arch="gemma")
    m, tok, fmt = load_model_and_tokenizer(ModelSettings(path=str(old)))
    engine = Engine(m, tok, max_batch_size=8)
    server, base = start(create_app(engine, fmt, "tiny", None, 4096, 4096, model_path=str(old),
                                    load_weights=weights_loader(m, tok)))
    key_server, key_base = start(create_app(engine, fmt, "tiny", "k", 4096, 4096, model_path=str(old),
                                            load_weights=weights_loader(m, tok)))
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
    prompt = list(tok("the")["input_ids"])

    def greedy_text(n):
        r = client.completions.create(model="tiny", prompt="the", max_tokens=n, temperature=0,
                                      extra_body={"ignore_eos": True})
        return r.choices[0].text

    def expected(model_dir, n):
        return tok.decode(greedy_ids(model_dir, prompt, n), skip_special_tokens=True)

    def reload(path):
        return httpx.post(base + "/update_weights_from_disk", json={"model_path": str(path)}, timeout=120)

    try:
        assert httpx.get(base + "/get_model_info").json()["model_path"] == str(old)
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(greedy_text, 400)
            time.sleep(0.3)  # the long request is decoding when the reload arrives
            reloaded = pool.submit(reload, new)
            long_text = running.result()
            assert reloaded.result().json() == {"success": True, "message": f"loaded {new}", "num_paused_requests": 0}
        assert long_text == expected(old, 400)  # sent before the reload: never saw the new weights
        after = greedy_text(24)
        assert after == expected(new, 24) and after != expected(old, 24)
        info = httpx.get(base + "/get_model_info").json()
        assert info["model_path"] == str(new) and info["weight_version"] == "1"
        assert httpx.get(base + "/v1/models").json()["data"][0]["root"] == str(new)
        bad = reload(other)
        assert bad.status_code == 400 and not bad.json()["success"]
        assert bad.json()["message"].startswith(f"{other}: ") and "start a server for it instead" in bad.json()["message"]
        missing = reload(tmp_path / "nope")
        assert missing.status_code == 400 and str(tmp_path / "nope") in missing.json()["message"]
        assert httpx.get(base + "/get_model_info").json()["model_path"] == str(new)  # still the last good one
        assert greedy_text(24) == after
        assert httpx.post(key_base + "/update_weights_from_disk", json={"model_path": str(old)}).status_code == 401
        assert httpx.get(key_base + "/get_model_info").status_code == 401
    finally:
        server.should_exit = key_server.should_exit = True
        engine.stop()


def test_hostile_requests_get_a_400_while_8_streams_finish_and_health_answers(model):
    """An empty prompt to a tokenizer that adds no BOS (Qwen's), 10,000 stop strings and 100,000
    empty messages: each a 400 before it reaches the engine, while 8 streams run to their full
    length and /health keeps answering within half a second."""
    m, tok, fmt = load_model_and_tokenizer(ModelSettings(path="tiny:qwen2"), seed=0)
    assert tok("")["input_ids"] == []
    engine = Engine(m, tok, max_batch_size=16)
    server, base = start(create_app(engine, fmt, "tiny", None, context=4096, max_tokens=4096))
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)

    def stream():
        chunks = list(client.chat.completions.create(model="tiny", messages=MSG, max_tokens=200, stream=True,
                                                     extra_body={"ignore_eos": True},
                                                     stream_options={"include_usage": True}))
        return chunks[-1].usage.completion_tokens

    try:
        with ThreadPoolExecutor(8) as pool:
            streams = [pool.submit(stream) for _ in range(8)]
            hostile = [
                lambda: client.completions.create(model="tiny", prompt="", max_tokens=5),
                lambda: client.chat.completions.create(model="tiny", messages=MSG, max_tokens=5,
                                                       stop=[f"s{i}" for i in range(10_000)]),
                lambda: client.chat.completions.create(model="tiny", max_tokens=5,
                                                       messages=[{"role": "user", "content": ""}] * 100_000),
            ]
            for call, says in zip(hostile, ["the prompt is empty", "stop strings: at most", "messages: at most"]):
                with pytest.raises(openai.BadRequestError) as e:
                    call()
                assert says in e.value.body["message"], e.value.body
                t = time.monotonic()
                assert httpx.get(base + "/health", timeout=5).status_code == 200
                assert time.monotonic() - t < 0.5
            assert [s.result() for s in streams] == [200] * 8
    finally:
        server.should_exit = True
        engine.stop()


def test_a_failing_forward_fails_only_its_request_and_a_dead_worker_turns_health_to_503(model):
    """A model that raises on one token in a prompt: the request whose prompt holds it gets a 500 in OpenAI's
    shape (logged with its id), the 4 streams beside it finish; then the worker thread dies and
    /health says 503, and a new request gets a 503 at once, never an endless wait."""
    m, tok, fmt = load_model_and_tokenizer(ModelSettings(path="tiny:llama"), seed=0)
    poison = tok("zq", add_special_tokens=False)["input_ids"][0]
    forward = m.forward

    def fragile(*args, **kwargs):
        ids = kwargs["input_ids"]
        if ids.shape[1] > 1 and (ids == poison).any():  # a prompt holding it (a sampled token may be it too)
            raise RuntimeError("this model cannot take that token")
        return forward(*args, **kwargs)

    m.forward = fragile
    engine = Engine(m, tok, max_batch_size=16)
    logged = []
    engine.log = logged.append
    server, base = start(create_app(engine, fmt, "tiny", None, context=4096, max_tokens=4096))
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
    safe = [{"role": "user", "content": "Say something."}]
    try:
        with ThreadPoolExecutor(5) as pool:
            streams = [pool.submit(lambda: list(client.chat.completions.create(
                model="tiny", messages=safe, max_tokens=100, stream=True, extra_body={"ignore_eos": True},
                stream_options={"include_usage": True}))[-1].usage.completion_tokens) for _ in range(4)]
            time.sleep(0.3)
            with pytest.raises(openai.InternalServerError) as e:
                client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "zq zq"}],
                                               max_tokens=5)
            assert "this model cannot take that token" in e.value.body["message"]
            assert [s.result() for s in streams] == [100] * 4  # every stream ran to its end
        assert any("chatcmpl-" in line and "cannot take that token" in line for line in logged)
        assert httpx.get(base + "/health").status_code == 200

        def die(*args, **kwargs):
            raise SystemExit("simulated: the worker thread is gone")

        engine._admit = die
        engine.queue.put(None)  # wake it: it dies at its next admission
        for _ in range(100):
            if httpx.get(base + "/health").status_code == 503:
                break
            time.sleep(0.05)
        health = httpx.get(base + "/health")
        assert health.status_code == 503 and "worker thread is gone" in health.json()["error"]
        t = time.monotonic()
        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(model="tiny", messages=safe, max_tokens=5)
        assert e.value.status_code == 503 and time.monotonic() - t < 5
    finally:
        server.should_exit = True
        engine.stop()


def test_a_temperature_below_1e_5_is_greedy(client):
    """vLLM's threshold: 1e-40 would overflow the scores into garbage; it is greedy instead."""
    args = dict(model="tiny", messages=MSG, max_tokens=20, extra_body={"ignore_eos": True})
    greedy = client.chat.completions.create(temperature=0, **args).choices[0].message.content
    assert client.chat.completions.create(temperature=1e-40, **args).choices[0].message.content == greedy
    assert client.chat.completions.create(temperature=9e-6, seed=3, **args).choices[0].message.content == greedy


def test_a_model_without_a_chat_template_is_served_with_a_warning_naming_the_fallback(tmp_path):
    import json as _json
    import subprocess
    import sys

    from pride.eval.hosting import free_port

    model_dir = saved_tiny(tmp_path / "plain")
    config = model_dir / "tokenizer_config.json"
    settings = _json.loads(config.read_text())
    settings.pop("chat_template", None)
    config.write_text(_json.dumps(settings))
    for extra in model_dir.glob("chat_template.*"):
        extra.unlink()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pride", "serve", str(model_dir), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "/v1" in line:
                break
    finally:
        proc.kill()
        proc.wait(30)
    warning = [line for line in lines if "warning" in line]
    assert len(warning) == 1 and "has no chat template" in warning[0] and "ChatML" in warning[0], lines
