"""Online rounds that sample through HTTP servers (issue 33): every round samples its own model.

`sampler: openai` against a running `pride serve` (told to load each round's model with
sglang's `/update_weights_from_disk`), `sampler: server` (pride starts a server on each
round's model), a server that cannot reload refused before any sampling, results that do not
depend on how many requests are in flight, and a 2-process launch. "From round n's model" is
shown by equality: the samples equal those of the round's `model/` loaded directly into the
engine, each sample alone with its recorded seed (what `pride serve --strict-seeds` computes).
The comparison is exact: the same code path on the same CPU with the same thread count (the
servers get `--threads 2`, as conftest sets this process) computes the same logits, and a
seeded draw from equal logits is the same token.
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import torch

from pride.config import ModelSettings
from pride.engine import Engine
from pride.models import load_model_and_tokenizer
from tests.test_online import longer_wins, online_config, send_json
from tests.test_serve import saved_tiny


def direct_samples(model_dir: Path, rows: list[dict], temperature: float, max_tokens: int) -> list[list[str]]:
    """Each recorded sample drawn again from `model_dir` in process, alone, with its seed."""
    model, tok, fmt = load_model_and_tokenizer(ModelSettings(path=str(model_dir)))
    engine = Engine(model, tok)
    return [[engine.complete([fmt.encode_prompt(r["prompt"])], 1, [[seed]], temperature=temperature,
                             max_tokens=max_tokens)[0][0].strip() for seed in r["seeds"]] for r in rows]


def generations(run: Path, n: int) -> list[dict]:
    return [json.loads(x) for x in (run / f"iteration-{n}" / "generations.jsonl").read_text().splitlines()]


def port_of(url: str) -> int:
    return int(re.search(r":(\d+)", url.split("//")[1]).group(1))


def wait_for(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            httpx.get(url + "/health", timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("pride serve did not start")


@pytest.fixture
def pride_serve(tmp_path):
    """`pride serve` on a saved tiny Llama, seeded requests each in a batch of its own."""
    from pride.eval.hosting import free_port

    start = saved_tiny(tmp_path / "start", seed=0)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pride", "serve", str(start), "--port", str(port), "--strict-seeds",
                             "--threads", "2",
                             "--model-name", "policy"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    wait_for(base, proc)
    yield start, base + "/v1"
    proc.terminate()
    proc.wait(30)


def round_args(tmp_path, start: Path, *extra) -> list[str]:
    """The online test config on a saved model, a learning rate that moves its samples in one round."""
    args = [a for a in online_config(tmp_path, tmp_path / "run") if not a.startswith(("model.path", "train.learning"))]
    return [*args, f"model.path={start}", "train.learning_rate=2e-3", *extra]


def test_two_rounds_against_a_running_pride_serve_sample_each_rounds_model(tmp_path, pride_serve):
    from pride.config import load_config
    from pride.online.loop import run_online

    start, url = pride_serve
    run_online(load_config(None, round_args(tmp_path, start, "online.sampler=openai", f"online.sampler_url={url}")))
    run = tmp_path / "run"
    first, second = generations(run, 1), generations(run, 2)
    assert [r["responses"] for r in first] == direct_samples(start, first, 1.0, 6)
    assert [r["responses"] for r in second] == direct_samples(run / "iteration-1" / "model", second, 1.0, 6)
    # and that is not what the starting model gives for round 2's seeds: a stale server would have
    assert [r["responses"] for r in second] != direct_samples(start, second, 1.0, 6)
    info = httpx.get(url.removesuffix("/v1") + "/get_model_info").json()
    assert info["model_path"] == str((run / "iteration-1" / "model").resolve()) and info["weight_version"] == "2"


class NoReload(BaseHTTPRequestHandler):
    """An OpenAI-compatible server with no reload routes (vLLM's OpenAI server has none)."""

    def do_GET(self):
        found = self.path.endswith("/models")
        send_json(self, {"data": [{"id": "m"}]} if found else {"detail": "Not Found"}, 200 if found else 404)

    def do_POST(self):
        NoReload.posts += 1
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_server_that_cannot_reload_stops_the_run_before_sampling(tmp_path):
    NoReload.posts = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), NoReload)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/v1"
    start = saved_tiny(tmp_path / "start")
    (tmp_path / "empty.yaml").write_text("# from the command line\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    try:
        proc = subprocess.run([sys.executable, "-m", "pride", "online", str(tmp_path / "empty.yaml"),
                               *round_args(tmp_path, start, "online.sampler=openai", f"online.sampler_url={url}")],
                              capture_output=True, text=True, env=env)
    finally:
        server.shutdown()
    assert proc.returncode == 2, proc.stderr[-2000:]
    error = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(error) == 1 and "cannot load a new model from disk" in error[0] and "Traceback" not in proc.stderr
    assert "rounds 2-2 would sample the starting model" in error[0] and "online.sampler=server" in error[0]
    assert NoReload.posts == 0 and not list((tmp_path / "run").glob("iteration-1/generations*"))


class Fake(BaseHTTPRequestHandler):
    """Answers after a random delay (so answers come back in another order at every concurrency):
    samplers get their seed back, judges prefer the longer answer. Counts requests in flight."""

    lock = threading.Lock()

    def do_GET(self):  # it serves the starting model, model.path (as vLLM's /models names it: root)
        found = self.path.endswith("/models")
        send_json(self, {"data": [{"id": "fake", "root": "tiny:llama"}]} if found else {"detail": "Not Found"},
                  200 if found else 404)

    def do_POST(self):
        with Fake.lock:
            Fake.in_flight += 1
            Fake.most = max(Fake.most, Fake.in_flight)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(random.uniform(0, 0.01))
        text = body["messages"][-1]["content"]
        content = longer_wins(text) if "[User Question]" in text else "x" * (body["seed"] % 7) + f" {body['seed']}"
        with Fake.lock:
            Fake.in_flight -= 1
        send_json(self, {"choices": [{"message": {"role": "assistant", "content": content}}]})

    def log_message(self, *args):
        pass


def test_samples_and_llm_verdicts_do_not_depend_on_the_concurrency(tmp_path):
    from pride.config import load_config
    from pride.online.loop import run_online

    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Fake) for _ in range(2)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    urls = [f"http://127.0.0.1:{s.server_port}/v1" for s in servers]
    files, most = {}, {}
    try:
        for c in (1, 16):
            Fake.in_flight = Fake.most = 0
            out = tmp_path / f"c{c}"
            run_online(load_config(None, [
                *online_config(tmp_path, out, "online.iterations=1", "train.max_steps=1"),
                "online.sampler=openai", f"online.sampler_url=[{urls[0]}, {urls[1]}]", f"online.sampler_concurrency={c}",
                "online.judge.type=llm", f"online.judge.url={urls[1]}", "online.judge.model=fake",
                f"online.judge.concurrency={c}"]))
            files[c] = {name: (out / "iteration-1" / name).read_text() for name in ("generations.jsonl", "scores.jsonl")}
            most[c] = Fake.most
    finally:
        for s in servers:
            s.shutdown()
    assert most[1] == 1 and most[16] > 4  # the requests really were in flight together
    assert files[1] == files[16]
    scores = [json.loads(x) for x in files[16]["scores.jsonl"].splitlines()]
    assert len(scores) == 12 and all(len(s["verdicts"]) == 4 and s["verdicts"][0][0] is None for s in scores)
    gens = [json.loads(x) for x in files[16]["generations.jsonl"].splitlines()]
    assert all(r["responses"] == [("x" * (s % 7) + f" {s}").strip() for s in r["seeds"]] for r in gens)


