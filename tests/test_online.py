"""Online DPO / SPPO: win probabilities, pairing rules, PairRM, resume after SIGKILL, end to end."""

import json
import math
import os
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch

from pride.config import JudgeSettings, OnlineSettings
from pride.errors import PrideError
from pride.online.judges import FunctionJudge, LLMJudge
from pride.online.pairs import make_pair, win_probabilities
from pride.online.samplers import OpenAISampler
from tests.conftest import write_jsonl
from tests.real_tokenizers import real_tokenizer


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_sppo_win_probabilities_on_hand_made_matrix():
    M = [[0, 1, 2], [-1, 0, 0.5], [-2, -0.5, 0]]
    s, P = win_probabilities(M)
    # s_i = mean_j (M_ij - M_ji): worked out by hand
    # closed forms in float64: pytest's default relative 1e-6 is exact for them (also below)
    assert s == pytest.approx([2.0, -1 / 3, -5 / 3])
    assert P[0][1] == pytest.approx(sig(7 / 3)) and P[1][2] == pytest.approx(sig(4 / 3)) and P[2][2] == 0.5
    row = {"prompt_id": "a", "prompt": [{"role": "user", "content": "q"}], "responses": ["x", "y", "z"]}
    pair, why = make_pair(row, {"scores": s, "matrix": M}, "sppo")
    assert why == "ok" and (pair["chosen"], pair["rejected"]) == ("x", "z")
    assert pair["chosen_win_prob"] == pytest.approx((0.5 + sig(7 / 3) + sig(11 / 3)) / 3)
    assert pair["rejected_win_prob"] == pytest.approx((sig(-11 / 3) + sig(-4 / 3) + 0.5) / 3)
    assert pair["chosen_probs"] == pytest.approx(sig(11 / 3))  # P(x beats z)


def test_keep_ties_pairs_as_sppo_compute_prob_does():
    """numpy's argmax / argmin, as compute_prob.py takes them: the first index on ties, so an all-tie
    prompt becomes the first answer against itself, with win probabilities 1/2."""
    import numpy as np

    row = {"prompt_id": "a", "prompt": [], "responses": ["r0", "r1", "r2"]}
    M = [[0.0] * 3 for _ in range(3)]  # PairRM found no difference
    pair, why = make_pair(row, {"scores": [0.0] * 3, "matrix": M}, "sppo", keep_ties=True)
    scores = np.array([0.0, 0.0, 0.0])
    assert why == "ok" and (scores.argmax(), scores.argmin()) == (0, 0)
    assert (pair["chosen"], pair["rejected"]) == ("r0", "r0")
    assert pair["chosen_probs"] == pair["chosen_win_prob"] == pair["rejected_win_prob"] == 0.5
    scores = [0.3, 0.1, 0.3, 0.1]  # partial ties: first max, first min
    pair, _ = make_pair(dict(row, responses=["a", "b", "c", "d"]), {"scores": scores}, "sppo", keep_ties=True)
    assert (pair["chosen"], pair["rejected"]) == ("a", "b") == ("abcd"[np.argmax(scores)], "abcd"[np.argmin(scores)])
    same = dict(row, responses=["same"] * 3)
    assert make_pair(same, {"scores": [0.1, 0.2, 0.3]}, "sppo", keep_ties=True)[1] == "ok"


def test_identical_pairs_reach_training_only_when_kept():
    from pride.config import ModelSettings
    from pride.data.preference import tokenize_pairs
    from pride.data.rows import PreferencePair
    from pride.models import load_chat

    _, fmt = load_chat(ModelSettings(path="tiny:llama"))
    pairs = [PreferencePair(prompt=[{"role": "user", "content": "q"}], chosen="same", rejected="same")]
    assert tokenize_pairs(pairs, fmt, 64, 32).status == ["identical"]
    kept = tokenize_pairs(pairs, fmt, 64, 32, keep_identical=True)
    assert kept.status == ["ok"] and len(kept.rows) == 1


