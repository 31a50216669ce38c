"""How `pride eval` talks to endpoints: bounded concurrency, retries, the cache, settings per benchmark."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pride.chat_client import ChatClient, map_concurrently
from pride.errors import PrideError
from pride.eval import mt_bench
from pride.eval.report import write_report


def test_map_concurrently_bounds_requests_in_flight_and_keeps_order():
    lock, state = threading.Lock(), {"now": 0, "max": 0}

    def work(x):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.02)
        with lock:
            state["now"] -= 1
        return x * x

    assert map_concurrently(work, list(range(40)), 5) == [x * x for x in range(40)]
    assert 1 < state["max"] <= 5


class Flaky(BaseHTTPRequestHandler):
    """Answers 429 and 503 before succeeding, or fails every time; counts requests."""

    script: list = []
    calls = 0

    def log_message(self, *args):
        pass

    def do_POST(self):
        type(self).calls += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        code = self.script.pop(0) if self.script else 500
        body = (json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": "ok"}}]}) if code == 200
                else json.dumps({"error": {"message": "busy"}})).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("retry-after-ms", "10")  # the openai client's backoff honours this
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def flaky():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Flaky.calls = 0
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_retries_on_429_and_5xx_then_succeeds(flaky):
    Flaky.script = [429, 503, 200]
    assert ChatClient(flaky, "m", max_retries=3).text([{"role": "user", "content": "hi"}]) == "ok"
    assert Flaky.calls == 3


def test_clear_error_after_the_last_retry(flaky):
    Flaky.script = []
    with pytest.raises(PrideError, match=r"HTTP 500 after 3 tries"):
        ChatClient(flaky, "m", max_retries=2).text([{"role": "user", "content": "hi"}])
    assert Flaky.calls == 3


def test_cached_judgments_are_reused(flaky, tmp_path):
    Flaky.script = [200]
    msgs = [{"role": "user", "content": "judge this"}]
    assert ChatClient(flaky, "m", cache_path=tmp_path / "c.sqlite").text(msgs, temperature=0) == "ok"
    again = ChatClient(flaky, "m", cache_path=tmp_path / "c.sqlite")
    assert again.text(msgs, temperature=0) == "ok" and again.calls == 0 and Flaky.calls == 1


class Recorder:
    def __init__(self):
        self.params = []
        self.lock = threading.Lock()

    def text(self, messages, **params):
        with self.lock:
            self.params.append(params)
        return "answer"


def test_mt_bench_sampling_settings_and_seed():
    qs = [{"question_id": 1, "category": "writing", "turns": ["a", "b"]},
          {"question_id": 2, "category": "math", "turns": ["c", "d"]}]
    rec = Recorder()
    mt_bench.generate_answers(rec, qs, "m", 64, temperature=None, seed=43, concurrency=4)
    assert sorted(p["temperature"] for p in rec.params) == [0.0, 0.0, 0.7, 0.7]  # FastChat's per category
    assert {p["seed"] for p in rec.params} == {43} and {p["max_tokens"] for p in rec.params} == {64}
    rec = Recorder()
    mt_bench.generate_answers(rec, qs, "m", 64, temperature=0.7, top_p=0.9, seed=1)
    assert {(p["temperature"], p["top_p"]) for p in rec.params} == {(0.7, 0.9)}  # LION's sampled evaluation


def test_report_shows_a_dash_for_a_missing_number(tmp_path):
    runs = [{"win_rate": 61.0, "length_controlled_winrate": None, "note": "no df_gamed.csv"}]
    from pride.eval.run import aggregate

    write_report(tmp_path, {"m": {"alpaca_eval": aggregate("alpaca_eval", runs)}})
    table = (tmp_path / "report.md").read_text().splitlines()
    assert table[4] == "| m | - |"  # not the raw 61.00 in the LC column


def test_eval_logs_into_the_training_runs_wandb(tmp_path, monkeypatch):
    """A model pride trained with wandb: `pride eval` resumes that run (its id in wandb.json); others get
    a new run in train.wandb_project / wandb_group."""
    import sys
    import types

    from pride.config import load_config
    from pride.eval.run import _log_trackers

    calls = []

    class Run:
        def log(self, values):
            calls[-1]["logged"] = values

        def finish(self):
            pass

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: calls.append(kw) or Run()))
    trained = tmp_path / "dpo"
    (trained / "model").mkdir(parents=True)
    (trained / "wandb.json").write_text('{"project": "LIONs", "group": "lion-gemma-v1.0", "id": "abc123"}')
    scores = {"dpo": {"mt_bench": {"headline_mean": 7.5}}}  # named after its run
    _log_trackers(load_config(None, [f"model.path={trained / 'model'}", "eval.report_to=[wandb]"]), scores)
    assert calls == [{"project": "LIONs", "group": "lion-gemma-v1.0", "id": "abc123", "resume": "allow",
                      "logged": {"eval/mt_bench": 7.5}}]
    calls.clear()
    _log_trackers(load_config(None, ["model.path=tiny:llama", "eval.report_to=[wandb]", "eval.model_name=m",
                                     "train.wandb_group=g"]), {"m": {"mt_bench": {"headline_mean": 1.0}}})
    assert calls == [{"project": "pride", "group": "g", "name": "m", "job_type": "eval",
                      "logged": {"eval/mt_bench": 1.0}}]


def test_two_models_sharing_a_run_name_never_share_an_eval_directory(tmp_path):
    """a/x/model and b/x/model are both named x: the second is refused before any answer, instead of
    replacing the first's scores; the same model again, or another name, is fine."""
    from pride.eval.run import MODELS, claim_names, default_name

    out = tmp_path / "eval"
    a, b = (tmp_path / p / "x" / "model" for p in "ab")
    for m in (a, b):
        m.mkdir(parents=True)
    assert default_name(str(a)) == default_name(str(b)) == "x"
    write = __import__("pride.io", fromlist=["write_json"]).write_json
    write(out / MODELS, claim_names(out, [("x", str(a))], None))
    assert claim_names(out, [("x", str(a))], None) == {"x": str(a.resolve())}  # evaluated again: its own entry
    with pytest.raises(PrideError, match=r"the name 'x' already holds the scores of .*a/x/model.*set "
                                         r"eval\.model_name to a name of its own \(e\.g\. b-x\)"):
        claim_names(out, [("x", str(b))], None)
    with pytest.raises(PrideError, match=r"choose another eval\.model_name"):
        claim_names(out, [("x", str(b))], "eval.model_name")
    assert claim_names(out, [("b-x", str(b))], "eval.model_name") == {"x": str(a.resolve()), "b-x": str(b.resolve())}


class NoMessage(BaseHTTPRequestHandler):
    """An OpenAI-compatible server whose answer's choice has no message (it once ended in a KeyError)."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                           "choices": [{"index": 0, "finish_reason": "stop"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_an_answer_whose_choice_has_no_message_is_one_line_naming_the_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), NoMessage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        with pytest.raises(PrideError, match=rf"^{url}: not an OpenAI-compatible answer: its first choice has no "
                                             r"message"):
            ChatClient(url, "m", max_retries=0).text([{"role": "user", "content": "hi"}])
    finally:
        server.shutdown()
