"""Run directories that cannot lie (issue 13): resume checks, one process per directory,
recipe stages chained to their inputs, corrupt checkpoints, torn files, a full disk."""

import errno
import json
import subprocess
import sys
import time

import pytest
import torch

import pride.train.loop as training_loop
from pride.config import load_config
from pride.errors import PrideError
from pride.recipe import run_recipe
from pride.train.sft import run_sft
from tests.conftest import write_jsonl
from tests.test_sft import config, mixed_conversations


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "chat.jsonl", mixed_conversations(48))


def killed_at(monkeypatch, step):
    """The next run_sft stops after `step` as a kill would (checkpoints as written so far)."""
    real = training_loop.train

    def train(*args, **kwargs):
        def hook(done):
            if done == step:
                raise Killed
        return real(*args, **{**kwargs, "on_step_end": hook})

    monkeypatch.setattr(training_loop, "train", train)


def run_killed(monkeypatch, cfg, step):
    killed_at(monkeypatch, step)
    with pytest.raises(Killed):
        run_sft(cfg)
    monkeypatch.undo()


def base(tmp_path, data, *extra):
    return config(tmp_path, data, tmp_path / "run", "train.micro_batch_size=4", "train.max_steps=8",
                  "train.save_steps=2", "train.save_total_limit=3", *extra)


def test_resume_with_other_settings_is_refused_naming_them(tmp_path, data, monkeypatch):
    run_killed(monkeypatch, base(tmp_path, data), 5)
    config_before = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(PrideError, match=r"train\.learning_rate: 0\.001 -> 0\.002.*train\.resume=force"):
        run_sft(base(tmp_path, data, "train.learning_rate=2e-3"))
    assert (tmp_path / "run" / "config.yaml").read_text() == config_before  # the record still tells the truth
    assert not (tmp_path / "run" / "model").exists()
    other = write_jsonl(tmp_path / "other.jsonl", mixed_conversations(48, seed=9))
    with pytest.raises(PrideError, match="the training data"):
        run_sft(config(tmp_path, other, tmp_path / "run", "train.micro_batch_size=4", "train.max_steps=8",
                       "train.save_steps=2", "train.save_total_limit=3"))
    summary = run_sft(base(tmp_path, data, "train.learning_rate=2e-3", "train.resume=force"))
    assert summary["steps"] == 8
    # the forced run's checkpoints record its settings; logging is not among what must match
    assert run_sft(base(tmp_path, data, "train.learning_rate=2e-3", "train.logging_steps=4"))["steps"] == 8


