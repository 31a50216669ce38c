"""See what happened (issue 37): trackers run for real, `pride plot` draws what metrics.jsonl holds, and
long phases report progress when output is not a terminal."""

import json
from pathlib import Path

import pytest

from pride.cli import main
from pride.trackers import flat_hparams
from tests.conftest import write_jsonl

CHATS = [{"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": w}]}
         for w in ("alpha", "beta", "gamma", "delta", "epsilon", "zeta")]


def test_hyperparameters_are_flat_scalars():
    flat = flat_hparams({"train": {"learning_rate": 1e-5, "report_to": ["wandb"], "max_steps": None,
                                   "lora": {"r": 8}, "bf16": True}})
    assert flat == {"train.learning_rate": 1e-5, "train.report_to": '["wandb"]', "train.max_steps": "null",
                    "train.lora.r": 8, "train.bf16": True}


def wandb_history(path: Path) -> list[dict]:
    """The history rows (what run.log wrote) of an offline run's .wandb file: a 7-byte header, then
    LevelDB log records (32 KiB blocks, each record: crc32, little-endian length, type) holding
    wandb's protobuf `Record`s."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, records, parts = 7, [], b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            records.append(parts)
    rows = []
    for raw in records:
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def test_tensorboard_and_wandb_offline_runs_finish_and_hold_the_scalars(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    data = write_jsonl(tmp_path / "chat.jsonl", CHATS)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{path: 'tiny:llama'}}\ndata: {{sources: [{{path: {data}}}]}}\n"
                   f"train: {{max_steps: 3, micro_batch_size: 2, report_to: [tensorboard, wandb]}}\n"
                   f"output_dir: {tmp_path / 'run'}\n")
    assert main(["sft", str(cfg)]) == 0
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    (events,) = {p.parent for p in (tmp_path / "run").rglob("events.out.tfevents.*") if "loss" in
                 EventAccumulator(str(p)).Reload().Tags()["scalars"]}
    board = EventAccumulator(str(events)).Reload()
    assert [e.step for e in board.Scalars("loss")] == [1, 2, 3]
    # TensorBoard keeps float32: the logged losses to float32 precision
    assert [e.value for e in board.Scalars("loss")] == pytest.approx([m["loss"] for m in metrics], rel=1e-6)
    (log,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    history = wandb_history(log)
    assert [(h["step"], h["loss"], h["lr"]) for h in history] == [(m["step"], m["loss"], m["lr"]) for m in metrics]


def test_pride_plot_overlays_two_runs_and_draws_what_metrics_jsonl_holds(tmp_path, capsys):
    from pride.plot import plot_runs

    data = write_jsonl(tmp_path / "chat.jsonl", CHATS)
    runs = []
    for lr in ("1e-3", "3e-3"):
        run = tmp_path / f"lr-{lr}"
        assert main(["sft", "examples/configs/sft.yaml", f"data.sources.0.path={data}", "train.max_steps=4",
                     f"train.learning_rate={lr}", f"output_dir={run}"]) == 0
        assert (run / "curves.png").stat().st_size > 5000  # every stage draws its own at its end
        runs.append(run)
    assert main(["plot", *map(str, runs), "-o", str(tmp_path / "both.png")]) == 0
    png = (tmp_path / "both.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10000
    drawn = plot_runs([str(r) for r in runs], tmp_path / "again.png")
    for run in runs:
        logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        label = f"{tmp_path.name}/{run.name}"
        for key in ("loss", "lr", "grad_norm"):
            assert drawn[key][label] == ([m["step"] for m in logged], [m[key] for m in logged])
    assert set(drawn["loss"]) == {f"{tmp_path.name}/{r.name}" for r in runs}


def test_an_online_run_writing_to_a_log_prints_progress_lines_while_sampling(tmp_path):
    """Output to a file (nohup, CI, tee): plain lines while the phases run (here one per step, as
    PRIDE_PROGRESS_SECONDS=0 asks; by default at most one every 30 s), not one bar at the end."""
    import os
    import subprocess
    import sys

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say w{i}."} for i in range(6)])
    run = subprocess.run([sys.executable, "-m", "pride", "online", "examples/configs/online.yaml",
                          "model.path=tiny:llama", f"data.sources.0.path={prompts}", "online.iterations=1",
                          "online.samples_per_prompt=2", "online.max_new_tokens=4", "online.generation_batch_size=2",
                          "online.judge.function=tests.test_readme_commands:distinct_characters",
                          f"output_dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PRIDE_PROGRESS_SECONDS": "0"})
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stderr.splitlines()
    sampling = [x for x in lines if x.startswith("sampling: ")]
    assert [x.split(",")[0] for x in sampling] == [f"sampling: {n}/6 prompts" for n in range(1, 7)] + \
        ["sampling: 6/6 prompts"]  # each prompt as it is done, then the summary line
    assert all(x.split(", ")[-1].endswith(" tok/s") for x in sampling)  # prompts and tokens per second
    assert any(x.startswith("judging: 6/6 prompts") for x in lines)
    assert any(x.startswith("train: ") and "tok/s" in x for x in lines)
    assert not [x for x in lines if x.startswith(("train ━", "sampling ━", "judging ━"))]  # no bar drawn into a file


def test_a_finished_stage_run_again_is_a_no_op_that_says_so(tmp_path, capsys):
    data = write_jsonl(tmp_path / "chat.jsonl", CHATS)
    args = ["sft", "examples/configs/sft.yaml", f"data.sources.0.path={data}", "train.max_steps=2",
            f"output_dir={tmp_path / 'run'}"]
    assert main(args) == 0
    weights = tmp_path / "run" / "model" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    assert "finished earlier with the same settings and inputs; nothing to do" in capsys.readouterr().err
    assert weights.stat().st_mtime_ns == stamp  # not retrained, not rewritten
    (tmp_path / "chat.jsonl").write_text((tmp_path / "chat.jsonl").read_text() + json.dumps(CHATS[0]) + "\n")
    assert main(args) == 0  # an input changed: it trains again
    assert weights.stat().st_mtime_ns != stamp


def test_data_inspect_piped_keeps_lines_and_marks_trained_tokens(tmp_path):
    """Piped: no wrapping at any width, the text's own newlines kept and shown (⏎), trained spans
    between ⟦ ⟧; --color always keeps the colours in a pipe."""
    import subprocess
    import sys

    long_answer = "word " * 60 + "end"
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [
        {"role": "user", "content": "Line one\nline two"}, {"role": "assistant", "content": long_answer}]}])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{path: 'tiny:llama'}}\ndata: {{sources: [{{path: {data}}}]}}\n")
    out = subprocess.run([sys.executable, "-m", "pride", "data", "inspect", str(cfg), "-n", "1"], capture_output=True,
                         text=True, timeout=300, env={**__import__("os").environ, "COLUMNS": "40"}).stdout
    assert "Line one⏎\nline two" in out
    assert f"⟦{long_answer}<|eot_id|>⟧" in out  # one line, far wider than 40 columns, never wrapped
    colored = subprocess.run([sys.executable, "-m", "pride", "data", "inspect", str(cfg), "-n", "1", "--color",
                              "always"], capture_output=True, text=True, timeout=300).stdout
    assert "\x1b[" in colored and "⟦" not in colored


def test_every_saved_model_has_a_model_card_and_pride_chat_talks_to_it(tmp_path, monkeypatch, capsys):
    import io

    from huggingface_hub import ModelCard

    data = write_jsonl(tmp_path / "chat.jsonl", CHATS)
    assert main(["sft", "examples/configs/sft.yaml", f"data.sources.0.path={data}", "train.max_steps=2",
                 f"output_dir={tmp_path / 'run'}"]) == 0
    card = ModelCard.load(tmp_path / "run" / "model" / "README.md")  # the Hub's own parser
    assert card.data.library_name == "transformers" and card.data.tags == ["pride", "sft"]
    assert f"`{data}`" in card.text and '"train.learning_rate": 0.001' in card.text and "for 2 steps" in card.text
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("Say alpha.\n/reset\nSay beta.\n/exit\nnever read\n"))
    assert main(["chat", str(tmp_path / "run" / "model"), "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("pride chat: ") and [x[:7] for x in out[1:]] == ["model> ", "(new co", "model> "]
    # the card names a local base in its text only: the Hub's metadata takes Hub ids
    from pride.config import load_config
    from pride.model_card import model_card

    local = load_config(None, [f"model.path={tmp_path / 'run' / 'model'}", f"data.sources.0.path={data}"])
    text = model_card(local, "sft", {"steps": 1})
    assert "base_model" not in text.split("---")[1] and f"from `{tmp_path / 'run' / 'model'}`" in text
    hub = load_config(None, ["model.path=Qwen/Qwen2.5-0.5B", "data.sources.0.path=org/data"])
    meta = __import__("yaml").safe_load(model_card(hub, "sft", {"steps": 1}).split("---")[1])
    assert meta["base_model"] == "Qwen/Qwen2.5-0.5B" and meta["datasets"] == ["org/data"]
    # a line that is not UTF-8, and one longer than the model's positions: each refused, and the chat goes on
    from transformers import AutoConfig

    positions = AutoConfig.from_pretrained(tmp_path / "run" / "model").max_position_embeddings
    typed = b"caf\xe9\n" + b"x" * (positions + 10) + b"\nSay alpha.\n/exit\n"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(typed), encoding="utf-8"))
    assert main(["chat", str(tmp_path / "run" / "model"), "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "pride chat: that line is not UTF-8 text (byte 3); type it again", out
    assert out[2].startswith("pride chat: the conversation would be ") and f"context is {positions} tokens" in out[2]
    assert out[3].startswith("model> ") and len(out) == 4


def test_pride_plot_draws_runs_that_share_a_label_and_never_writes_over_what_it_reads(tmp_path):
    """a/x and b/x are both labelled x's parent/x: each is drawn (the second under its path); the
    output may not be a file the plot reads (the run's metrics stay as they were)."""
    from pride.io import clear_inputs
    from pride.plot import plot_runs

    runs = []
    for parent, loss in (("one", 0.5), ("two", 0.9)):
        run = tmp_path / parent / "r" / "x"
        run.mkdir(parents=True)
        write_jsonl(run / "metrics.jsonl", [{"step": 1, "loss": loss}, {"step": 2, "loss": loss / 2}])
        runs.append(run)
    drawn = plot_runs([str(r) for r in runs], tmp_path / "both.png", command=True)
    assert sorted(drawn["loss"].values()) == [([1, 2], [0.5, 0.25]), ([1, 2], [0.9, 0.45])]
    before = (runs[0] / "metrics.jsonl").read_bytes()
    clear_inputs()
    for target in (runs[0] / "metrics.jsonl", runs[1] / "metrics.jsonl"):
        assert main(["plot", *map(str, runs), "-o", str(target)]) == 2
    assert (runs[0] / "metrics.jsonl").read_bytes() == before


READ_TRACKERS = """
import json, sys
from mlflow.tracking import MlflowClient
client = MlflowClient(tracking_uri=sys.argv[1])
(run,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
mlflow = [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)]
from trackio.sqlite_storage import SQLiteStorage
(name,) = SQLiteStorage.get_runs("pride")
logs = SQLiteStorage.get_logs(project="pride", run=name)
print(json.dumps({"mlflow": mlflow, "trackio": [(r["step"], r["loss"]) for r in logs if "loss" in r]}))
"""


@pytest.mark.slow  # two subprocesses importing both trackers: 11 s
def test_mlflow_and_trackio_runs_finish_and_hold_the_losses(tmp_path):
    """report_to: [mlflow, trackio], run for real (mlflow's local file store, trackio's local database):
    each holds every step's loss as metrics.jsonl has it."""
    import os
    import subprocess
    import sys

    pytest.importorskip("mlflow")
    pytest.importorskip("trackio")
    data = write_jsonl(tmp_path / "chat.jsonl", CHATS)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{path: 'tiny:llama'}}\ndata: {{sources: [{{path: {data}}}]}}\n"
                   f"train: {{max_steps: 3, micro_batch_size: 2, report_to: [mlflow, trackio]}}\n"
                   f"output_dir: {tmp_path / 'run'}\n")
    uri = (tmp_path / "mlruns").as_uri()
    # mlflow-skinny (the test extra) has no database store; its file store needs the opt-in of mlflow 3
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_ALLOW_FILE_STORE": "true", "TRACKIO_DIR": str(tmp_path / "trackio"),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "pride", "sft", str(cfg)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    read = subprocess.run([sys.executable, "-c", READ_TRACKERS, uri], capture_output=True, text=True, env=env,
                          timeout=300)
    assert read.returncode == 0, read.stderr[-3000:]
    stored = json.loads(read.stdout.strip().splitlines()[-1])
    logged = [(m["step"], m["loss"]) for m in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())]
    # both trackers store the Python float as logged (mlflow's file store as text, trackio as JSON): exact
    assert [tuple(x) for x in stored["mlflow"]] == logged
    assert [tuple(x) for x in stored["trackio"]] == logged