def test_best_vs_worst_ties_and_identical():
    row = {"prompt_id": "a", "prompt": [], "responses": ["r0", "r1", "r2", "r3"]}
    pair, why = make_pair(row, {"scores": [0.2, 0.9, 0.1, 0.5]}, "best_worst")
    assert why == "ok" and (pair["chosen"], pair["rejected"], pair["chosen_score"], pair["rejected_score"]) == (
        "r1", "r2", 0.9, 0.1)
    assert "chosen_win_prob" not in pair
    assert make_pair(row, {"scores": [0.5] * 4}, "best_worst") == (None, "tie")
    same = dict(row, responses=["same"] * 4)
    assert make_pair(same, {"scores": [0.1, 0.2, 0.3, 0.4]}, "best_worst") == (None, "identical")


def tiny_pairrm(path):
    """A random-init PairRM-hf-shaped directory: tiny DeBERTa-v2 config, byte-level tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import DebertaV2Config, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from pride.online.pairrm import PairRMModel

    b2u = bytes_to_unicode()
    tok = Tokenizer(models.BPE(vocab={b2u[b]: b for b in range(256)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["[PAD]", "[CLS]", "[SEP]", "<|source|>", "<|candidate1|>", "<|candidate2|>"])
    ids = {t: tok.token_to_id(t) for t in ["[PAD]", "[CLS]", "[SEP]", "<|source|>", "<|candidate1|>", "<|candidate2|>"]}
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[
        ("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]")
    config = DebertaV2Config(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=512, n_tasks=1, drop_out=0.05,
                             source_prefix_id=ids["<|source|>"], cand1_prefix_id=ids["<|candidate1|>"],
                             cand2_prefix_id=ids["<|candidate2|>"], pad_token_id=ids["[PAD]"])
    torch.manual_seed(0)
    PairRMModel(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def test_pairrm_both_orders_antisymmetric(tmp_path):
    from pride.online.judges import PairRMJudge

    judge = PairRMJudge(JudgeSettings(type="pairrm", path=str(tiny_pairrm(tmp_path / "pairrm")), batch_size=4), "cpu")
    calls = []
    real = judge.rm.logits
    judge.rm.logits = lambda triples: calls.extend(triples) or real(triples)
    cands = ["Paris.", "It is Lyon, I think.", "The capital of France is Paris.", "no"]
    (out,) = judge.judge([[{"role": "user", "content": "Capital of France?"}]], [cands])
    M = torch.tensor(out.matrix)
    # M[i][j] = (logit(i, j) - logit(j, i)) / 2 in float32: antisymmetric to rounding, which
    # allclose's defaults (1e-5 relative) cover; the scores are float64 sums of the same values
    assert M.shape == (4, 4) and torch.allclose(M, -M.T) and M.abs().sum() > 0
    assert {(a, b) for _, a, b in calls} == {(cands[i], cands[j]) for i in range(4) for j in range(4) if i != j}
    assert out.scores == pytest.approx([float(2 * M[i].sum() / 4) for i in range(4)])


@pytest.mark.parametrize("name", ["mistral", "llama3", "qwen2"])
def test_pairrm_prompt_as_sppo_rank_py_builds_it(name):
    """SPPO's scripts/rank.py apply_template, run on the real tokenizer with its official template."""
    from pride.chat import chat_format
    from pride.online.judges import chat_template_text

    tok = real_tokenizer(name)
    for text in ["What is 2 + 2?", "Is None a keyword?\nAnswer briefly."]:
        sppo = tok.apply_chat_template([{"role": "user", "content": text}, {"role": "assistant", "content": "None"}],
                                       tokenize=False, add_generate_prompt=True).split("None")[0]
        assert chat_template_text(chat_format(tok, None), [{"role": "user", "content": text}]) == sppo


def test_pairrm_judge_shown_the_chat_template_text(tmp_path):
    from pride.chat import chat_format
    from pride.online.judges import make_judge

    s = JudgeSettings(type="pairrm", path=str(tiny_pairrm(tmp_path / "pairrm")), prompt_format="chat_template")
    judge = make_judge(s, "cpu", chat_format(real_tokenizer("mistral"), None))
    seen = []
    real = judge.rm.logits
    judge.rm.logits = lambda triples: seen.extend(src for src, _, _ in triples) or real(triples)
    judge.judge([[{"role": "user", "content": "Hi?"}]], [["a", "b"]])
    assert set(seen) == {"<s>[INST] Hi? [/INST]"}
    with pytest.raises(PrideError, match="prompt_format=chat_template is a PairRM input"):
        make_judge(JudgeSettings(type="function", function="x:y", prompt_format="chat_template"), "cpu")