def test_a_second_process_on_the_same_run_dir_stops_clearly(tmp_path, data):
    (tmp_path / "run").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pride.rundir import exclusive; from pathlib import Path\n"
        f"with exclusive(Path({str(tmp_path / 'run')!r})):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(PrideError, match="is in use by another pride process"):
            run_sft(base(tmp_path, data))
        assert not (tmp_path / "run" / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    assert run_sft(base(tmp_path, data, "train.max_steps=2"))["steps"] == 2  # free again


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, data, monkeypatch, capsys):
    run_killed(monkeypatch, base(tmp_path, data), 7)
    ckpts = tmp_path / "run" / "checkpoints"
    weights = next((ckpts / "checkpoint-6").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    summary = run_sft(base(tmp_path, data))
    assert summary["steps"] == 8
    err = capsys.readouterr().err
    assert "skipping" in err and "checkpoint-6" in err and "resumed from" in err and "checkpoint-4" in err
    run_killed(monkeypatch, base(tmp_path, data, "train.resume=never"), 3)
    (ckpts / "checkpoint-2" / "trainer_state.json").write_text("")  # empty
    assert run_sft(base(tmp_path, data))["steps"] == 8  # no usable checkpoint: starts over, no traceback


def steps_logged(run):
    return [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_run_that_starts_over_keeps_nothing_of_the_earlier_one(tmp_path, data, monkeypatch, capsys):
    """resume=never after a longer run, and a run whose checkpoints are all corrupt, start from step
    0: the earlier run's newer checkpoints, metrics, model and summary do not stay beside the new run."""
    run = tmp_path / "run"
    run_sft(base(tmp_path, data))  # finished: checkpoints 2, 4, 6 (last 3), model, summary
    assert [p.name for p in (run / "checkpoints").iterdir()] and (run / "summary.json").exists()
    run_killed(monkeypatch, base(tmp_path, data, "train.resume=never"), 3)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-2"]  # not 4 and 6 of the old run
    assert steps_logged(run) == [1, 2, 3]
    assert not (run / "model").exists() and not (run / "summary.json").exists()  # nothing claims a finished run
    assert "removed the earlier run's checkpoints, metrics.jsonl, model, summary.json" in capsys.readouterr().err
    (run / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("")  # the only checkpoint: corrupt
    assert run_sft(base(tmp_path, data))["steps"] == 8
    assert steps_logged(run) == list(range(1, 9))  # not 1, 2, 3, 1, 2, ... (the dead run's metrics)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]


def test_torn_metrics_line_does_not_block_resume(tmp_path, data, monkeypatch):
    run_killed(monkeypatch, base(tmp_path, data), 5)
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "loss": 1.2')  # a kill mid-write
    assert run_sft(base(tmp_path, data))["steps"] == 8
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_full_disk_gives_one_line_and_leaves_nothing_half_written(tmp_path, data, monkeypatch):
    from accelerate import Accelerator

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(Accelerator, "save_state", no_space)
        with pytest.raises(PrideError, match=r"checkpoints: no space left on the device"):
            run_sft(base(tmp_path, data))
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp"))
    from safetensors import SafetensorError

    def safetensors_full(*args, **kwargs):  # what safetensors raised on a full tmpfs here (not an OSError)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    with monkeypatch.context() as m:
        m.setattr(Accelerator, "save_state", safetensors_full)
        with pytest.raises(PrideError, match=r"checkpoints: no space left on the device"):
            run_sft(base(tmp_path, data))
    from transformers import PreTrainedModel

    with monkeypatch.context() as m:
        m.setattr(PreTrainedModel, "save_pretrained", no_space)
        with pytest.raises(PrideError, match=r"no space left on the device; about \d+ MiB needed"):
            run_sft(base(tmp_path, data, "train.save_steps=null", "train.resume=never"))
    assert not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / "model.tmp").exists()
    assert not (tmp_path / "run" / "summary.json").exists()


def recipe(tmp_path, data, lr):
    prefs = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": f"Say {w}", "chosen": w, "rejected": w[::-1] + "?"} for w in ("alpha", "beta", "gamma", "delta")])
    path = tmp_path / "recipe.yaml"
    path.write_text(f"output_dir: {tmp_path / 'r'}\nmodel: {{path: 'tiny:llama'}}\nseed: 0\n"
                    "train: {max_steps: 1, micro_batch_size: 4, max_length: 256}\nstages:\n"
                    f"  - {{name: sft, type: sft, data: {{sources: [{{path: {data}}}]}}, train: {{learning_rate: {lr}}}}}\n"
                    f"  - {{name: dpo, type: dpo, data: {{sources: [{{path: {prefs}}}]}}}}\n")
    return path


def test_a_changed_upstream_stage_reruns_everything_downstream(tmp_path, data):
    run_recipe(recipe(tmp_path, data, 1e-3))
    dpo_model = tmp_path / "r" / "dpo" / "model" / "model.safetensors"
    first = dpo_model.stat().st_mtime_ns
    run_recipe(recipe(tmp_path, data, 1e-3))
    assert dpo_model.stat().st_mtime_ns == first  # same inputs: skipped
    time.sleep(0.01)
    run_recipe(recipe(tmp_path, data, 2e-3))  # only sft's learning rate changed
    assert dpo_model.stat().st_mtime_ns != first  # main: dpo skipped as "finished with the same inputs"
    (tmp_path / "r" / "dpo" / "stage.json").write_text('{"stage": "dpo", "config_ha')  # half-written
    run_recipe(recipe(tmp_path, data, 2e-3))  # re-runs dpo instead of a JSONDecodeError
    assert json.loads((tmp_path / "r" / "dpo" / "stage.json").read_text())["stage"] == "dpo"


def test_half_written_iteration_summary_is_not_a_finished_iteration(tmp_path):
    from pride.rundir import read_iteration as _finished

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "iteration.json").write_text('{"iteration": 1, "pro')
    assert _finished(tmp_path) is None
    (tmp_path / "iteration.json").write_text('{"iteration": 1}')
    assert _finished(tmp_path) == {"iteration": 1}


def test_config_is_written_only_when_training_starts(tmp_path, data):
    cfg = load_config(None, ["model.path=tiny:llama", f"data.sources.0.path={tmp_path / 'missing.jsonl'}",
                             f"output_dir={tmp_path / 'never'}"])
    with pytest.raises(PrideError, match="data file not found"):
        run_sft(cfg)
    assert not (tmp_path / "never" / "config.yaml").exists()


def test_eval_checkpoints_exports_each_checkpoint_then_removes_it(tmp_path, data):
    """eval.checkpoints evaluates checkpoint-N as it says (LIONs' find_checkpoint_paths): the checkpoint's
    weights as an HF directory, gone once evaluated."""
    from safetensors.torch import load_file

    from pride.eval.run import models_to_evaluate
    from pride.export import exported
    from pride.rundir import is_checkpoint

    run = tmp_path / "run"
    run_sft(config(tmp_path, data, run, "train.max_steps=3", "train.save_steps=1", "train.save_total_limit=5"))
    cfg = load_config(None, [f"model.path={run}", "eval.checkpoints=true"])
    found = models_to_evaluate(cfg)
    assert [n for n, _ in found] == ["run", "run-checkpoint-1", "run-checkpoint-2"]
    assert is_checkpoint(found[2][1]) and not is_checkpoint(found[0][1])
    final = load_file(run / "model" / "model.safetensors")
    for _, ckpt in found[1:]:
        stored = load_file(f"{ckpt}/model.safetensors")
        with exported(ckpt) as out:
            ours = load_file(out / "model.safetensors")
            assert ours.keys() == final.keys() and (out / "tokenizer_config.json").exists()
            assert all(torch.equal(ours[k], stored[f"model.{k}"].to(ours[k].dtype)) for k in ours)
            assert any(not torch.equal(ours[k], final[k]) for k in ours)  # not the final model
        assert not out.exists()


@pytest.mark.parametrize("how", ["vanished", "read-only metrics", "read-only checkpoint"])
def test_a_run_directory_lost_mid_run_is_one_line_naming_it(tmp_path, data, monkeypatch, capsys, how):
    """The run directory removed, or turned read-only (simulated: the tests run as root, whom
    chmod does not stop), after step 3 of 8: one line naming the path, exit 2, no traceback."""
    import builtins
    import shutil

    from accelerate import Accelerator
    from safetensors import SafetensorError

    from pride.cli import main
    from tests.test_sft import empty_config

    run = tmp_path / "run"
    real_train, real_open = training_loop.train, builtins.open

    def read_only_open(file, mode="r", *args, **kwargs):
        if str(file).startswith(str(run)) and any(c in mode for c in "wax"):
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, mode, *args, **kwargs)

    def read_only_checkpoint(*args, **kwargs):  # what safetensors raises there (not an OSError)
        raise SafetensorError("Error while serializing: I/O error: Read-only file system (os error 30)")

    def train(*args, **kwargs):
        def hook(done):
            if done == 3 and how == "vanished":
                shutil.rmtree(run)
            elif done == 3 and how == "read-only metrics":
                monkeypatch.setattr(builtins, "open", read_only_open)
            elif done == 3:
                monkeypatch.setattr(Accelerator, "save_state", read_only_checkpoint)
        return real_train(*args, **{**kwargs, "on_step_end": hook})

    monkeypatch.setattr(training_loop, "train", train)
    rc = main(["sft", str(empty_config(tmp_path)), "model.path=tiny:llama", f"data.sources.0.path={data}",
               f"output_dir={run}", "train.max_length=256", "train.micro_batch_size=4", "train.max_steps=8",
               "train.save_steps=2"])
    monkeypatch.undo()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert rc == 2 and "Traceback" not in err and len(lines) == 1, err[-2000:]
    expected = {"vanished": "the directory went away|No such file or directory",
                "read-only metrics": "metrics.jsonl: the filesystem became read-only",
                "read-only checkpoint": "checkpoints: the filesystem became read-only"}[how]
    assert str(run) in lines[0] and __import__("re").search(expected, lines[0]), lines[0]


