"""The prepared GPU check (benchmarks/gpu/check.sh) runs, in its CPU smoke form, so the kit
cannot rot between the sessions that have a GPU to run it on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke_passes_on_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu" / "check.sh"), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "check.json").read_text())
    assert set(data) == {"environment", "correctness", "weights_move", "compare_trl", "engine", "online_round"}
    assert all(part["pass"] for part in data.values())
    cases = data["correctness"]["cases"]
    assert cases["llama/sdpa sft_packed_vs_one_fp32"]["logps_abs"] < 1e-3
    assert data["online_round"]["pairs"] > 0
    assert (tmp_path / "check.md").read_text().startswith("GPU check on cpu")
