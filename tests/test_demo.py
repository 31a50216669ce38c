"""`pride demo --quick`: the whole pipeline on the toy task, end to end, as the README's first command runs it."""

import json
import subprocess
import sys

import pytest

from pride.demo.evaluate import per_prompt_scores
from pride.demo.task import correct_answer, corrupt, judge


def test_judge_rewards_exactly_what_the_task_asks():
    p = "Write the word abc 3 times."
    assert judge(p, "1. abc\n2. abc\n3. abc") == 1.0 == judge(p, correct_answer("abc", 3))
    # float64 arithmetic of the judge's fractions: pytest's default relative 1e-6
    assert judge(p, "1. abc\n2. abc") == pytest.approx(0.5 * (2 / 3) / 2 + 0.5)  # one line short
    assert judge(p, "1. abc\n2. abx\n3. abc") == pytest.approx(0.5 + 0.5 * 2 / 3)  # one copy misspelled
    assert judge(p, "abc abc abc") == 0.0 and judge(p, "") == 0.0  # not numbered lines
    assert judge("not a task prompt", "1. abc") == 0.0


def test_corruptions_are_always_flawed_when_forced():
    import random

    rng = random.Random(0)
    for _ in range(200):
        assert corrupt("abc", 3, rng, force=True) != correct_answer("abc", 3)


@pytest.mark.slow  # about a minute; CI runs it (make test-slow) and the full demo (make check-readme)
def test_demo_quick_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    run = subprocess.run([sys.executable, "-m", "pride", "demo", "--quick", "--output", str(out)],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [r["stage"] for r in results] == ["base", "sft", "dpo", "online_dpo_1", "online_dpo_2", "sppo_1",
                                             "online_grpo_1", "online_rm_1"]
    for r in results:
        assert set(r) >= {"stage", "score", "ci", "win_rate_vs_sft", "n_prompts", "seconds", "learned_judge"}
        assert r["ci"][0] <= r["score"] <= r["ci"][1] and r["n_prompts"] == 100
        assert r["learned_judge_ci"][0] <= r["learned_judge"] <= r["learned_judge_ci"][1]
    answers = json.loads((out / "answers" / "online_rm_1.json").read_text())
    assert len(answers["answers"]) == 100 and len(answers["rule"]) == 100 == len(answers["learned"])
    assert "held-out prompts: each stage's first answer" in run.stdout
    report = (out / "report.md").read_text()
    assert "| online_rm_1 |" in report and report.count("| stage | answer |") == 3
    by = {r["stage"]: r["score"] for r in results}
    assert by["sft"] > by["base"]  # SFT learned the task
    assert (out / "scores.png").stat().st_size > 1000 and "held-out judge score" in run.stdout
    for noise in ("Writing model shards", "Loading weights", "it/s]"):  # library progress bars stay quiet
        assert noise not in run.stderr + run.stdout, noise
    # a re-run does no finished work again: every stage skipped, every evaluation read back
    again = subprocess.run([sys.executable, "-m", "pride", "demo", "--quick", "--output", str(out)],
                           capture_output=True, text=True, timeout=900)
    rerun = json.loads((out / "results.json").read_text())
    assert again.returncode == 0 and [{**r, "eval_seconds": 0} for r in rerun] == [{**r, "eval_seconds": 0}
                                                                                  for r in results]
    assert again.stdout.count("finished earlier with the same inputs, skipped") == 7, again.stdout[-2000:]
    assert all(r["eval_seconds"] < 1 for r in rerun)  # read back, not sampled again
    # the same seed gives the same numbers: re-scoring a stage reproduces its per-prompt scores
    again = per_prompt_scores(str(out / "sft" / "model"), ["Write the word abc 3 times."] * 3, samples=2)
    assert again == per_prompt_scores(str(out / "sft" / "model"), ["Write the word abc 3 times."] * 3, samples=2)
