"""The bad-input corpus (issue 13): every file in tests/bad_inputs/ is one case.

A case is a YAML file: `files` (text files to create), optionally `binary` (base64), the
`run` arguments of the `pride` command, and the `error` it must print (a regular
expression), with `why` saying what went wrong before. Each must exit with code 2 and one
line naming the file, line or key: never a traceback. Adding a case is adding one file.
"""

import base64
import sys
from pathlib import Path

import pytest
import yaml

from pride.cli import main

CASES = sorted((Path(__file__).parent / "bad_inputs").glob("*.yaml"))


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_bad_input_gives_one_clear_line(case, tmp_path, monkeypatch, capsys):
    spec = yaml.safe_load(case.read_text(encoding="utf-8"))
    assert set(spec) <= {"why", "files", "binary", "run", "error"} and spec.get("why"), case.name
    for name, text in (spec.get("files") or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    for name, data in (spec.get("binary") or {}).items():
        (tmp_path / name).write_bytes(base64.b64decode(data))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])  # judge modules of the case
    try:
        rc = main([str(a) for a in spec["run"]])
    finally:  # a case's own modules (judge functions) must not leak into the next case
        for name, module in list(sys.modules.items()):
            if str(getattr(module, "__file__", "") or "").startswith(str(tmp_path)):
                del sys.modules[name]
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if "error:" in line]
    assert rc == 2, out.err[-2000:]
    assert "Traceback" not in out.err + out.out
    assert len(lines) == 1, out.err[-2000:]
    assert __import__("re").search(spec["error"], lines[0]), lines[0]


def test_nan_never_reaches_the_json_output(tmp_path, capsys):
    """One annotation: the standard error is undefined, and the output is still JSON (null)."""
    import json

    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "q", "output_1": "a", "output_2": "b",
                                                  "preference": 2}]))
    assert main(["eval", "score", "alpaca-eval", str(tmp_path / "a.json")]) == 0
    out = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} in the output"))
    assert out["standard_error"] is None and out["win_rate"] == 100.0