def send_json(handler: BaseHTTPRequestHandler, body: dict, status: int = 200) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def longer_wins(judge_prompt: str) -> str:
    """A fake judge's verdict on the pairwise prompt: the longer answer wins."""
    a = judge_prompt.split("[The Start of Assistant A's Answer]\n")[1].split("\n[The End")[0]
    b = judge_prompt.split("[The Start of Assistant B's Answer]\n")[1].split("\n[The End")[0]
    return "[[A]]" if len(a) > len(b) else "[[B]]" if len(b) > len(a) else "[[C]]"


class FakeOpenAI(BaseHTTPRequestHandler):
    """Answers chat completions on 127.0.0.1: judges prefer the longer answer, samplers echo the seed."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][-1]["content"]
        content = longer_wins(text) if "[User Question]" in text else f"answer {body['seed']}"
        FakeOpenAI.auth.append(self.headers.get("Authorization"))
        send_json(self, {"choices": [{"message": {"role": "assistant", "content": content}}]})

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_server():
    FakeOpenAI.auth = []
    server = HTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_llm_judge_and_openai_sampler(fake_server, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    judge = LLMJudge(JudgeSettings(type="llm", url=fake_server, model="judge", api_key_env="JUDGE_KEY"))
    (out,) = judge.judge([[{"role": "user", "content": "q"}]], [["a", "abc", "ab"]])
    assert out.matrix == [[0, -1, -1], [1, 0, 1], [1, -1, 0]] and out.scores.index(max(out.scores)) == 1
    assert set(FakeOpenAI.auth) == {"Bearer sk-test"}
    sampler = OpenAISampler(OnlineSettings(sampler="openai", sampler_url=fake_server, samples_per_prompt=3),
                            [fake_server], "m")
    assert sampler.sample([[{"role": "user", "content": "q"}]], [[7000, 7001, 7002]]) == [["answer 7000", "answer 7001", "answer 7002"]]


def test_function_judge():
    judge = FunctionJudge("pride.demo.task:judge")
    (out,) = judge.judge([[{"role": "user", "content": "Write the word abc 2 times."}]],
                         [["1. abc\n2. abc", "1. abc", "abc abc"]])
    assert out.scores == [1.0, 0.625, 0.0] and out.matrix is None  # one line short of two: (1/2)/2 count credit


RULE_JUDGE = "def judge(prompt, response):\n    return float(len(set(response)))  # distinct characters\n"


def online_config(tmp_path, out, *extra):
    """12 prompts; a rule judge module (written next to the data) that separates random outputs."""
    from pride.demo.task import make_conversations

    (tmp_path / "rule_judge.py").write_text(RULE_JUDGE)
    if str(tmp_path) not in sys.path:
        sys.path.insert(0, str(tmp_path))
    data = write_jsonl(tmp_path / "prompts.jsonl", make_conversations(12, seed=0))
    return ["model.path=tiny:llama", f"data.sources.0.path={data}", f"output_dir={out}", "online.iterations=2",
            "online.samples_per_prompt=4", "online.max_new_tokens=6", "online.generation_batch_size=3",
            "online.temperature=1.0", "online.judge.function=rule_judge:judge",
            "train.micro_batch_size=4", "train.learning_rate=1e-4", "seed=0", *extra]


KILLER = textwrap.dedent("""
    import os, signal, sys
    import pride.online.samplers as samplers
    real = samplers.EngineSampler.stream
    def stream(self, prompts, seeds):
        for n, answers in enumerate(real(self, prompts, seeds)):
            if n == 6:  # six prompts answered (two appends of three), the seventh not written
                os.kill(os.getpid(), signal.SIGKILL)
            yield answers
    samplers.EngineSampler.stream = stream
    from pride.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_sigkill_during_generation_then_resume(tmp_path):
    (tmp_path / "killer.py").write_text(KILLER)
    (tmp_path / "empty.yaml").write_text("# from the command line\n")
    args = [str(tmp_path / "empty.yaml"), *online_config(tmp_path, tmp_path / "run", "online.iterations=1")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, str(tmp_path / "killer.py"), "online", *args], capture_output=True,
                            text=True, env=env)
    assert killed.returncode == -9, killed.stderr[-2000:]
    part = tmp_path / "run" / "iteration-1" / "generations.part-0.jsonl"
    assert len(part.read_text().splitlines()) == 6  # two chunks of three prompts survived
    with open(part, "a") as f:
        f.write('{"prompt_id": "p6", "prompt": [], "respo')  # a torn line, as a kill mid-write leaves
    resumed = subprocess.run([sys.executable, "-m", "pride", "online", *args], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "run" / "iteration-1" / "generations.jsonl").read_text().splitlines()]
    ids = [r["prompt_id"] for r in rows]
    assert ids == [f"p{i}" for i in range(12)]  # all prompts, in order, no duplicates
    assert all(len(r["responses"]) == 4 and len(r["seeds"]) == 4 for r in rows)
    assert not part.exists()


