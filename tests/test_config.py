import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pride.cli import main
from pride.config import load_config, write_resolved
from pride.errors import PrideError


def write(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


BASE = "model:\n  path: tiny:llama\ndata:\n  sources:\n    - path: d.jsonl\n"


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["train.learning_rate=1e-5", "train.packing=false",
                                              "data.sources.0.fraction=0.5", "data.sources.1.path=e.jsonl",
                                              "model.tiny.hidden_size=32", "seed=7"])
    assert cfg.train.learning_rate == 1e-5 and isinstance(cfg.train.learning_rate, float)
    assert cfg.train.packing is False
    assert cfg.data.sources[0].fraction == 0.5 and cfg.data.sources[1].path == "e.jsonl"
    assert cfg.model.tiny == {"hidden_size": 32} and cfg.seed == 7


@pytest.mark.parametrize("text,override,expected", [
    (BASE + "train:\n  lerning_rate: 1e-5\n", [], "unknown key 'train.lerning_rate'; did you mean "
                                                    "'train.learning_rate'? (allowed: "),
    (BASE, ["train.micro_batch_size=abc"], "key 'train.micro_batch_size'"),
    (BASE, ["train.lr_scheduler=exponential"], "'cosine', 'linear' or 'constant'"),
    ("data:\n  sources:\n    - path: d.jsonl\n", [], "missing required key 'model'"),
    ("model: {path: x}\ndata: {}\n", [], "missing required key 'data.sources'"),
    ("model: {}\n" + BASE.split("\n", 2)[2], [], "missing required key 'model.path'"),
    (BASE + "bogus: 1\n", [], "unknown key 'bogus'"),
    (BASE, ["data.sources.0.fraction=2"], "key 'data.sources.0.fraction'"),
])
def test_errors_name_key_and_file(tmp_path, text, override, expected):
    path = write(tmp_path, text)
    with pytest.raises(PrideError) as e:
        load_config(path, override)
    msg = str(e.value)
    # the file when the file set it; the override when an override did (issue 37)
    assert expected in msg and (f"override {override[0]}:" if override else str(path)) in msg and "\n" not in msg


