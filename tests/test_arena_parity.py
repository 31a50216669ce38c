"""Arena-Hard scores equal the official arena-hard-auto code, v2 and v0.1, with and without
style control (issue 11), and v2's categories are judged and scored apart as its code does
(issue 25). The official results on these inputs are in
tests/data/arena_hard_official.json, produced by tests/arena_hard_reference.py from a clone
of lmarena/arena-hard-auto (its docstring says how to regenerate them)."""

import json
from pathlib import Path

import pytest

from pride.eval import arena_hard
from pride.eval.arena_hard import parse_label_v01, parse_label_v2, score_files, style_metadata
from tests.arena_hard_inputs import BASELINE, JUDGMENT_TEXTS, V2_CATEGORIES, build, build_v2_categories, v01_judgments

OFFICIAL = json.loads((Path(__file__).parent / "data" / "arena_hard_official.json").read_text())


def write_inputs(tmp_path, layout, inputs=build):
    """Judgments in one file; answers per model without metadata (pride computes it from the text)."""
    questions, answers, judgments = inputs()
    rows = judgments if layout == "v2" else v01_judgments(judgments)
    judged = tmp_path / "judgments.jsonl"
    judged.write_text("".join(json.dumps(r) + "\n" for r in rows))
    files = []
    for model, texts in answers.items():
        f = tmp_path / f"{model.split('/')[-1]}.jsonl"
        if layout == "v2":
            recs = [{"uid": u, "model": model, "messages": [{"role": "user", "content": "q"},
                                                           {"role": "assistant", "content": {"answer": t}}]}
                    for u, t in texts.items()]
        else:
            recs = [{"question_id": u, "model_id": model, "choices": [{"index": 0, "turns": [{"content": t}]}]}
                    for u, t in texts.items()]
        f.write_text("".join(json.dumps(r) + "\n" for r in recs))
        files.append(f)
    return judged, files


@pytest.mark.parametrize("version", ["v2", "v0.1"])
@pytest.mark.parametrize("style", [False, True])
def test_scores_equal_the_official_show_result(tmp_path, version, style):
    judged, answers = write_inputs(tmp_path, version)
    (got,) = score_files([judged], BASELINE, rounds=100, version_name=version,
                         answer_files=answers if style else None).values()
    want = OFFICIAL[version]["style" if style else "scores"]
    assert set(got) == set(want)
    for model, numbers in want.items():
        for key in ("score", "ci_lower", "ci_upper"):
            assert got[model][key] == pytest.approx(numbers[key], abs=TOLERANCE[version, style]), (model, key)


# How far a recorded official figure (0-100 scale) may be from a run on another CPU.
# * Without style control the fits are float64 (sklearn's lbfgs to tol 1e-8 for v0.1, counts for
#   v2): with ATen default/AVX2 and MKL AVX2/SSE4.2/CBWR=COMPATIBLE they differ by < 1e-13 here
#   (on AVX-512 only style control failed, issue 23), so 1e-6 still checks every digit shown.
# * v2 style control is the official float32 fit: 50 L-BFGS iterations (lr 0.1) per bootstrap
#   round, stopped before convergence, so last-bit differences in the BLAS kernels' sums follow
#   the optimiser's path. Against the recorded figures: AVX-512 (Intel, issue 23's report) 8e-5; MKL
#   CBWR=COMPATIBLE 7.2e-3 and ATen without SIMD 1.5e-3 (measured here). 0.02 is about three
#   times the largest, five times below the 0.1 the official leaderboard prints.
# * v0.1 style control is float64 (sklearn) like the plain fit.
TOLERANCE = {("v2", False): 1e-6, ("v2", True): 0.02, ("v0.1", False): 1e-6, ("v0.1", True): 1e-6}


@pytest.mark.parametrize("version,encoding", [("v2", "o200k_base"), ("v0.1", "cl100k_base")])
def test_style_metadata_equals_add_markdown_info(version, encoding):
    """Token lengths (tiktoken's cl100k/o200k) and markdown counts outside code blocks."""
    _, answers, _ = build()
    for model, texts in answers.items():
        for uid, text in texts.items():
            assert style_metadata(text, encoding) == OFFICIAL[version]["metadata"][model][uid], (model, uid)


def test_label_parsing_equals_the_official_get_score():
    assert [parse_label_v2(t) for t in JUDGMENT_TEXTS] == OFFICIAL["v2"]["labels"]
    assert [list(parse_label_v01(t)) for t in JUDGMENT_TEXTS] == OFFICIAL["v0.1"]["labels"]


@pytest.mark.parametrize("style", [False, True])
def test_v2_categories_are_scored_apart_as_the_official_show_result(tmp_path, style):
    """hard_prompt against o3-mini and creative_writing against gemini-2.0-flash-001, a table
    each, equal to `show_result.py --category C` run once per category; the baselines come
    from the judgments, as nobody names one."""
    judged, answers = write_inputs(tmp_path, "v2", build_v2_categories)
    got = score_files([judged], None, rounds=100, answer_files=answers if style else None)
    want = OFFICIAL["v2_categories"]["categories"]
    assert list(got) == list(V2_CATEGORIES) and set(want) == set(V2_CATEGORIES)
    for category, tables in want.items():
        assert set(got[category]) == set(tables["style" if style else "scores"])
        for model, numbers in tables["style" if style else "scores"].items():
            assert got[category][model]["baseline"] == V2_CATEGORIES[category][0]
            for key in ("score", "ci_lower", "ci_upper"):
                assert got[category][model][key] == pytest.approx(numbers[key], abs=TOLERANCE["v2", style]), \
                    (category, model, key)


