"""Every command the README shows, run in tiny form (issue 27): a README example that stops
working fails here, not in a new user's hands.

The commands are read from the README's ```bash blocks. `TINY` says how each one runs here:
the README's text with its placeholders filled (`my.yaml` is written by the test, `/models/...`
are tiny saved models), optional `[...]` parts dropped, and size overrides appended (fewer
steps, rows and tokens); `None` names where else the command runs. A README command missing
from `TINY`, or a `TINY` entry no longer in the README, fails the first test. The commands run
in order, in a copy of `examples/` and `configs/`, as a user runs them from the checkout.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pride.cli import main

ROOT = Path(__file__).resolve().parents[1]
SFT_YAML = "model: {path: 'tiny:llama'}\ndata: {sources: [{path: examples/data/chat.jsonl}]}\noutput_dir: runs/my-sft\n"
DPO_YAML = ("model: {path: runs/example-sft/model}\ndata: {sources: [{path: examples/data/preference.jsonl}]}\n"
            "output_dir: runs/my-dpo\n")
ONLINE_YAML = ("model: {path: runs/example-sft/model}\ndata: {sources: [{path: runs/demo/data/prompts.jsonl}]}\n"
               "output_dir: runs/my-sppo\n")

# README command -> (text of my.yaml or None, extra arguments, expected exit code), or None: where it runs instead
TINY = {
    "make demo": None,  # CI: make check-readme runs `pride demo --seed 0` and checks the README's claims
    "make test": None,  # CI runs it (.ci/run)
    "make test-slow": None,  # CI runs it (.ci/run); this test is one of them
    ".venv/bin/python -m pytest tests/test_chat.py -q": None,  # part of make test
    "pride sft examples/configs/sft.yaml": (None, [], 0),
    "pride sft my.yaml model.path=/models/gemma-2b train.learning_rate=2e-5": (SFT_YAML, ["train.max_steps=2"], 0),
    # FSDP2 on 2 CPU processes (gloo), as tests/test_fsdp.py checks in detail
    "accelerate launch --config_file configs/accelerate/fsdp.yaml -m pride sft my.yaml": (
        SFT_YAML, ["train.max_steps=2"], 0),
    "pride dpo examples/configs/dpo.yaml": (None, [], 0),
    "pride dpo my.yaml preference.loss_type=ipo preference.beta=0.5": (DPO_YAML, ["train.max_steps=1"], 0),
    "pride kto examples/configs/kto.yaml": (None, [], 0),
    # an untrained tiny model scores 0 on the demo's judge (every answer tied): a judge that separates noise
    "pride online examples/configs/online.yaml": (None, [
        "online.judge.function=tests.test_readme_commands:distinct_characters", "data.max_rows=4", "online.iterations=1", "online.samples_per_prompt=3", "online.max_new_tokens=8",
        "train.max_steps=1"], 0),
    "pride online my.yaml online.pairs=sppo preference.loss_type=sppo preference.beta=0.001 "
    "online.judge.type=pairrm online.judge.path=/models/PairRM-hf online.prompt_split=split online.iterations=3": (
        ONLINE_YAML, ["data.max_rows=6", "online.samples_per_prompt=3", "online.max_new_tokens=6",
                      "train.max_steps=1"], 0),
    "pride online examples/configs/online-grpo.yaml": (None, [
        "online.judge.function=tests.test_readme_commands:distinct_characters", "data.max_rows=4",
        "online.iterations=1", "online.samples_per_prompt=3", "online.max_new_tokens=8",
        "online.grpo.drop_flat_groups=false", "train.max_steps=1"], 0),
    "pride serve runs/example-sft/model --port 8000": (None, [], 0),
    "pride rm examples/configs/rm.yaml": (None, [], 0),
    "pride chat runs/demo/dpo/model": (None, ["--max-new-tokens", "8"], 0),  # one line typed (below)
    "pride plot runs/example-sft runs/example-dpo -o curves.png": (None, [], 0),
    "pride run examples/configs/sft-rm-online.yaml": (None, ["online_rm.online.iterations=1",
                                                              "online_rm.online.samples_per_prompt=2",
                                                              "online_rm.online.max_new_tokens=8"], 0),
    "pride eval examples/configs/eval.yaml model.path=runs/demo/dpo/model --num-runs 3": (
        None, ["eval.max_questions=2", "eval.generation.task_metrics.max_new_tokens=8"], 0),
    "pride eval score alpaca-eval annotations.json [--gamed df_gamed.csv] [--difficulty instruction_difficulty.csv]": (
        None, [], 0),
    "pride eval score mt-bench model_judgment/gpt-4_single.jsonl [--mode single|pairwise-baseline|pairwise-all]": (
        None, ["--mode", "single"], 0),
    "pride eval score arena-hard model_judgment/gpt-4-1106-preview/*.jsonl [--version v2|v0.1] [--baseline gpt-4-0314] "
    "[--answers model_answer/*.jsonl]": (None, ["--version", "v0.1", "--rounds", "10"], 0),
    "pride serve runs/demo/sft/model --port 8000 [--api-key-env MY_KEY] [--max-batch-size 64] [--max-model-len N] "
    "[--max-tokens 4096]": (None, ["--api-key-env", "MY_KEY", "--max-batch-size", "64", "--max-tokens", "64"], 0),
    "pride data inspect examples/configs/inspect.yaml -n 3": (None, [], 0),
    "pride data inspect my.yaml --export rows.jsonl": (SFT_YAML, [], 0),
}


def distinct_characters(prompt: str, response: str) -> float:
    return float(len(set(response)))


def readme_commands() -> list[str]:
    """The commands of the README's ```bash blocks: continuation lines joined, comments dropped."""
    out, block, pending = [], False, ""
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            block = line.strip() == "```bash" if not block else False
            continue
        if not block:
            continue
        text = pending + line.split(" #")[0].strip()
        if text.endswith("\\"):
            pending = text[:-1].rstrip() + " "
            continue
        pending = ""
        if text:
            out.append(text)
    return out