def test_one_round_against_a_server_serving_another_model_is_refused_before_sampling(tmp_path, pride_serve):
    """iterations=1 is no exception: a server that serves another model than model.path is not sampled."""
    from pride.config import load_config
    from pride.errors import PrideError
    from pride.online.loop import run_online

    start, url = pride_serve
    other = saved_tiny(tmp_path / "other", seed=5)
    with pytest.raises(PrideError, match=rf"{url}: serves {start}, not this round's model {other}"):
        run_online(load_config(None, round_args(tmp_path, other, "online.sampler=openai", f"online.sampler_url={url}",
                                                "online.iterations=1")))
    assert not list((tmp_path / "run").glob("iteration-1/generations*"))
    run_online(load_config(None, round_args(tmp_path, start, "online.sampler=openai", f"online.sampler_url={url}",
                                            "online.iterations=1", "train.max_steps=1")))


KILLER = textwrap.dedent("""
    import os, signal, sys
    import pride.online.samplers as samplers
    real = samplers.OpenAISampler.stream
    def stream(self, prompts, seeds):
        for n, answers in enumerate(real(self, prompts, seeds)):
            if n == 6 and os.path.isdir(sys.argv[-1]):  # round 2 (round 1's model exists): six prompts in
                os.kill(os.getpid(), signal.SIGKILL)
            yield answers
    samplers.OpenAISampler.stream = stream
    from pride.cli import main
    sys.exit(main(sys.argv[1:-1]))
""")


