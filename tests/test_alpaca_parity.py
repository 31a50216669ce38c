"""AlpacaEval 2 equals the official `alpaca_eval` package on the same inputs (issue 11).

The official package is a test dependency. Its length-controlled win rate downloads
`df_gamed.csv` from the hub; here the download is replaced by a file the test writes (a
synthetic df_gamed with two gamed baselines and a regular model), so both sides read the
same file. Raw and LC numbers must agree to 1e-6.
"""

import csv
import json
import math
import random
import subprocess
import sys
import warnings

import pytest

from pride.errors import PrideError
from pride.eval import alpaca_eval
from tests.conftest import REFERENCE_DATA

official_glm = pytest.importorskip("alpaca_eval.metrics.glm_winrate")
ANNOTATIONS = REFERENCE_DATA / "alpaca_eval" / "gemma-2b-it_weighted_alpaca_eval_gpt4_turbo_annotations.json"
needs_reference = pytest.mark.skipif(not ANNOTATIONS.exists(), reason="../shared/reference-data is absent")
KEYS = ("win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total", "discrete_win_rate",
        "length_controlled_winrate", "lc_standard_error")


def write_gamed(path, n, seed=0):
    """df_gamed.csv's layout: per model, one row per instruction index."""
    rng = random.Random(seed)
    difficulty = [rng.gauss(0, 1) for _ in range(n)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "index", "preference", "std_delta_len", "instruction_difficulty", "not_gamed_baseline"])
        for model, bias, gamed in (("gpt4_gamed_concise", -1.2, True), ("gpt4_gamed_verbose", 1.5, True),
                                   ("some_model", 0.2, False)):
            for i in range(n):
                std = rng.gauss(bias, 0.7)
                p = 1 / (1 + math.exp(-(0.8 * math.tanh(-std) + 0.4 * difficulty[i] + rng.gauss(0, 0.5))))
                w.writerow([model, i, "" if rng.random() < 0.02 else p, std, difficulty[i], not gamed])
    return path


def official(annotations, gamed_path, monkeypatch):
    monkeypatch.setattr(official_glm, "hf_hub_download", lambda **kw: str(gamed_path))
    with warnings.catch_warnings():  # the official code uses scikit-learn's deprecated spellings
        warnings.simplefilter("ignore")
        out = official_glm.get_length_controlled_winrate(annotations, save_weights_dir=None)
    return {k: float(out[k]) for k in KEYS}


def ours(annotations, gamed_path):
    out = alpaca_eval.get_winrate(annotations)
    out.update(alpaca_eval.length_controlled_winrate(annotations, alpaca_eval.load_gamed(gamed_path)))
    return {k: float(out[k]) for k in KEYS}