def test_every_readme_command_has_a_tiny_form():
    shown = readme_commands()
    assert sorted(set(shown) - set(TINY)) == [], "a README command the test does not run: add it to TINY"
    assert sorted(set(TINY) - set(shown)) == [], "TINY lists a command the README no longer shows"


def argv_of(command: str, models: dict[str, str], extra: list[str]) -> list[str]:
    """The README command as this test runs it: optional [...] parts dropped, /models/... filled in,
    globs expanded, the size overrides appended."""
    text = re.sub(r"\s*\[[^\]]*\]", "", command)
    for placeholder, path in models.items():
        text = text.replace(placeholder, path)
    args = []
    for word in shlex.split(text):
        args += sorted(str(p) for p in Path().glob(word)) if "*" in word else [word]
    return args + extra


def tiny_inputs(tmp: Path) -> dict[str, str]:
    """What a user has beside the checkout: models at /models/..., benchmark files, the demo's outputs."""
    from pride.config import ModelSettings
    from pride.demo.task import prompt_rows
    from pride.models import load_model_and_tokenizer
    from tests.test_online import tiny_pairrm

    model, tok, _ = load_model_and_tokenizer(ModelSettings(path="tiny:gemma"))
    model.save_pretrained(tmp / "models" / "gemma-2b")
    tok.save_pretrained(tmp / "models" / "gemma-2b")
    tiny_pairrm(tmp / "models" / "PairRM-hf")
    (tmp / "annotations.json").write_text(json.dumps([
        {"instruction": f"q{i}", "output_1": "a" * (i + 1), "output_2": "b" * (2 * i + 1), "generator_1": "base",
         "generator_2": "mine", "preference": p} for i, p in enumerate([2, 1, 2, 1.5, 2])]))
    (tmp / "model_judgment").mkdir()
    (tmp / "model_judgment" / "gpt-4_single.jsonl").write_text("".join(
        json.dumps({"question_id": q, "model": "mine", "judge": ["gpt-4", "single-v1"], "turn": t, "score": s}) + "\n"
        for q, t, s in [(81, 1, 8), (81, 2, 6), (82, 1, 7), (82, 2, 9)]))
    arena = tmp / "model_judgment" / "gpt-4-1106-preview"
    arena.mkdir()
    (arena / "mine.jsonl").write_text("".join(
        json.dumps({"question_id": f"q{i}", "model": "mine", "judge": "gpt-4-1106-preview",
                    "games": [{"score": a}, {"score": b}]}) + "\n"
        for i, (a, b) in enumerate([("A>B", "B>A"), ("B>>A", "A<<B"), ("A=B", "A=B"), ("B>A", "A>B")])))
    data = tmp / "runs" / "demo" / "data"
    data.mkdir(parents=True)
    (data / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prompt_rows(8, seed=0)))
    return {"/models/gemma-2b": str(tmp / "models" / "gemma-2b"), "/models/PairRM-hf": str(tmp / "models" / "PairRM-hf")}