def test_unknown_key_lists_allowed(tmp_path):
    with pytest.raises(PrideError) as e:
        load_config(write(tmp_path, BASE), ["train.lerning_rate=1"])
    assert "learning_rate" in str(e.value)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(PrideError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [\n"))
    with pytest.raises(PrideError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_resolved_config_written(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["train.epochs=3"])
    out = write_resolved(cfg, tmp_path / "run")
    again = yaml.safe_load(out.read_text())
    assert again["train"]["epochs"] == 3 and again["train"]["warmup_ratio"] == 0.1
    assert load_config(out) == cfg


def test_cli_one_line_error_and_exit_code(tmp_path, capsys):
    path = write(tmp_path, BASE + "train:\n  lerning_rate: 1e-5\n")
    assert main(["data", "inspect", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.lerning_rate" in err and str(path) in err


def test_help_lists_stages():
    out = subprocess.run([sys.executable, "-m", "pride", "--help"], capture_output=True, text=True, check=True).stdout
    for stage in ("sft", "dpo", "online", "eval", "serve", "run", "demo", "data"):
        assert stage in out


def test_nodes_for_sqrt_lr_scaling(monkeypatch):
    """LLM_DPO: lr x sqrt(nodes); nodes = all processes over this machine's (torchrun's LOCAL_WORLD_SIZE)."""
    from types import SimpleNamespace

    from pride.train.loop import num_nodes

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert num_nodes(SimpleNamespace(num_processes=16)) == 2
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert num_nodes(SimpleNamespace(num_processes=4)) == 1


def test_shipped_accelerate_configs_load():
    """Every launch config loads; FSDP's is FSDP2 (the version that runs on CPU too), full state dict."""
    from accelerate.commands.config.config_args import load_config_from_file

    root = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
    kinds = {f.stem: load_config_from_file(str(f)).distributed_type for f in sorted(root.glob("*.yaml"))}
    assert kinds == {"cpu-2proc": "MULTI_GPU", "ddp": "MULTI_GPU", "fsdp": "FSDP"}
    fsdp = load_config_from_file(str(root / "fsdp.yaml")).fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_overriding_one_eval_generation_key_keeps_the_official_length(tmp_path):
    """`eval.generation.task_metrics.temperature=0.7` alone once failed with 'missing max_new_tokens'."""
    (tmp_path / "c.yaml").write_text("model: {path: 'tiny:llama'}\n")
    gen = load_config(tmp_path / "c.yaml", ["eval.generation.task_metrics.temperature=0.7"]).eval.generation
    assert (gen.task_metrics.max_new_tokens, gen.task_metrics.temperature) == (512, 0.7)
    assert (gen.mt_bench.max_new_tokens, gen.alpaca_eval.max_new_tokens, gen.arena_hard.max_new_tokens) == (1024, 4096, 4096)


def test_global_batch_size_derives_the_accumulation_or_refuses(tmp_path):
    from pride.config import with_global_batch

    (tmp_path / "c.yaml").write_text("model: {path: 'tiny:llama'}\ntrain: {micro_batch_size: 4, global_batch_size: 128}\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert [with_global_batch(cfg, n).train.gradient_accumulation_steps for n in (1, 2, 4, 8)] == [32, 16, 8, 4]
    with pytest.raises(PrideError, match=r"global_batch_size=128 is not a multiple of .* \(4\) x processes \(3\) = 12"):
        with_global_batch(cfg, 3)
    with pytest.raises(PrideError, match="gradient_accumulation_steps=3 contradicts"):
        with_global_batch(load_config(tmp_path / "c.yaml", ["train.gradient_accumulation_steps=3"]), 2)
    assert with_global_batch(load_config(tmp_path / "c.yaml", ["train.gradient_accumulation_steps=16"]), 2) \
        .train.gradient_accumulation_steps == 16


# Settings that look like paths but are not inputs a stage reads (or are read through another one).
NOT_INPUTS = {
    ("Config", "model"): "the model section itself",
    ("Config", "output_dir"): "written, not read",
    ("EvalSettings", "output_dir"): "written, not read",
    ("EvalSettings", "model_name"): "a name",
    ("EvalSettings", "reward_sources"): "sources, each path marked (SourceSettings.path)",
    ("TrainSettings", "report_to"): "tracker names",
    ("EvalSettings", "checkpoints"): "a switch; the run directory is model.path",
    ("EvalSettings", "mt_bench_baseline"): "a file inside eval.data_dir, which is hashed",
    ("EvalSettings", "arena_hard_set"): "a folder inside eval.data_dir, which is hashed",
    ("EvalJudgeSettings", "model"): "a model name at an endpoint",
    ("JudgeSettings", "model"): "a model name at an endpoint",
    ("OnlineSettings", "sampler_model"): "a model name at an endpoint",
}


def test_every_setting_that_names_a_file_or_directory_is_an_input_of_the_stage_identity():
    """Issue 35: a stage's identity hashes every file it reads. The inputs are the settings marked
    INPUT (`pride.config.input_paths`); a new setting that looks like a path (by its name or its
    description) fails here until it is marked, or listed above with the reason it is not one."""
    import re
    import typing

    from pydantic import BaseModel

    from pride.config import INPUT, Config

    seen: set = set()

    def sections(model):
        if model not in seen:
            seen.add(model)
            for field in model.model_fields.values():
                args = [field.annotation, *typing.get_args(field.annotation)]
                for t in args + [a for x in args for a in typing.get_args(x)]:
                    if isinstance(t, type) and issubclass(t, BaseModel):
                        sections(t)

    sections(Config)
    looks_like_a_path = re.compile(r"(path|dir|file|references|tokenizer|reference_model|model)$")
    unmarked = [(m.__name__, name) for m in seen for name, f in m.model_fields.items()
                if (looks_like_a_path.search(name) or re.search(r"director|file|folder|jsonl", f.description or "", re.I))
                and f.json_schema_extra != INPUT and (m.__name__, name) not in NOT_INPUTS]
    assert unmarked == []


def test_an_edited_task_reference_file_or_a_replaced_reference_model_changes_the_stage_identity(tmp_path):
    """The two stale stages the issue found: eval skipped after its references file was edited in
    place, dpo skipped with a replaced preference.reference_model directory."""
    from pride.identity import stage_identity

    refs = tmp_path / "refs.jsonl"
    refs.write_text('{"prompt": "a", "reference": "b"}\n')
    ref_model = tmp_path / "ref"
    ref_model.mkdir()
    (ref_model / "config.json").write_text('{"a": 1}')
    cfg = load_config(None, ["model.path=tiny:llama", f"eval.task_metrics.references={refs}",
                             f"preference.reference_model={ref_model}"])
    before = stage_identity(cfg)
    refs.write_text('{"prompt": "a", "reference": "c"}\n')
    edited = stage_identity(cfg)
    (ref_model / "config.json").write_text('{"a": 2}')
    assert len({before, edited, stage_identity(cfg)}) == 3


def test_launch_and_command_line_values_that_would_do_nothing_or_crash_are_one_line(tmp_path, monkeypatch, capsys):
    """Issue 35: WORLD_SIZE=abc and WORLD_SIZE=0 (with a global batch: a division by zero) were
    tracebacks; --num-runs 0 evaluated nothing; --max-model-len past the model's positions was
    advertised to clients."""
    from pride.recipe import dry_run

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "lion-gemma-2b.yaml"
    for value in ("abc", "0"):
        monkeypatch.setenv("WORLD_SIZE", value)
        with pytest.raises(PrideError, match=f"WORLD_SIZE={value}: not a number of processes"):
            dry_run(recipe)
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(SystemExit) as e:
        main(["eval", str(tmp_path / "c.yaml"), "--num-runs", "0"])
    assert e.value.code == 2 and "argument --num-runs: 0 is out of range" in capsys.readouterr().err
    assert main(["serve", "tiny:llama", "--max-model-len", "100000"]) == 2
    assert "--max-model-len 100000 is longer than tiny:llama's positions (4096)" in capsys.readouterr().err


def test_a_closed_stdout_is_a_quiet_end(tmp_path):
    """`pride eval score ... | head -c 100`: the reader has gone when pride prints (here: the pipe's
    read end closed before the command starts); no traceback, exit 0."""
    import json

    rows = [{"instruction": f"q{i}", "output_1": "a", "output_2": "b" * i, "preference": 1 + (i % 2)} for i in range(50)]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    proc = subprocess.Popen([sys.executable, "-m", "pride", "eval", "score", "alpaca-eval", str(tmp_path / "a.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(60) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err
