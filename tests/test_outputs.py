"""Nothing pride writes replaces an input of the same command or a file that is not a regular
file (issue 27): one check in `pride.io.check_output`, used by every `write_*`."""

import os

import pytest

from pride.cli import main
from pride.errors import PrideError
from pride.io import check_output, clear_inputs, mark_inputs, write_json

CHAT = '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n'


@pytest.fixture
def run(tmp_path, monkeypatch):
    (tmp_path / "c.yaml").write_text("model: {path: 'tiny:llama'}\ndata: {sources: [{path: chat.jsonl}]}\n")
    (tmp_path / "chat.jsonl").write_text(CHAT)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("target", ["chat.jsonl", "c.yaml", "./sub/../chat.jsonl", "link-to-data"])
def test_export_never_replaces_the_runs_inputs(run, target):
    os.symlink("chat.jsonl", run / "link-to-data")
    (run / "sub").mkdir()
    before = {p: (run / p).read_bytes() for p in ("chat.jsonl", "c.yaml")}
    assert main(["data", "inspect", "c.yaml", "--export", target]) == 2
    assert {p: (run / p).read_bytes() for p in before} == before
    assert (run / "link-to-data").is_symlink()


def test_a_pipe_or_device_is_never_replaced(run):
    os.mkfifo(run / "fifo")
    assert main(["data", "inspect", "c.yaml", "--export", "fifo"]) == 2
    assert not (run / "fifo").is_file() and (run / "fifo").exists()  # still the pipe
    with pytest.raises(PrideError, match="not a regular file"):
        check_output("/dev/null")


def test_inputs_are_per_command_and_a_regular_file_is_replaced(tmp_path):
    mark_inputs(tmp_path / "data.jsonl", tmp_path / "model")
    with pytest.raises(PrideError, match="input of this run"):
        write_json(tmp_path / "model" / "config.json", {})  # inside an input directory
    clear_inputs()
    (tmp_path / "out.json").write_text("old")
    write_json(tmp_path / "out.json", {"new": 1})
    assert (tmp_path / "out.json").read_text().startswith("{")


def test_yaml_merge_keys_and_a_csv_with_a_bom_are_read(tmp_path, monkeypatch):
    """Valid YAML (`<<: *anchor`) and Excel's UTF-8 CSV (a BOM before the header) are not errors."""
    (tmp_path / "b.csv").write_bytes(b"\xef\xbb\xbfprompt,completion\nhi,hello\n")
    (tmp_path / "c.yaml").write_text("model: &m {path: 'tiny:llama'}\ndata:\n  sources: [{path: b.csv}]\n"
                                     "train:\n  <<: {max_length: 64, epochs: 2}\n  epochs: 1\n")
    monkeypatch.chdir(tmp_path)
    from pride.config import load_config

    cfg = load_config("c.yaml")
    assert cfg.train.max_length == 64 and cfg.train.epochs == 1  # the mapping's own key wins
    assert main(["data", "inspect", "c.yaml", "-n", "0"]) == 0


@pytest.mark.parametrize("args,message", [(["--port", "70000"], "argument --port: 70000 is out of range (0 to 65535)"),
                                          (["--max-batch-size", "-3"], "argument --max-batch-size: -3 is out of range"),
                                          (["--max-tokens", "0"], "argument --max-tokens: 0 is out of range")])
def test_serve_numbers_out_of_range_stop_before_loading(args, message, capsys):
    """`serve --port 70000` was a traceback; `--max-tokens 0` made every request a 500."""
    with pytest.raises(SystemExit) as stop:
        main(["serve", "tiny:llama", *args])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def saved_tiny(path):
    from pride.config import ModelSettings
    from pride.models import load_model_and_tokenizer

    model, tok, _ = load_model_and_tokenizer(ModelSettings(path="tiny:llama"))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("cut", ["header", "tensors"])
def test_corrupt_weights_are_one_line_naming_the_directory(run, cut, capsys):
    weights = saved_tiny(run / "m") / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:3000] if cut == "header" else data[:-5000])  # a copy cut short
    assert main(["sft", "c.yaml", "model.path=m", "output_dir=out"]) == 2
    err = capsys.readouterr().err
    assert "m: its safetensors weights are corrupt or truncated" in err and "Traceback" not in err