def synthetic(n, seed, nulls=0.0, draws=0.0, discrete=0.0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        base, model = rng.randint(50, 3000), rng.randint(50, 3000)
        r = rng.random()
        if r < nulls:
            pref = None
        elif r < nulls + draws:
            pref = rng.choice([1.5, 0])
        elif r < nulls + draws + discrete:
            pref = rng.choice([1.0, 2.0])
        else:
            pref = 1 + 1 / (1 + math.exp(-(0.002 * (model - base) + rng.gauss(0, 1))))
        rows.append({"instruction": f"instruction {i}", "output_1": "b" * base, "output_2": "m" * model,
                     "generator_1": "gpt4_1106_preview", "generator_2": "my_model", "preference": pref})
    return rows


@needs_reference
# Both sides run live on this machine (alpaca_eval is a test extra): they differ only in the order
# of float64 sums, < 1e-15 measured; 1e-6 still checks every digit the leaderboard prints.
def test_gemma_2b_it_raw_and_lc_equal_the_official_package(tmp_path, monkeypatch):
    annotations = json.loads(ANNOTATIONS.read_text())
    gamed = write_gamed(tmp_path / "df_gamed.csv", len(annotations))
    want, got = official(annotations, gamed, monkeypatch), ours(annotations, gamed)
    for k in KEYS:
        assert got[k] == pytest.approx(want[k], abs=1e-6), k


@pytest.mark.parametrize("n,seed,nulls,draws,discrete", [(300, 1, 0.0, 0.0, 0.0), (400, 2, 0.05, 0.1, 0.2),
                                                         (250, 3, 0.2, 0.0, 0.5), (120, 4, 0.0, 0.3, 0.0)])
def test_synthetic_annotation_sets_equal_the_official_package(tmp_path, monkeypatch, n, seed, nulls, draws, discrete):
    annotations = synthetic(n, seed, nulls, draws, discrete)
    gamed = write_gamed(tmp_path / "df_gamed.csv", n, seed=seed)
    want, got = official(annotations, gamed, monkeypatch), ours(annotations, gamed)
    for k in KEYS:
        assert got[k] == pytest.approx(want[k], abs=1e-6), k


def test_baseline_against_itself_is_fifty_by_construction(tmp_path, monkeypatch):
    annotations = synthetic(50, 5)
    for a in annotations:
        a["generator_2"] = a["generator_1"]
    gamed = write_gamed(tmp_path / "df_gamed.csv", 50)
    want = official(annotations, gamed, monkeypatch)
    got = alpaca_eval.length_controlled_winrate(annotations, alpaca_eval.load_gamed(gamed))
    assert got["length_controlled_winrate"] == want["length_controlled_winrate"] == 50
    assert "baseline itself" in got["note"]


@needs_reference
def test_order_switch_follows_the_official_rule_on_all_805():
    """The published preferences are reproduced from the raw logprobs with the official switch rule."""
    rows = json.loads(ANNOTATIONS.read_text())
    agree = sum(abs(alpaca_eval.preference_from_completion(r["raw_completion"], alpaca_eval.is_switched(r["instruction"]))
                    - r["preference"]) < 1e-9 for r in rows)
    assert agree == 805


def test_logprob_parsing_is_the_official_parser():
    from alpaca_eval.completion_parsers import logprob_parser

    def completion(*tops):
        return {"logprobs": {"content": [{"top_logprobs": [{"token": t, "logprob": lp} for t, lp in tops]}]}}

    cases = [completion(("M", -0.1), (" m", -2.5)), completion(("m", -0.3), ("M", -1.4)),
             completion(("M", -0.01), ("m", -4.6), ("Both", -9.0)), completion(("Both", -0.1), ("The", -2.0)),
             completion(("m", -1.0), ("m", -3.0), ("M", -2.0))]
    for c in cases:
        want = logprob_parser(c, numerator_token="m", denominator_tokens=["m", "M"], is_binarize=False)[0]
        got = alpaca_eval.logprob_preference(c)
        # a few exp/log of the same float64 values on both sides: equal to the last bits
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, abs=1e-12)
    assert alpaca_eval.logprob_preference(cases[0]) == 2.0  # " m" is not "m"
    assert math.isnan(alpaca_eval.logprob_preference(cases[3]))  # no m/M: NaN, not a guess from the text


def test_judge_request_is_the_official_prompt():
    """The messages the official annotator sends for one row (make_prompts + prompt_to_chatml)."""
    import pandas as pd
    from alpaca_eval import utils
    from importlib.resources import files

    template = (files("alpaca_eval") / "evaluators_configs" / "alpaca_eval_clf_gpt4_turbo" / "alpaca_eval_clf.txt"
                ).read_text()
    row = {"instruction": 'Say "hi" {output_1}', "output_1": "hi\n\n", "output_2": "Hello there! {x}"}
    prompts, _ = utils.make_prompts(pd.DataFrame([row]), template)
    assert alpaca_eval.judge_messages(**row) == utils.prompt_to_chatml(prompts[0])
    assert alpaca_eval.TEMPLATE == template
    assert not alpaca_eval.judge_messages(**row)[-1]["content"].endswith("\n")


@pytest.mark.parametrize("pref,message", [(7.0, "outside \\[1, 2\\]"), (-0.5, "outside"), ("2", "expected a number"),
                                          (True, "expected a number")])
def test_bad_preferences_are_errors(pref, message):
    rows = synthetic(5, 0)
    rows[3]["preference"] = pref
    with pytest.raises(PrideError, match=f"row 3: field 'preference': .*{message}"):
        alpaca_eval.get_winrate(rows)


def test_score_command_with_the_gamed_file(tmp_path):
    annotations = tmp_path / "annotations.json"
    annotations.write_text(json.dumps(synthetic(100, 7, nulls=0.1)))
    gamed = write_gamed(tmp_path / "df_gamed.csv", 100)
    cmd = [sys.executable, "-m", "pride", "eval", "score", "alpaca-eval", str(annotations)]
    out = json.loads(subprocess.run(cmd + ["--gamed", str(gamed)], capture_output=True, text=True, check=True).stdout)
    # the same code in a subprocess and in-process on one machine; JSON keeps floats exactly
    assert out["length_controlled_winrate"] == pytest.approx(ours(synthetic(100, 7, nulls=0.1), gamed)[
        "length_controlled_winrate"], abs=1e-9)
    bad = subprocess.run(cmd + ["--difficulty", str(gamed)], capture_output=True, text=True)
    assert bad.returncode == 2 and "--gamed" in bad.stderr and "Traceback" not in bad.stderr
