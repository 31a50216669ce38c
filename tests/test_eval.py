"""Evaluation: official scores from saved judgments, LC win rate, Bradley-Terry, formats, end to end."""

import csv
import json
import math
import os
import random
import signal
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

from pride.eval import alpaca_eval, arena_hard, mt_bench, open_llm
from tests.conftest import REFERENCE_DATA

ALPACA = REFERENCE_DATA / "alpaca_eval"
needs_reference = pytest.mark.skipif(not REFERENCE_DATA.exists(), reason="../shared/reference-data is absent")


@needs_reference
def test_alpaca_eval_score_reproduces_the_leaderboard():
    annotations = ALPACA / "gemma-2b-it_weighted_alpaca_eval_gpt4_turbo_annotations.json"
    out = subprocess.run([sys.executable, "-m", "pride", "eval", "score", "alpaca-eval", str(annotations)],
                         capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    row = next(r for r in csv.DictReader(open(ALPACA / "weighted_alpaca_eval_gpt4_turbo_leaderboard.csv"))
               if r[""] == "gemma-2b-it")
    # the official leaderboard's figures: float64 means and a standard error over 805 rows,
    # stable to ~1e-13 across CPUs; 1e-6 checks every digit alpaca_eval prints
    for key in ("win_rate", "standard_error", "discrete_win_rate"):
        assert got[key] == pytest.approx(float(row[key]), abs=1e-6), key
    for key in ("n_wins", "n_wins_base", "n_draws", "n_total", "avg_length"):
        assert got[key] == int(row[key]), key
    assert got["length_controlled_winrate"] is None and "df_gamed.csv" in got["note"]


def synthetic_annotations(n, skill, length_bias, model_longer, seed):
    """Preferences from a known generative story: skill plus a pure length effect."""
    rng = random.Random(seed)
    rows, difficulty = [], []
    for i in range(n):
        base = rng.randint(200, 1200)
        delta = rng.randint(100, 600) * (1 if model_longer else -1) + rng.randint(-50, 50)
        d = rng.gauss(0, 1)
        logit = skill + length_bias * math.tanh(delta / 400) - 0.3 * d
        rows.append({"instruction": f"q{i}", "output_1": "b" * base, "output_2": "m" * max(1, base + delta),
                     "preference": 1 + 1 / (1 + math.exp(-logit))})
        difficulty.append(d)
    return rows, difficulty


def difficulty_only(diff):
    """df_gamed rows that carry only the difficulty (no preference: not in the fit)."""
    return [{"index": i, "preference": math.nan, "std_delta_len": 0.0, "instruction_difficulty": d,
             "not_gamed_baseline": True} for i, d in enumerate(diff)]


def test_length_controlled_win_rate_discounts_length():
    longer, diff = synthetic_annotations(400, skill=0.0, length_bias=2.5, model_longer=True, seed=0)
    raw, lc = alpaca_eval.get_winrate(longer)["win_rate"], alpaca_eval.length_controlled_winrate(
        longer, difficulty_only(diff))
    assert raw > 65 and lc["length_controlled_winrate"] < raw - 10  # wins only by being longer
    shorter, diff = synthetic_annotations(400, skill=0.8, length_bias=2.5, model_longer=False, seed=1)
    raw, lc = alpaca_eval.get_winrate(shorter)["win_rate"], alpaca_eval.length_controlled_winrate(
        shorter, difficulty_only(diff))
    assert lc["length_controlled_winrate"] > raw + 10  # wins while shorter
    assert lc["glm_weights"]["np.tanh(std_delta_len)"] < 0  # longer baseline (len_1 - len_2 > 0) hurts the model


def judgments(wins_strong, wins, ties, losses, losses_strong, model="m"):
    """Hand-made arena-hard judgments, game 1 (baseline as A) only; game 2 unparsed."""
    labels = ["B>>A"] * wins_strong + ["B>A"] * wins + ["A=B"] * ties + ["A>B"] * losses + ["A>>B"] * losses_strong
    return [{"uid": f"q{i}", "model": model, "games": [{"score": lab}, {"score": None}]} for i, lab in enumerate(labels)]


def test_bradley_terry_two_models_closed_form_and_bootstrap():
    js = judgments(wins_strong=3, wins=5, ties=4, losses=6, losses_strong=2)
    result = arena_hard.score(js, "base", rounds=50, seed=7, version_name="v0.1")["arena-hard-v0.1"]["m"]
    # Worked out independently: with two players the BT win probability is the weighted win share,
    # strong verdicts counting 3 battles and ties half a win.
    W, T, N = 3 * 3 + 5, 4, 3 * 3 + 5 + 4 + 6 + 2 * 3
    # sklearn's unpenalised logistic fit stops at tol 1e-8 on the gradient, not at the closed form
    assert result["score"] == pytest.approx(100 * (W + T / 2) / N, abs=1e-3)
    outcomes = [1.0] * 9 + [1.0] * 5 + [0.5] * 4 + [0.0] * 6 + [0.0] * 6  # battle order as expanded
    rng = np.random.RandomState(7)  # v0.1's resampling: battles.sample(frac=1, replace=True)
    shares = []
    for _ in range(50):
        pick = rng.choice(N, size=N, replace=True)
        shares.append(100 * np.mean([outcomes[i] for i in pick]))
    # v0.1 takes the percentiles of the Elo ratings, then converts them to win rates
    elo = [400 * math.log10(p / (100 - p)) for p in shares]
    for key, q in (("ci_lower", 2.5), ("ci_upper", 97.5)):
        # each bootstrap round is a logistic fit stopped at tol 1e-8 (see above)
        assert result[key] == pytest.approx(100 / (1 + 10 ** (-np.percentile(elo, q) / 400)), abs=1e-3)
    assert result["ci_lower"] < result["score"] < result["ci_upper"]


def test_bradley_terry_three_models_matches_minorization_maximization():
    rng = random.Random(0)
    strength = {"base": 1.0, "x": 2.0, "y": 0.5}
    battles = []
    for _ in range(600):
        a, b = rng.sample(list(strength), 2)
        p = strength[a] / (strength[a] + strength[b])
        battles.append({"question_id": 0, "model_a": a, "model_b": b, "winner": "model_a" if rng.random() < p else "model_b"})
    ratings = arena_hard.bradley_terry(battles, "base")
    # Hunter's MM algorithm for BT strengths, written independently.
    names = sorted(strength)
    wins = {m: sum(1 for b in battles if b[b["winner"]] == m) for m in names}
    games = {(i, j): sum(1 for b in battles if {b["model_a"], b["model_b"]} == {i, j}) for i in names for j in names}
    s = {m: 1.0 for m in names}
    for _ in range(2000):
        s = {i: wins[i] / sum(games[i, j] / (s[i] + s[j]) for j in names if j != i) for i in names}
    expected = {m: 400 * math.log10(s[m] / s["base"]) + 1000 for m in names}
    for m in names:
        # two iterative fits (lbfgs to tol 1e-8; 2000 MM steps) of the same maximum: 0.05 Elo points
        assert ratings[m] == pytest.approx(expected[m], abs=0.05)


class EchoClient:
    """Stands in for an OpenAI-compatible endpoint: answers with a fixed string."""

    def __init__(self, text="An answer. [[7]]"):
        self.text_value, self.calls = text, []

    def text(self, messages, **params):
        self.calls.append((messages, params))
        return self.text_value

    def complete(self, messages, **params):
        return {"choices": [{"message": {"role": "assistant", "content": self.text(messages, **params)}}],
                "usage": {"completion_tokens": 3}}


@needs_reference
def test_mt_bench_files_follow_fastchat_formats():
    qs = mt_bench.load_questions(REFERENCE_DATA / "mt_bench" / "question.jsonl")
    client = EchoClient()
    answers = mt_bench.generate_answers(client, qs, "pride-model", max_tokens=8)
    assert [a["question_id"] for a in answers] == [q["question_id"] for q in qs] and len(answers) == 80
    for a, q in zip(answers, qs):
        assert set(a) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
        assert a["choices"][0]["index"] == 0 and len(a["choices"][0]["turns"]) == len(q["turns"]) == 2
    temps = {q["category"]: p["temperature"] for q, (_, p) in zip([q for q in qs for _ in range(2)], client.calls)}
    assert temps["writing"] == 0.7 and temps["math"] == 0.0 and temps["stem"] == 0.1
    prompts = {p["name"]: p for p in mt_bench.read_jsonl(REFERENCE_DATA / "mt_bench" / "judge_prompts.jsonl")}
    refs = {r["question_id"]: r["choices"][0]["turns"]
            for r in mt_bench.read_jsonl(REFERENCE_DATA / "mt_bench" / "reference_answer_gpt-4.jsonl")}
    js = mt_bench.judge(EchoClient("Rating: [[7]]"), qs, {a["question_id"]: a["choices"][0]["turns"] for a in answers},
                        refs, prompts, "pride-model", "gpt-4")
    assert len(js) == 160 and {j["judge"][1] for j in js} == {"single-v1", "single-v1-multi-turn", "single-math-v1",
                                                               "single-math-v1-multi-turn"}
    math_q = next(q for q in qs if q["category"] == "math")
    assert refs[math_q["question_id"]][0] in next(j["user_prompt"] for j in js if j["question_id"] == math_q["question_id"])
    assert mt_bench.score(js) == {"turn_1": 7.0, "turn_2": 7.0, "average": 7.0, "n_judgments": 160, "n_failed": 0}


def test_mt_bench_rating_parsing():
    assert mt_bench.parse_rating("good. Rating: [[8.5]]") == 8.5
    assert mt_bench.parse_rating("Rating: [6]") == 6.0
    assert mt_bench.parse_rating("no rating") == -1


@needs_reference
def test_arena_hard_answer_files_follow_official_format():
    qs = arena_hard.load_questions(REFERENCE_DATA / "arena_hard_v0.1" / "question.jsonl")
    model, baseline, _ = arena_hard.load_answers(REFERENCE_DATA / "arena_hard_v0.1" / "gpt-4-0314.jsonl")
    assert model == "gpt-4-0314" and len(qs) == 500 and all(q["id"] in baseline for q in qs)
    v2 = arena_hard.VERSIONS["v2"]
    records = [arena_hard.answer_record(q, "pride-model", "An **answer**.\n# Title\n- item", v2) for q in qs]
    assert [r["uid"] for r in records] == [q["id"] for q in qs]
    official = json.loads((REFERENCE_DATA / "arena_hard_v0.1" / "gpt-4-0314.jsonl").read_text().splitlines()[0])
    for r in records[:3]:
        assert set(official) <= set(r) and r["messages"][1]["content"]["answer"].startswith("An")
        assert r["metadata"]["header_count"]["h1"] == 1 and r["metadata"]["bold_count"]["**"] == 1
    js = arena_hard.judge(EchoClient("My final verdict is [[B>A]]"), qs[:4], {q["id"]: "x" for q in qs[:4]},
                          {"gpt-4-0314": baseline}, "pride-model", v2)
    assert [g["score"] for g in js[0]["games"]] == ["B>A", "B>A"]  # one win, one loss: both orders judged
    # v0.1: the full-data fit, a logistic fit stopped at tol 1e-8, not at the exact 50.0
    assert arena_hard.score(js, "gpt-4-0314", rounds=10, version_name="v0.1")["arena-hard-v0.1"]["pride-model"]["score"] == \
        pytest.approx(50.0, abs=1e-3)
    v2_result = arena_hard.score(js, rounds=10)["arena-hard-v0.1"]["pride-model"]  # v2: mean of bootstrap means
    assert v2_result["ci_lower"] <= 50.0 <= v2_result["ci_upper"]


def test_arena_hard_run_on_a_v2_set_judges_each_category_against_its_baseline(tmp_path):
    """`pride eval`'s arena_hard on a hard_prompt + creative_writing set: both official baselines
    read, each question judged with its category's prompt, a table per category, the headline
    hard_prompt's."""
    from pride.config import Config
    from pride.eval.run import aggregate, run_arena_hard
    from pride.eval.report import write_report
    from tests.arena_hard_inputs import V2_CATEGORIES

    root = tmp_path / "data" / "arena_hard_v2.0"
    (root / "model_answer").mkdir(parents=True)
    qs = [{"uid": f"{c[0]}{i}", "category": c, "prompt": f"{c} {i}?"} for c in V2_CATEGORIES for i in range(3)]
    (root / "question.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs))
    for c, (base, _, _) in V2_CATEGORIES.items():
        (root / "model_answer" / f"{base}.jsonl").write_text("".join(json.dumps(
            {"uid": q["uid"], "model": base, "messages": [{"role": "user", "content": q["prompt"]},
                                                          {"role": "assistant", "content": {"answer": f"by {base}"}}]})
            + "\n" for q in qs if q["category"] == c))
    cfg = Config.model_validate({"model": {"path": "tiny:llama"}, "eval": {
        "data_dir": str(tmp_path / "data"), "arena_hard_set": "arena_hard_v2.0", "bootstrap_rounds": 10,
        "judge": {"url": "http://127.0.0.1:1", "model": "judge"}}})
    judge = EchoClient("[[B>A]]")  # game 1 the model wins, game 2 the baseline: one each
    result = run_arena_hard(cfg, EchoClient("mine"), judge, "mine", tmp_path / "out", seed=0)
    assert list(result["categories"]) == ["hard_prompt", "creative_writing"] and result["category"] == "hard_prompt"
    assert result["score"] == result["categories"]["hard_prompt"]["score"]
    for table in result["categories"].values():  # one win and one loss per question: 50% within the interval
        assert table["ci_lower"] < 50.0 < table["ci_upper"] and table["battles"] == 6
    assert {c: t["baseline"] for c, t in result["categories"].items()} == {c: b for c, (b, _, _) in V2_CATEGORIES.items()}
    for messages, _ in judge.calls:
        category = next(q["category"] for q in qs if f"\n{q['prompt']}\n" in messages[1]["content"])
        assert messages[0]["content"] == arena_hard.CATEGORIES[category][1]
        assert f"by {V2_CATEGORIES[category][0]}" in messages[1]["content"]
    write_report(tmp_path / "report", {"mine": {"arena_hard": aggregate("arena_hard", [result, result])}})
    hard, creative = (result["categories"][c]["score"] for c in V2_CATEGORIES)
    assert f"mine Arena-Hard shows hard_prompt; each category: hard_prompt {hard:.2f}, creative_writing " \
        f"{creative:.2f}" in (tmp_path / "report" / "report.md").read_text()


def test_open_llm_v2_normalisation():
    assert open_llm.normalize(0.25, 0.25) == 0 and open_llm.normalize(1.0, 0.25) == 100
    assert open_llm.normalize(0.1, 0.25) == 0
    s = open_llm.v2_summary({"bbh_boolean_expressions": 0.75, "bbh_geometric_shapes": 1 / 11, "gpqa_main": 0.4,
                             "mmlu_pro": 0.55, "ifeval": 0.5, "musr_team_allocation": 2 / 3, "math_hard": 0.1})
    # a few float64 divisions: pytest's default relative 1e-6 is exact for them
    assert s["bbh"] == pytest.approx((50 + 0) / 2) and s["gpqa"] == pytest.approx(20.0)
    assert s["mmlu_pro"] == pytest.approx(50.0) and s["musr"] == pytest.approx(50.0) and s["ifeval"] == 50.0


def start_server(args, env=None):
    proc = subprocess.Popen([sys.executable, "-m", "pride", "serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})
    line = proc.stdout.readline()
    assert "http://127.0.0.1:" in line, line
    return proc, line.split("http://")[1].split()[0]


@pytest.mark.slow  # two servers and a whole evaluation: 30 s; make test stays well under 10 minutes
def test_serve_end_to_end_eval_with_a_second_server_as_judge(tmp_path):
    for name in ("mt_bench", "arena_hard_v0.1"):
        src = REFERENCE_DATA / name
        if not src.exists():
            pytest.skip("../shared/reference-data is absent")
        (tmp_path / "data" / name).mkdir(parents=True)
        for f in src.glob("*.jsonl"):
            (tmp_path / "data" / name / f.name).write_text(f.read_text())
    judge, url = start_server(["tiny:llama", "--port", "0", "--model-name", "judge", "--api-key-env", "JK"],
                              env={"JK": "secret"})
    try:
        req = urllib.request.Request(f"http://{url}/models")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(req)  # the key is required
        cfg = tmp_path / "eval.yaml"
        cfg.write_text(f"model: {{path: 'tiny:llama'}}\neval:\n  benchmarks: [mt_bench, arena_hard]\n"
                       f"  data_dir: {tmp_path / 'data'}\n  output_dir: {tmp_path / 'out'}\n  max_questions: 2\n"
                       f"  max_new_tokens: 8\n  bootstrap_rounds: 10\n  server: pride\n  num_runs: 2\n"
                       f"  generation: {{mt_bench: {{max_new_tokens: 64, temperature: 0.7}}}}\n"
                       f"  judge: {{url: 'http://{url}', model: judge, api_key_env: JK, max_tokens: 8}}\n")
        run = subprocess.run([sys.executable, "-m", "pride", "eval", str(cfg)], capture_output=True, text=True,
                             env={**os.environ, "JK": "secret"}, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
    finally:
        judge.send_signal(signal.SIGTERM)
        judge.wait(timeout=30)
    out = tmp_path / "out"
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores["tiny-llama"]) == {"mt_bench", "arena_hard"}
    assert scores["tiny-llama"]["mt_bench"]["mean"]["n_judgments"] == 4
    # an untrained judge parses nothing: no number, said aloud (never a silent '-'), and no empty chart
    assert all(r["headline_mean"] is None for r in scores["tiny-llama"].values())
    assert "tiny-llama mt_bench: no score could be computed (8 of 8 judgments failed to parse)" in run.stderr
    assert (out / "report.md").exists() and not (out / "scores.png").exists()
    answers = (out / "tiny-llama" / "run-0" / "mt_bench" / "model_answer" / "tiny-llama.jsonl").read_text().splitlines()
    assert len(answers) == 2 and len(json.loads(answers[0])["choices"][0]["turns"]) == 2
    judged = (out / "tiny-llama" / "run-0" / "arena_hard" / "model_judgment" / "judge" / "tiny-llama.jsonl")
    assert len(json.loads(judged.read_text().splitlines()[0])["games"]) == 2
    assert not (out / "tiny-llama" / "run-0" / "server.log").read_text().count("secret")
    # two sampled runs with a seed each: different answers, and the report lists every run
    runs = [(out / "tiny-llama" / f"run-{r}" / "mt_bench" / "model_answer" / "tiny-llama.jsonl").read_text()
            for r in (0, 1)]
    assert [json.loads(x)["choices"][0]["turns"] for x in runs[0].splitlines()] != \
        [json.loads(x)["choices"][0]["turns"] for x in runs[1].splitlines()]
    assert len(scores["tiny-llama"]["mt_bench"]["runs"]) == 2 and "each run" in (out / "report.md").read_text()


def test_server_batches_seeds_logprobs_and_n():
    proc, url = start_server(["tiny:llama", "--port", "0"])
    try:
        def ask(body):
            req = urllib.request.Request(f"http://{url}/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            return json.loads(urllib.request.urlopen(req).read())

        msgs = [{"role": "user", "content": "hi"}]
        a = ask({"messages": msgs, "seed": 3, "temperature": 1.0, "max_tokens": 6})
        b = ask({"messages": msgs, "seed": 3, "temperature": 1.0, "max_tokens": 6})
        assert a["choices"][0]["message"] == b["choices"][0]["message"]
        r = ask({"messages": msgs, "n": 3, "temperature": 1.0, "max_tokens": 4, "logprobs": True, "top_logprobs": 2,
                 "seed": 5})  # unseeded, a choice may end at once (EOS drawn first: about 1 in 200 here)
        assert len(r["choices"]) == 3 and r["usage"]["completion_tokens"] >= 3
        lp = next(c["logprobs"]["content"] for c in r["choices"] if c["logprobs"]["content"])[0]
        assert lp["logprob"] <= 0 and len(lp["top_logprobs"]) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