def serve_once(args: list[str], tmp: Path) -> int:
    """`pride serve ...` on a free port: up, one chat completion with the model's directory name, SIGTERM."""
    import openai

    from pride.eval.hosting import free_port

    port = str(free_port())
    args = [a if a != "8000" else port for a in args]
    env = {**os.environ, "MY_KEY": "secret"}
    proc = subprocess.Popen([sys.executable, "-m", "pride", *args], cwd=tmp, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.1)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="secret" if "MY_KEY" in args else "x",
                               max_retries=0, timeout=60)
        reply = client.chat.completions.create(model="model", max_tokens=4,
                                               messages=[{"role": "user", "content": "Write the word abc 2 times."}])
        assert reply.choices[0].message.content is not None
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    return proc.returncode


@pytest.mark.slow
def test_readme_commands_run_in_tiny_form(tmp_path, monkeypatch, capsys):
    for folder in ("examples", "configs"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    monkeypatch.chdir(tmp_path)
    models = tiny_inputs(tmp_path)
    for command in readme_commands():
        how = TINY[command]
        if how is None:
            continue
        my_yaml, extra, expected = how
        if my_yaml is not None:
            (tmp_path / "my.yaml").write_text(my_yaml)
        args = argv_of(command, models, extra)
        if args[0] == "accelerate":
            done = subprocess.run([sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", *args[2:4],
                                   "--num_processes", "2", *args[4:]], cwd=tmp_path, capture_output=True, text=True,
                                  env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
            rc, said = done.returncode, done.stdout + done.stderr
            if rc == 0:
                assert json.loads((tmp_path / "runs" / "my-sft" / "summary.json").read_text())["distributed"]["type"] == "FSDP"
        elif args[:2] == ["pride", "serve"]:
            rc, said = serve_once(args[1:], tmp_path), ""
        elif args[:2] == ["pride", "chat"]:  # one line typed, then end of input
            import io

            monkeypatch.setattr("sys.stdin", io.StringIO("Hi\n"))
            rc = main(args[1:])
            said = capsys.readouterr().err
        else:
            rc = main(args[1:])
            said = capsys.readouterr().err
        assert rc == expected, f"{command}\n{said[-3000:] if rc else ''}"
        if command == "pride sft examples/configs/sft.yaml":  # the demo's outputs, for the online and serve examples
            shutil.copytree(tmp_path / "runs" / "example-sft" / "model", tmp_path / "runs" / "demo" / "sft" / "model")
        if command == "pride dpo examples/configs/dpo.yaml":  # and for the eval example
            shutil.copytree(tmp_path / "runs" / "example-dpo" / "model", tmp_path / "runs" / "demo" / "dpo" / "model")
    assert (tmp_path / "rows.jsonl").is_file() and (tmp_path / "runs" / "example-eval" / "scores.json").is_file()
    assert (tmp_path / "runs" / "example-online" / "iteration-1" / "model" / "config.json").is_file()
    assert (tmp_path / "runs" / "my-sppo" / "iteration-3" / "model" / "config.json").is_file()
