"""MT-Bench equals FastChat's llm_judge (the `fschat` package) on the same inputs (issue 11).

FastChat's judge functions run unchanged with their OpenAI call replaced by a scripted judge
(the same replies for the same prompts on both sides); its show_result prints DataFrames,
which the tests take instead of printing.
"""

import hashlib
import json
import sys
import types
from argparse import Namespace

import pytest

from pride.eval import mt_bench
from tests.conftest import REFERENCE_DATA

MT = REFERENCE_DATA / "mt_bench"
pytestmark = pytest.mark.skipif(not MT.exists(), reason="../shared/reference-data is absent")
sys.modules.setdefault("anthropic", types.ModuleType("anthropic"))  # imported by FastChat, used only for Claude
fc = pytest.importorskip("fastchat.llm_judge.common")
fc_show = pytest.importorskip("fastchat.llm_judge.show_result")

PAIR_REPLIES = ["Assistant A is better. [[A]]", "[[B]]", "It is a tie: [[C]]", "no verdict here", "[[A]] or [[B]]"]
SINGLE_REPLIES = ["Rating: [[7]]", "Rating: [8.5]", "no rating", "[[10]]", "[[3.0]] and later [[9]]"]


def scripted(replies):
    """A judge whose reply depends only on the prompt it is shown."""
    def reply(user_prompt):
        return replies[int(hashlib.sha256(user_prompt.encode()).hexdigest(), 16) % len(replies)]
    return reply


class PrideJudge:
    def __init__(self, reply):
        self.reply = reply

    def text(self, messages, **params):
        assert params == {"temperature": 0, "max_tokens": 2048}
        return self.reply(messages[-1]["content"])


def fastchat_openai(reply):
    def chat_completion_openai(model, conv, temperature, max_tokens, api_dict=None):
        assert temperature == 0 and max_tokens == 2048
        return reply(conv.messages[-2][1])
    return chat_completion_openai


@pytest.fixture(scope="module")
def data():
    questions = mt_bench.load_questions(MT / "question.jsonl")[:24]  # all 8 categories, 3 each
    prompts = {p["name"]: p for p in mt_bench.read_jsonl(MT / "judge_prompts.jsonl")}
    refs = mt_bench.load_answers(MT / "reference_answer_gpt-4.jsonl")
    answers = {m: {q["question_id"]: [f"{m} answer {i} to {q['question_id']}" for i in (1, 2)] for q in questions}
               for m in ("model-a", "model-b", "gpt-3.5-turbo")}
    return questions, prompts, refs, answers


def fastchat_answer(turns):
    return {"choices": [{"turns": turns}]}


def test_pairwise_judgments_equal_fastchat(data, monkeypatch):
    questions, prompts, refs, answers = data
    reply = scripted(PAIR_REPLIES)
    monkeypatch.setattr(fc, "chat_completion_openai", fastchat_openai(reply))
    ours = mt_bench.judge_pairs(PrideJudge(reply), questions, answers, [("model-a", "gpt-3.5-turbo")], refs, prompts,
                                "gpt-4")
    fc_prompts = fc.load_judge_prompts(str(MT / "judge_prompts.jsonl"))
    got = {(r["question_id"], r["turn"]): r for r in ours}
    assert len(got) == 2 * len(questions)
    for q in questions:
        for turn in (1, 2):
            math = q["category"] in fc.NEED_REF_CATS
            name = ("pair-math-v1" if math else "pair-v2") + ("-multi-turn" if turn == 2 else "")
            judge = fc.Judge("gpt-4", fc_prompts[name], ref_based=math, multi_turn=turn == 2)
            match = fc.MatchPair(q, "model-a", "gpt-3.5-turbo", fastchat_answer(answers["model-a"][q["question_id"]]),
                                 fastchat_answer(answers["gpt-3.5-turbo"][q["question_id"]]), judge,
                                 ref_answer=fastchat_answer(refs[q["question_id"]]) if math else None,
                                 multi_turn=turn == 2)
            want = fc.play_a_match_pair(match, output_file=None)
            mine = got[(q["question_id"], turn)]
            for key in ("model_1", "model_2", "g1_winner", "g2_winner", "g1_user_prompt", "g2_user_prompt",
                        "g1_judgment", "g2_judgment", "turn"):
                assert mine[key] == want[key], (q["question_id"], turn, key)
            assert mine["judge"] == list(want["judge"])