def test_a_read_only_output_dir_is_one_line(run, monkeypatch, capsys):
    """A read-only filesystem refuses the run directory or its lock file: one line, exit 2 (the
    OSError is raised by hand: this machine's tests run as root, which no chmod stops)."""
    import errno
    from pathlib import Path

    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.name == "ro":
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert main(["sft", "c.yaml", "output_dir=ro"]) == 2
    assert "ro: cannot create the directory (Read-only file system)" in capsys.readouterr().err


def test_unreachable_hub_names_the_setting_at_once(monkeypatch):
    """Offline, a hub id stops at once (cache only, no minute of retries) naming the key that holds it."""
    import pride.hub
    from pride.config import ModelSettings
    from pride.models import load_tokenizer

    monkeypatch.setattr(pride.hub, "hub_reachable", lambda: False)
    with pytest.raises(PrideError, match=r"^model\.tokenizer=nobody/no-such-tokenizer: not a local directory, not in "
                                         r"the Hugging Face cache.*set model\.tokenizer=DIR$"):
        load_tokenizer(ModelSettings(path="nobody/no-such-model",
                                     tokenizer="nobody/no-such-tokenizer"))


def test_hub_reachable_follows_the_environment(monkeypatch):
    import pride.hub

    pride.hub.hub_reachable.cache_clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert pride.hub.hub_reachable() is False
    pride.hub.hub_reachable.cache_clear()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert pride.hub.hub_reachable() is True  # the proxy decides
    pride.hub.hub_reachable.cache_clear()


@pytest.mark.parametrize("key", ["train.report_to", "eval.report_to"])
def test_a_tracker_that_cannot_log_stops_before_any_work(run, monkeypatch, key, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    args = ["sft", "c.yaml"] if key.startswith("train") else ["eval", "c.yaml", "eval.output_dir=out"]
    assert main([*args, f"{key}=[wandb]", "output_dir=out"]) == 2
    assert f"{key} includes wandb, which is not installed" in capsys.readouterr().err
    assert not (run / "out" / "metrics.jsonl").exists()


def test_wandb_login_is_what_wandb_init_needs(tmp_path):
    from pride.trackers import wandb_logged_in

    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    assert wandb_logged_in({"NETRC": str(netrc)})
    assert wandb_logged_in({"NETRC": str(tmp_path / "none"), "WANDB_MODE": "offline"})
    assert wandb_logged_in({"NETRC": str(tmp_path / "none"), "WANDB_API_KEY": "k"})
    assert not wandb_logged_in({"NETRC": str(tmp_path / "none")})
    assert not wandb_logged_in({"NETRC": str(netrc), "WANDB_BASE_URL": "https://wandb.example.com"})


def test_a_run_never_removes_or_replaces_the_model_it_starts_from(run, capsys):
    """model.path=out/model with output_dir=out: starting from step 0 clears out/ and saving replaces
    out/model; both would destroy the model being trained. Refused before training; nothing changed."""
    saved_tiny(run / "out" / "model")
    before = {p.name: p.read_bytes() for p in (run / "out" / "model").iterdir()}
    assert main(["sft", "c.yaml", "model.path=out/model", "output_dir=out", "train.max_steps=1"]) == 2
    assert "out/model: refusing to write there: it is an input of this run" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (run / "out" / "model").iterdir()} == before


def test_every_file_a_run_writes_is_readable_by_others_under_umask_022(tmp_path):
    """0644 files and 0755 folders, as save_pretrained makes them: a colleague or a server running as
    another user can read the weights; no lock file is left once the run ends."""
    import os
    import stat

    from tests.conftest import write_jsonl

    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "Hi"},
                                                               {"role": "assistant", "content": "Hello"}]}] * 4)
    old = os.umask(0o022)
    try:
        assert main(["sft", "examples/configs/sft.yaml", f"data.sources.0.path={data}", "train.max_steps=2",
                     "train.save_steps=1", f"output_dir={tmp_path / 'run'}"]) == 0
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path / "run")): stat.S_IMODE(p.stat().st_mode)
             for p in (tmp_path / "run").rglob("*")}
    assert "model/model.safetensors" in modes and "config.yaml" in modes and "summary.json" in modes
    wrong = {p: oct(m) for p, m in modes.items() if m != (0o755 if (tmp_path / "run" / p).is_dir() else 0o644)}
    assert not wrong
    assert not [p for p in modes if ".pride-lock" in p]