def test_online_end_to_end(tmp_path):
    from pride.config import load_config
    from pride.online.loop import run_online

    history = run_online(load_config(None, online_config(tmp_path, tmp_path / "run")))
    for n in (1, 2):
        it = tmp_path / "run" / f"iteration-{n}"
        for name in ("generations.jsonl", "scores.jsonl", "pairs.jsonl", "reference_logps.parquet", "iteration.json"):
            assert (it / name).exists(), name
        assert (it / "model" / "model.safetensors").exists()
        scores = [json.loads(x) for x in (it / "scores.jsonl").read_text().splitlines()]
        assert len(scores) == 12 and all(len(s["scores"]) == 4 for s in scores)
    assert [h["iteration"] for h in history] == [1, 2]
    assert all("score_mean" in h and "sample_s" in h and "judge_s" in h and "train_s" in h for h in history)
    lines = (tmp_path / "run" / "iterations.jsonl").read_text().splitlines()
    assert [json.loads(x)["score_mean"] for x in lines] == [h["score_mean"] for h in history]
    # iteration 2 trains (and sampled) from iteration 1's model
    assert f"path: {tmp_path / 'run' / 'iteration-1' / 'model'}" in (tmp_path / "run" / "iteration-2" / "config.yaml").read_text()
    again = run_online(load_config(None, online_config(tmp_path, tmp_path / "run")))  # finished: nothing redone
    assert again == history
    # a setting that changes what a round trains: both rounds are redone, not reused with a record that lies
    before = (tmp_path / "run" / "iteration-1" / "model" / "model.safetensors").read_bytes()
    changed = run_online(load_config(None, online_config(tmp_path, tmp_path / "run", "preference.beta=0.3")))
    assert [h["identity"] for h in changed] != [h["identity"] for h in history]
    assert (tmp_path / "run" / "iteration-1" / "model" / "model.safetensors").read_bytes() != before
    assert "beta: 0.3" in (tmp_path / "run" / "iteration-2" / "config.yaml").read_text()
    # and logging settings do not make a finished round stale
    assert run_online(load_config(None, online_config(tmp_path, tmp_path / "run", "preference.beta=0.3",
                                                      "train.logging_steps=5"))) == changed