def test_single_judgments_equal_fastchat(data, monkeypatch):
    questions, prompts, refs, answers = data
    reply = scripted(SINGLE_REPLIES)
    monkeypatch.setattr(fc, "chat_completion_openai", fastchat_openai(reply))
    ours = mt_bench.judge(PrideJudge(reply), questions, answers["model-a"], refs, prompts, "model-a", "gpt-4")
    fc_prompts = fc.load_judge_prompts(str(MT / "judge_prompts.jsonl"))
    for mine in ours:
        q = next(x for x in questions if x["question_id"] == mine["question_id"])
        math = q["category"] in fc.NEED_REF_CATS
        name = mine["judge"][1]
        judge = fc.Judge("gpt-4", fc_prompts[name], ref_based=math, multi_turn=mine["turn"] == 2)
        rating, user_prompt, judgment = fc.run_judge_single(
            q, fastchat_answer(answers["model-a"][q["question_id"]]), judge,
            fastchat_answer(refs[q["question_id"]]) if math else None, multi_turn=mine["turn"] == 2)
        assert (mine["score"], mine["user_prompt"], mine["judgment"]) == (rating, user_prompt, judgment)


def test_leading_zero_rating():
    """FastChat's ast.literal_eval raises on [[08]] (its run stops); pride records a failed rating."""
    with pytest.raises(SyntaxError):
        __import__("ast").literal_eval("08")
    assert mt_bench.parse_rating("Rating: [[08]]") == -1 and mt_bench.parse_rating("[[8]]") == 8


def captured_frames(monkeypatch, fn, args):
    frames = []
    monkeypatch.setattr(fc_show, "print", lambda *a, **k: frames.extend(x for x in a if hasattr(x, "to_dict")),
                        raising=False)
    fn(args)
    return frames


@pytest.mark.parametrize("mode", ["pairwise-baseline", "pairwise-all"])
def test_pairwise_scores_equal_fastchat_show_result(tmp_path, monkeypatch, mode):
    import random

    rng = random.Random(0)
    rows = []
    pairs = [("model-a", "gpt-3.5-turbo"), ("model-b", "gpt-3.5-turbo"), ("model-a", "model-b")]
    for qid in range(80):
        for m1, m2 in pairs:
            for turn in (1, 2):
                rows.append({"question_id": qid, "model_1": m1, "model_2": m2, "turn": turn,
                             "g1_winner": rng.choice(["model_1", "model_2", "tie", "error"]),
                             "g2_winner": rng.choice(["model_1", "model_2", "tie"])})
    path = tmp_path / "gpt-4_pair.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = Namespace(input_file=str(path), bench_name="mt_bench", judge_model="gpt-4", model_list=None,
                     baseline_model="gpt-3.5-turbo" if mode == "pairwise-baseline" else None, mode=mode)
    (want,) = captured_frames(monkeypatch, fc_show.display_result_pairwise, args)
    got = mt_bench.score_files([path], mode, "gpt-3.5-turbo")
    assert set(got) == set(want.index)
    for model, row in want.iterrows():
        for key in ("win", "loss", "tie"):
            assert got[model][key] == row[key]
        for key in ("win_rate", "loss_rate", "win_rate_adjusted"):
            # means of judge scores (small integers, halves) in float64: exact up to summation order
            assert got[model][key] == pytest.approx(row[key], abs=1e-12)


def test_single_scores_equal_fastchat_show_result(tmp_path, monkeypatch):
    import random

    rng = random.Random(1)
    rows = [{"question_id": q, "model": m, "turn": t, "score": rng.choice([-1, 1, 2.5, 7, 9, 10])}
            for q in range(80) for m in ("model-a", "model-b") for t in (1, 2)]
    path = tmp_path / "gpt-4_single.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = Namespace(input_file=str(path), bench_name="mt_bench", judge_model="gpt-4", model_list=None)
    turn1, turn2, average = captured_frames(monkeypatch, fc_show.display_result_single, args)
    got = mt_bench.score_files([path])
    for model in ("model-a", "model-b"):
        # pandas' mean and ours over the same float64 scores: summation order only
        assert got[model]["turn_1"] == pytest.approx(turn1.loc[(model, 1), "score"], abs=1e-12)
        assert got[model]["turn_2"] == pytest.approx(turn2.loc[(model, 2), "score"], abs=1e-12)
        assert got[model]["average"] == pytest.approx(average.loc[model, "score"], abs=1e-12)


def test_reference_answers_follow_the_judge_model(tmp_path):
    (tmp_path / "reference_answer").mkdir()
    (tmp_path / "reference_answer" / "gpt-4.jsonl").write_text("")
    assert mt_bench.reference_file(tmp_path, "gpt-4o").name == "gpt-4.jsonl"  # gpt-4 when there is none
    (tmp_path / "reference_answer" / "gpt-4o.jsonl").write_text("")
    assert mt_bench.reference_file(tmp_path, "gpt-4o").name == "gpt-4o.jsonl"