def test_eval_checkpoints_of_a_reward_model_run_export_reward_models(tmp_path):
    """A reward model's checkpoint is exported as what it is: a sequence-classification model whose
    scores equal the checkpoint's weights (not a causal LM with its score head dropped)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from pride.cli import main
    from pride.export import exported
    from tests.test_reward_model import preference_file

    data = preference_file(tmp_path)
    run = tmp_path / "rm"
    assert main(["rm", "examples/configs/rm.yaml", "model.path=tiny:llama", f"data.sources.0.path={data}",
                 "data.sources.0.columns={}", "train.max_steps=2", "train.save_steps=1", f"output_dir={run}"]) == 0
    ckpt = run / "checkpoints" / "checkpoint-1"
    stored = load_file(ckpt / "model.safetensors")
    with exported(ckpt) as out:
        model = AutoModelForSequenceClassification.from_pretrained(out)
        assert torch.equal(model.score.weight, stored["model.score.weight"].to(model.score.weight.dtype))
        assert json.loads((out / "config.json").read_text())["architectures"][0].endswith("ForSequenceClassification")


def test_a_stage_whose_model_was_deleted_is_not_finished(tmp_path):
    """--dry-run and the run itself: a stage without its outputs runs again (it was 'skip: finished
    earlier', and the next stage then stopped on the missing directory)."""
    import shutil

    from pride.recipe import dry_run, run_recipe

    data = tmp_path / "chat.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n')
    path = recipe(tmp_path, data, 1e-3)
    run_recipe(path)
    assert dry_run(path).count("skip: finished earlier") == 2
    shutil.rmtree(tmp_path / "r" / "sft" / "model")
    text = dry_run(path)
    sft, dpo = text.split("== dpo (dpo)")
    assert "skip" not in sft and "run (not finished yet)" in sft and "runs first" in dpo
    run_recipe(path)
    assert (tmp_path / "r" / "sft" / "model" / "config.json").exists()