def test_sppo_self_play_with_split_prompts(tmp_path):
    from pride.config import load_config
    from pride.online.loop import run_online

    history = run_online(load_config(None, online_config(
        tmp_path, tmp_path / "sppo", "online.pairs=sppo", "online.prompt_split=split", "preference.loss_type=sppo",
        "preference.beta=0.5")))
    assert [h["prompts"] for h in history] == [6, 6]
    ids = [{json.loads(x)["prompt_id"] for x in (tmp_path / "sppo" / f"iteration-{n}" / "generations.jsonl").read_text().splitlines()}
           for n in (1, 2)]
    assert not ids[0] & ids[1]  # disjoint prompts per iteration
    pairs = [json.loads(x) for x in (tmp_path / "sppo" / "iteration-1" / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all(0 < p["rejected_win_prob"] < 0.5 < p["chosen_win_prob"] < 1 for p in pairs)
    assert "loss_type: sppo" in (tmp_path / "sppo" / "iteration-1" / "config.yaml").read_text()


def test_prompts_per_source_one_source_per_iteration(tmp_path):
    """SPPO's run_sppo_*.sh: iteration n samples the prompts of data-...-sppo-iter{n}."""
    from pride.config import load_config
    from pride.online.loop import load_prompts, prompts_for_iteration

    a = write_jsonl(tmp_path / "iter1.jsonl", [{"prompt": f"first {i}"} for i in range(3)])
    b = write_jsonl(tmp_path / "iter2.jsonl", [{"prompt": f"second {i}"} for i in range(5)])
    cfg = load_config(None, ["model.path=tiny:llama", f"data.sources.0.path={a}", f"data.sources.1.path={b}",
                             "online.iterations=2", "online.prompt_split=per_source"])
    prompts = load_prompts(cfg)
    texts = [[p["prompt"][-1]["content"] for p in prompts_for_iteration(prompts, cfg, n)] for n in (1, 2)]
    assert sorted(texts[0]) == [f"first {i}" for i in range(3)] and sorted(texts[1]) == [f"second {i}" for i in range(5)]
    assert len({p["prompt_id"] for p in prompts}) == 8
    with pytest.raises(PrideError, match="2 data.sources for 3 iterations"):
        load_prompts(cfg.model_copy(update={"online": cfg.online.model_copy(update={"iterations": 3})}))


def test_online_round_trains_with_the_users_model_settings(tmp_path, monkeypatch):
    """Issue 17, point 5: sampling turns checkpointing off; the round's training must not inherit that."""
    from pride.config import load_config
    from pride.online.loop import run_online
    import pride.train.loop as loop

    seen = []
    real = loop.train

    def spy(cfg, *, model, **kw):
        seen.append(model.is_activation_checkpointing)
        return real(cfg, model=model, **kw)

    monkeypatch.setattr(loop, "train", spy)
    run_online(load_config(None, online_config(tmp_path, tmp_path / "run", "online.iterations=1",
                                               "model.gradient_checkpointing=true", "train.max_steps=1")))
    assert seen == [True]  # main: False


def test_preference_policy_has_no_dropout(tmp_path):
    """With dropout off the policy equals the precomputed reference at step 0: the DPO loss is log 2."""
    import math

    from pride.config import load_config
    from pride.train.preference import run_preference
    from tests.test_dpo import uf_rows

    data = write_jsonl(tmp_path / "uf.jsonl", uf_rows(8))
    losses = {}
    for flag in ("true", "false"):
        run_preference(load_config(None, ["model.path=tiny:llama", "model.tiny.attention_dropout=0.5",
                                   f"data.sources.0.path={data}", f"output_dir={tmp_path / flag}",
                                   "train.max_steps=1", "train.micro_batch_size=8", "seed=0",
                                   f"preference.disable_dropout={flag}"]))
        losses[flag] = json.loads((tmp_path / flag / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    # an untrained step's DPO loss is -logsigmoid(0) in float32 (1e-7 relative rounding)
    assert losses["true"] == pytest.approx(math.log(2), abs=1e-6)
    assert abs(losses["false"] - math.log(2)) > 1e-3  # dropout on: the policy differs from its own reference


def test_sppo_win_probabilities_with_huge_scores_do_not_overflow():
    """math.exp overflows past 709: a judge's huge scores must still give probabilities."""
    from pride.online.pairs import scalar_win_probabilities, win_probabilities

    s, p = scalar_win_probabilities([1e300, -1e300, 0.0])
    assert p[0][1] == 1.0 and p[1][0] == 0.0 and p[2][2] == 0.5
    s, p = win_probabilities([[0, 800.0], [-800.0, 0]])
    # sigmoid(-800) underflows to 0 or a denormal depending on the libm: approx(0.0) is abs 1e-12
    assert p[0][1] == 1.0 and p[1][0] == pytest.approx(0.0) and all(0 <= x <= 1 for row in p for x in row)


def test_pairrm_role_lines_as_lions_gen_preference_pairs():
    from pride.online.judges import role_lines

    assert role_lines([{"role": "user", "content": "Hi?"}]) == "user: Hi?"
    assert role_lines([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "A"},
                       {"role": "assistant", "content": "B"}, {"role": "user", "content": "C\n"}]) == \
        "system: Be brief.\nuser: A\nassistant: B\nuser: C"


def test_round_data_mixes_as_lions_mixer_or_by_share(tmp_path):
    """LIONs' Gemma odpo: 10% of the round's pairs + 30% of DPO-Nectar; mix_fraction: a share of the round."""
    from pride.config import load_config
    from pride.data import load_rows
    from pride.online.loop import round_data

    offline = write_jsonl(tmp_path / "nectar.jsonl", [{"prompt": f"o{i}", "chosen": "a", "rejected": "b"}
                                                      for i in range(50)])
    pairs = [{"prompt_id": f"p{i}", "prompt": [{"role": "user", "content": f"q{i}"}], "chosen": "x", "rejected": "y"}
             for i in range(40)]
    base = ["model.path=tiny:llama", f"data.sources.0.path={offline}"]

    def kinds(*extra):
        cfg = load_config(None, base + list(extra))
        data, mem = round_data(pairs, tmp_path / "pairs.jsonl", cfg.online, cfg)
        rows = load_rows(data, "preference", 0, mem).train
        return sum(r.prompt[-1]["content"].startswith("q") for r in rows), sum(
            r.prompt[-1]["content"].startswith("o") for r in rows)

    assert kinds("online.pair_fraction=0.1", f"online.mix_offline.path={offline}",
                 "online.mix_offline.fraction=0.3") == (4, 15)
    assert kinds(f"online.mix_offline.path={offline}", "online.mix_fraction=0.2") == (40, 10)
    assert kinds() == (40, 0)


def test_an_sppo_round_with_every_answer_tied_trains_when_ties_are_kept(tmp_path):
    """A constant judge: without keep_ties every prompt is dropped (an error); with it, as SPPO, every
    prompt gives a pair (its first answer against itself) and the round trains on them."""
    from pride.config import load_config
    from pride.online.loop import run_online

    (tmp_path / "flat_judge.py").write_text("def judge(prompt, response):\n    return 1.0\n")
    args = online_config(tmp_path, tmp_path / "run", "online.iterations=1", "online.pairs=sppo",
                         "preference.loss_type=sppo", "online.judge.function=flat_judge:judge", "train.max_steps=1")
    with pytest.raises(PrideError, match="every prompt was dropped"):
        run_online(load_config(None, args))
    history = run_online(load_config(None, args + ["online.keep_ties=true"]))
    pairs = [json.loads(x) for x in (tmp_path / "run" / "iteration-1" / "pairs.jsonl").read_text().splitlines()]
    assert history[0]["pairs"] == len(pairs) == 12 and all(p["chosen"] == p["rejected"] for p in pairs)
    stats = json.loads((tmp_path / "run" / "iteration-1" / "data_stats.json").read_text())
    assert stats["skipped_identical"] == 0 and stats["kept"] == 12


class HtmlPage(BaseHTTPRequestHandler):
    """A proxy's login page, with status 200, where the judge's API should be."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        page = b"<html><body>Please log in</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args):
        pass


def test_a_judge_answering_html_with_status_200_is_one_line_naming_the_url():
    server = HTTPServer(("127.0.0.1", 0), HtmlPage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/v1"
    try:
        judge = LLMJudge(JudgeSettings(type="llm", url=url, model="judge", concurrency=1))
        with pytest.raises(PrideError, match=rf"{url}: HTTP 200 but not an OpenAI-compatible answer: "
                                             r"'<html><body>Please log in"):
            judge.judge([[{"role": "user", "content": "q"}]], [["a", "b"]])
    finally:
        server.shutdown()


def test_grpo_rounds_train_every_sample_by_its_advantage_and_log_what_the_field_logs(tmp_path):
    """Two GRPO rounds in process: groups.jsonl holds each prompt's rewards and GRPOTrainer's advantages
    of them (`online.groups`, checked against TRL in test_grpo_parity), flat groups and truncated
    completions are counted (and dropped / masked when asked), the loop logs clip fractions and
    lengths per step, iteration.json the rewards' spread per round, and pride plot draws them."""
    from pride.cli import main
    from pride.online.groups import advantages
    from pride.plot import plot_runs

    out = tmp_path / "run"
    assert main(["online", str(write_empty(tmp_path)), *online_config(tmp_path, out), "online.objective=grpo",
                 "online.grpo.drop_flat_groups=true", "online.grpo.mask_truncated_completions=true",
                 "online.grpo.epsilon_high=0.28", "online.grpo.beta=0.04"]) == 0
    for n in (1, 2):
        it = out / f"iteration-{n}"
        groups = [json.loads(x) for x in (it / "groups.jsonl").read_text().splitlines()]
        scores = [json.loads(x) for x in (it / "scores.jsonl").read_text().splitlines()]
        gens = [json.loads(x) for x in (it / "generations.jsonl").read_text().splitlines()]
        assert [g["rewards"] for g in groups] == [s["scores"] for s in scores]
        adv, flat = advantages([g["rewards"] for g in groups], "grpo", "group")
        assert [g["advantages"] for g in groups] == adv and [g["flat"] for g in groups] == flat
        assert [g["truncated"] for g in groups] == [r["truncated"] for r in gens]
        info = json.loads((it / "iteration.json").read_text())
        stats = json.loads((it / "data_stats.json").read_text())
        assert info["flat_group_fraction"] == sum(flat) / 12 and stats["flat_groups"] == sum(flat)
        assert stats["trained_samples"] == 4 * (12 - sum(flat))  # flat groups dropped
        assert stats["truncated"] == sum(map(sum, (r["truncated"] for r in gens))) > 0  # 6 new tokens cut many
        assert stats["masked"] == sum(sum(g["truncated"]) for g, f in zip(groups, flat) if not f)
        metrics = [json.loads(x) for x in (it / "metrics.jsonl").read_text().splitlines()]
        assert all({"clip_ratio/low_mean", "clip_ratio/high_mean", "kl", "completion_length"} <= set(m)
                   and 0 <= m["clip_ratio/high_mean"] <= 1 and m["kl"] >= 0 for m in metrics)
    drawn = plot_runs([str(out)], tmp_path / "curves.png")
    label = f"{tmp_path.name}/run"
    assert drawn["flat_groups"][label] == ([1, 2], [json.loads((out / f"iteration-{n}" / "iteration.json").read_text())
                                                     ["flat_group_fraction"] for n in (1, 2)])
    assert set(drawn) >= {"clip_ratio/low_mean", "kl", "completion_length", "reward_std", "judge"}


def test_rloo_round_from_a_pairwise_judge_uses_each_samples_mean_win_probability(tmp_path):
    """A pairwise judge's matrix gives each sample its mean win probability over the others."""
    from pride.online.groups import rloo_advantages, sample_rewards

    m = [[0.0, 2.0, -1.0], [-2.0, 0.0, 0.5], [1.0, -0.5, 0.0]]
    rewards = sample_rewards({"scores": [0, 0, 0], "matrix": m})
    assert rewards == pytest.approx([(sig(2) + sig(-1)) / 2, (sig(-2) + sig(0.5)) / 2, (sig(1) + sig(-0.5)) / 2])
    adv = rloo_advantages(torch.tensor([rewards]), normalize=False)[0].tolist()
    assert adv == pytest.approx([r - (sum(rewards) - r) / 2 for r in rewards], abs=1e-6)  # float32 arithmetic


def write_empty(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# from the command line\n")
    return path


SEMI_KILLER = textwrap.dedent("""
    import os, signal, sys
    import pride.train.policy_gradient as pg
    real = pg.train_groups
    def train_groups(ctx, groups):
        if ctx.run_dir.name == "iteration-3":  # rounds 1 and 2 trained in memory only, round 3 sampled and judged
            os.kill(os.getpid(), signal.SIGKILL)
        return real(ctx, groups)
    pg.train_groups = train_groups
    from pride.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow  # two 3-round runs and a kill: 20 s
def test_semi_online_rounds_in_memory_equal_saved_rounds_and_a_kill_restarts_from_the_last_saved(tmp_path):
    """online.save_every=3 over 3 GRPO rounds: rounds 1 and 2 hand their weights on in memory (no model/),
    and every round's samples and the final weights equal those of a run that saves each round. Killed
    at round 3's training, a re-run restarts from the last saved model (the start): rounds 1 and 2 are
    trained again from their own samples, and the result is the same."""
    from safetensors.torch import load_file

    from pride.cli import main

    common = [str(write_empty(tmp_path)), *online_config(tmp_path, tmp_path / "x"), "online.objective=grpo",
              "online.iterations=3", "train.learning_rate=1e-3"]
    assert main(["online", *common, f"output_dir={tmp_path / 'saved'}"]) == 0
    (tmp_path / "killer.py").write_text(SEMI_KILLER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    args = ["online", *common, "online.save_every=3", f"output_dir={tmp_path / 'semi'}"]
    killed = subprocess.run([sys.executable, str(tmp_path / "killer.py"), *args], capture_output=True, text=True,
                            env=env)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not any((tmp_path / "semi" / f"iteration-{n}" / "model").exists() for n in (1, 2, 3))
    resumed = subprocess.run([sys.executable, "-m", "pride", *args], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for n in (1, 2, 3):
        a, b = (tmp_path / run / f"iteration-{n}" for run in ("saved", "semi"))
        assert (a / "generations.jsonl").read_text() == (b / "generations.jsonl").read_text(), n
        assert (a / "groups.jsonl").read_text() == (b / "groups.jsonl").read_text(), n
        assert json.loads((b / "iteration.json").read_text())["saved"] == (n == 3)
        assert (b / "model").exists() == (n == 3)
    first, second = (load_file(str(tmp_path / run / "iteration-3" / "model" / "model.safetensors"))
                     for run in ("saved", "semi"))
    assert all(torch.equal(first[k], second[k]) for k in first)  # the same code on the same CPU: exact


def test_a_round_without_pairs_says_which_of_three_causes_it_was():
    """Every sample empty (naming the sampler), a judge that never gave a verdict (naming its URL), or
    answers that really tied: three lines, not one advice for all."""
    from pride.online.loop import no_pairs

    s = OnlineSettings(samples_per_prompt=2, judge=JudgeSettings(type="llm", url="http://127.0.0.1:9/v1", model="j"))
    empty = [{"responses": ["", ""]}, {"responses": ["", ""]}]
    assert no_pairs(empty, [{"scores": [0, 0]}] * 2, s, ["http://127.0.0.1:8/v1"]).startswith(
        "every sample came back empty (http://127.0.0.1:8/v1 answered '' to all 2 prompts x 2)")
    said = [{"responses": ["a", "b"]}]
    undecided = [{"scores": [0.0, 0.0], "verdicts": [[None, None], [None, None]]}]
    assert no_pairs(said, undecided, s, None).startswith("the judge at http://127.0.0.1:9/v1 gave no verdict")
    tied = [{"scores": [0.0, 0.0], "verdicts": [[None, 0.0], [0.0, None]]}]
    assert no_pairs(said, tied, s, None).startswith("the answers of every prompt tied or were identical")


def test_a_judge_module_edited_redoes_the_rounds_it_judged_and_rounds_evaluate_eval_sources(tmp_path):
    """A function judge's source file is in the round's identity (as a data file is): edited, the rounds
    it judged are redone; a round with data.eval_sources and an eval cadence evaluates them."""
    from pride.config import load_config
    from pride.online.loop import run_online

    pairs = write_jsonl(tmp_path / "held.jsonl", [{"prompt": f"Say {w}", "chosen": w, "rejected": w[::-1]}
                                                  for w in ("alpha", "beta", "gamma")])
    judge = tmp_path / "judge_edited_later.py"  # a name no other test's tmp_path has on sys.path
    judge.write_text(RULE_JUDGE)
    args = online_config(tmp_path, tmp_path / "run", "online.iterations=1", f"data.eval_sources.0.path={pairs}",
                         "train.eval_steps=1", "online.judge.function=judge_edited_later:judge")
    first = run_online(load_config(None, args))
    metrics = [json.loads(x) for x in (tmp_path / "run" / "iteration-1" / "metrics.jsonl").read_text().splitlines()]
    assert metrics and all("eval/loss" in m for m in metrics)
    assert run_online(load_config(None, args)) == first  # unchanged: skipped
    judge.write_text(judge.read_text() + "# edited\n")
    again = run_online(load_config(None, args))
    assert again[0]["identity"] != first[0]["identity"]