def test_v2_judge_requests_equal_the_official_pairwise_judgment():
    """Each question goes to the judge with its category's system prompt and baseline, both
    orders, as gen_judgment.py's pairwise_judgment sends them (max_tokens and temperature of
    config/arena-hard-v2.0.yaml)."""
    questions, answers, _ = build_v2_categories()
    for uid, official in OFFICIAL["v2_categories"]["requests"].items():
        (q,) = [{"id": x["uid"], "prompt": x["prompt"], "category": x["category"], "layout": "v2", "raw": x}
                for x in questions if x["uid"] == uid]
        judge = Judge(["[[A>B]]", "[[B>A]]"])
        (row,) = arena_hard.judge(judge, [q], answers["model-x"], answers, "model-x", arena_hard.VERSIONS["v2"])
        assert [{"messages": m, **p} for m, p in judge.seen] == official, uid
        assert row["baseline"] == V2_CATEGORIES[q["category"]][0] and row["category"] == q["category"]


def test_v2_question_of_an_unknown_category_needs_a_baseline():
    q = [{"id": "q1", "prompt": "P", "layout": "v2", "category": "poetry"}]
    with pytest.raises(arena_hard.PrideError, match="category 'poetry' has no official baseline"):
        arena_hard.judge(Judge([]), q, {"q1": "a"}, {}, "m", arena_hard.VERSIONS["v2"])
    (row,) = arena_hard.judge(Judge(["[[A=B]]", "[[A=B]]"]), q, {"q1": "a"}, {"base": {"q1": "b"}}, "m",
                              arena_hard.VERSIONS["v2"], baseline="base")
    assert row["baseline"] == "base" and [g["score"] for g in row["games"]] == ["A=B", "A=B"]


def test_v2_a_category_judged_against_two_baselines_is_refused(tmp_path):
    path = tmp_path / "j.jsonl"
    rows = [{"uid": f"q{i}", "model": "m", "category": "hard_prompt", "baseline": b,
             "games": [{"score": "A>B"}, {"score": "B>A"}]} for i, b in enumerate(["o3-mini-2025-01-31", "gpt-4-0314"])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(arena_hard.PrideError, match="hard_prompt: judgments against different baselines"):
        score_files([path], rounds=10)


def test_v2_drops_questions_with_an_unparsed_game_and_reports_it(tmp_path):
    judged, _ = write_inputs(tmp_path, "v2")
    (got,) = score_files([judged], BASELINE, rounds=10).values()
    rows = [json.loads(x) for x in judged.read_text().splitlines()]
    for model, result in got.items():  # per model, not the total repeated on every row
        dropped = sum(any(g["score"] is None for g in r["games"]) for r in rows if r["model"].split("/")[-1] == model)
        assert result["dropped_questions"] == dropped and "unknown_labels" not in result
    assert sum(m["dropped_questions"] for m in got.values()) > 0


def test_v2_an_unknown_label_drops_its_question_and_says_which(tmp_path, capsys):
    """The official code crashes on a label such as A>>>B; pride drops that question for that model
    only, counts it, names it, and warns."""
    path = tmp_path / "j.jsonl"
    games = [("A>B", "B>A"), ("B>>A", "A<<B"), ("A=B", "A=B"), ("B>A", "A>B")]
    rows = [{"uid": f"q{i}", "model": m, "games": [{"score": a}, {"score": b}]}
            for m in ("one", "two") for i, (a, b) in enumerate(games)]
    rows[5]["games"][1]["score"] = "A>>>B"  # model two, question q1
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (got,) = score_files([path], "gpt-4-0314", rounds=10).values()
    assert got["one"]["dropped_questions"] == 0 and "unknown_labels" not in got["one"]
    assert got["two"]["dropped_questions"] == 1 and got["two"]["unknown_labels"] == ["q1: A>>>B"]
    assert got["two"]["battles"] == got["one"]["battles"] - 6  # q1's 6 scores (two games, strong verdicts)
    assert capsys.readouterr().err == ("warning: arena-hard uncategorized: two: 1 question(s) dropped for a label "
                                       "that is no verdict (q1: A>>>B)\n")


class Judge:
    """A judge that answers from a script, recording what it was asked."""

    def __init__(self, replies):
        self.replies, self.seen = list(replies), []

    def text(self, messages, **params):
        self.seen.append((messages, params))
        return self.replies.pop(0)


def test_v01_judge_asks_again_once_when_no_label():
    q = [{"id": "q1", "prompt": "P", "layout": "v2", "category": "arena-hard-v0.1"}]
    judge = Judge(["thinking...", "[[B>A]]", "[[A>B]] and [[B>A]]"])
    (row,) = arena_hard.judge(judge, q, {"q1": "model answer"}, {BASELINE: {"q1": "base answer"}}, "m",
                              arena_hard.VERSIONS["v0.1"])
    assert [g["score"] for g in row["games"]] == ["B>A", None]  # retried once; two distinct labels give none
    assert judge.seen[1][0][-1] == {"role": "user", "content": arena_hard.RETRY}
    assert judge.seen[0][1] == {"temperature": 0, "max_tokens": 4096}
    assert "<|The Start of Assistant A's Answer|>\nbase answer" in judge.seen[0][0][1]["content"]
    assert "<|The Start of Assistant A's Answer|>\nmodel answer" in judge.seen[2][0][1]["content"]
