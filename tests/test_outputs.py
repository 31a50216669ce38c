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