@pytest.mark.slow
def test_server_sampler_two_rounds_each_on_its_own_model_and_a_killed_run_resumes(tmp_path):
    """sampler=server on CPU: pride serve started on each round's model; kill -9 in round 2's
    sampling takes its server down with it (PR_SET_PDEATHSIG) and a re-run resumes."""
    start = saved_tiny(tmp_path / "start")
    (tmp_path / "killer.py").write_text(KILLER)
    (tmp_path / "empty.yaml").write_text("# from the command line\n")
    args = [str(tmp_path / "empty.yaml"), *round_args(tmp_path, start, "online.sampler=server",
                                                      "online.server_args=[--strict-seeds, --threads, '2']")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    run = tmp_path / "run"
    killed = subprocess.run([sys.executable, str(tmp_path / "killer.py"), "online", *args,
                             str(run / "iteration-1" / "model")], capture_output=True, text=True, env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert len((run / "iteration-2" / "generations.part-0.jsonl").read_text().splitlines()) == 6
    log = (run / "iteration-2" / "server-0.log").read_text()
    url = re.search(r"on (http://\S+/v1)", log).group(1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the orphaned server goes when its parent does
        try:
            httpx.get(url.removesuffix("/v1") + "/health", timeout=1)
            time.sleep(0.2)
        except httpx.HTTPError:
            break
    else:
        pytest.fail("the round's server outlived the killed run")
    resumed = subprocess.run([sys.executable, "-m", "pride", "online", *args], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    first, second = generations(run, 1), generations(run, 2)
    assert [r["prompt_id"] for r in second] == [f"p{i}" for i in range(12)]
    assert [r["responses"] for r in first] == direct_samples(start, first, 1.0, 6)
    assert [r["responses"] for r in second] == direct_samples(run / "iteration-1" / "model", second, 1.0, 6)
    assert [r["responses"] for r in second] != direct_samples(start, second, 1.0, 6)
    pairs = [json.loads(x) for x in (run / "iteration-2" / "pairs.jsonl").read_text().splitlines()]
    by_id = {r["prompt_id"]: r["responses"] for r in second}
    assert pairs and all({p["chosen"], p["rejected"]} <= set(by_id[p["prompt_id"]]) for p in pairs)


@pytest.mark.slow
def test_two_processes_share_one_server_per_node_and_each_round_samples_its_own_model(tmp_path):
    """accelerate launch, 2 CPU processes: the node's local main process hosts the round's server
    (server-0.log, no server-1.log), both ranks send their prompts to it, and every sample of
    both rounds equals that round's own model's."""
    start = saved_tiny(tmp_path / "start")
    (tmp_path / "empty.yaml").write_text("# from the command line\n")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "pride", "online",
              str(tmp_path / "empty.yaml"),
              *round_args(tmp_path, start, "online.sampler=server",
                          "online.server_args=[--strict-seeds, --threads, '2']")]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(launch, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    for n, model in ((1, start), (2, run / "iteration-1" / "model")):
        assert (run / f"iteration-{n}" / "server-0.log").exists() and not (run / f"iteration-{n}" / "server-1.log").exists()
        rows = generations(run, n)
        assert [r["prompt_id"] for r in rows] == [f"p{i}" for i in range(12)]
        assert [r["responses"] for r in rows] == direct_samples(model, rows, 1.0, 6)


def test_samplers_that_cannot_do_what_the_launch_asks_are_refused_in_one_line(tmp_path):
    from pride.config import load_config
    from pride.errors import PrideError
    from pride.online.loop import check_sampler_launch

    start = saved_tiny(tmp_path / "start")
    vllm = load_config(None, [f"model.path={start}", "online.sampler=vllm"])
    check_sampler_launch(vllm, 1)
    with pytest.raises(PrideError, match="sampler=vllm runs vLLM inside one process; this launch has 2.*sampler=server"):
        check_sampler_launch(vllm, 2)
    with pytest.raises(PrideError, match="a tiny: model exists only inside this process"):
        check_sampler_launch(load_config(None, ["model.path=tiny:llama", "online.sampler=server"]), 1)
    with pytest.raises(PrideError, match="online.sampler_url is for sampler=openai"):
        load_config(None, [f"model.path={start}", "online.sampler_url=http://127.0.0.1:1/v1"])
    with pytest.raises(PrideError, match="online.server and online.server_args are for sampler=server"):
        load_config(None, [f"model.path={start}", "online.server_args=[--x]"])


def test_an_llm_judge_at_a_closed_port_stops_the_run_before_sampling():
    from pride.config import JudgeSettings
    from pride.errors import PrideError
    from pride.eval.hosting import free_port
    from pride.online.judges import check_judge

    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(PrideError, match=f"online.judge.url {url}: the judge does not answer"):
        check_judge(JudgeSettings(type="llm", url=[url], model="judge"))


TRAIN_KILLER = textwrap.dedent("""
    import os, signal, sys
    import pride.train.loop as loop
    real = loop.save_checkpoint
    def save_checkpoint(acc, run_dir, step, *a, **k):
        out = real(acc, run_dir, step, *a, **k)
        if str(run_dir).endswith("iteration-2") and step == 2:  # round 2's training, a checkpoint written
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    loop.save_checkpoint = save_checkpoint
    from pride.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_grpo_rounds_on_a_server_killed_in_round_2s_training_resume_and_equal_an_uninterrupted_run(tmp_path):
    """objective grpo, sampler=server, 2 rounds: kill -9 after round 2's second checkpoint, run again:
    every round's samples, groups (rewards, advantages) and final weights equal a run never killed."""
    from safetensors.torch import load_file

    start = saved_tiny(tmp_path / "start")
    (tmp_path / "killer.py").write_text(TRAIN_KILLER)
    (tmp_path / "empty.yaml").write_text("# from the command line\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    runs = {}
    for name in ("killed", "whole"):
        args = [str(tmp_path / "empty.yaml"),
                *round_args(tmp_path, start, "online.sampler=server", "online.objective=grpo",
                            "online.server_args=[--strict-seeds, --threads, '2']", "train.save_steps=1",
                            "train.micro_batch_size=2", f"output_dir={tmp_path / name}")]  # 2 prompts' groups a step
        if name == "killed":
            killed = subprocess.run([sys.executable, str(tmp_path / "killer.py"), "online", *args],
                                    capture_output=True, text=True, env=env)
            assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
            assert (tmp_path / name / "iteration-2" / "checkpoints" / "checkpoint-2").is_dir()
            assert not (tmp_path / name / "iteration-2" / "model").exists()
        done = subprocess.run([sys.executable, "-m", "pride", "online", *args], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert ("resumed from" in done.stderr) == (name == "killed"), done.stderr[-3000:]
        runs[name] = tmp_path / name
    for n in (1, 2):
        it = {k: v / f"iteration-{n}" for k, v in runs.items()}
        for f in ("generations.jsonl", "scores.jsonl", "groups.jsonl"):
            assert (it["killed"] / f).read_text() == (it["whole"] / f).read_text(), (n, f)
        a, b = (load_file(str(it[k] / "model" / "model.safetensors")) for k in ("killed", "whole"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), n
    groups = [json.loads(x) for x in (runs["whole"] / "iteration-2" / "groups.jsonl").read_text().splitlines()]
    assert any(abs(a) > 0 for g in groups for a in g["advantages"])  # the rounds had something to learn
