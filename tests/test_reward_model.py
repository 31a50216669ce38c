"""Reward models (issue 36): `pride rm` equals TRL's RewardTrainer, its model/ loads with
AutoModelForSequenceClassification, and a judge scores a conversation exactly as training did.

Parity tolerances as the DPO parity tests (tests/test_trl_parity.py): loss 1e-5, gradients per
tensor max |difference| <= 1e-6 + 1e-4 * max |gradient|. TRL pads each conversation into its own
row and pools by the pad token; pride packs the pair's conversations into one padding-free row
and reads each at its last token: the same terms, summed in another fp32 order.
"""

import copy
import json

import pytest
import torch

from pride.cli import main
from pride.config import ModelSettings, RewardSettings
from pride.data.packing import collate
from pride.data.rows import PreferencePair
from pride.models import load_model_and_tokenizer
from pride.scores import SequenceScores, conversation_ids
from pride.train.reward import RewardObjective, tokenize_reward_pairs
from tests.conftest import write_jsonl
from tests.parity import assert_same_gradients

ROWS = [("What is 2+2?", "4", "5", 1.0), ("Name a colour.", "Blue, like the sky.", "Loud.", 0.5),
        ("Say hi in French.", "Bonjour !", "Hello", 2.0), ("Capital of Italy?", "Rome.", "Milan is the capital.", 0.0)]


@pytest.fixture(scope="module")
def rm():
    model, tok, fmt = load_model_and_tokenizer(ModelSettings(path="tiny:llama"), seed=0, head="score")
    with torch.no_grad():  # a head away from 0, so rewards differ and the margin term matters
        model.score.weight.mul_(20)
    return model, tok, fmt


def trl_loss_and_grads(rm, tmp_path, margin: bool, center: float | None):
    trl = pytest.importorskip("trl")
    from accelerate.state import AcceleratorState, PartialState
    from datasets import Dataset

    model, tok, _ = rm
    rows = [{"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}], **({"margin": m} if margin else {})}
            for p, c, r, m in ROWS]
    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    args = trl.RewardConfig(output_dir=str(tmp_path), per_device_train_batch_size=len(ROWS), report_to="none",
                            use_cpu=True, bf16=False, fp16=False, center_rewards_coefficient=center)
    trainer = trl.RewardTrainer(model=copy.deepcopy(model), args=args, train_dataset=Dataset.from_list(rows),
                                processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(ROWS))])
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    tokens = [(e["chosen_ids"], e["rejected_ids"]) for e in trainer.train_dataset]
    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    return loss.detach(), grads, tokens


@pytest.mark.parametrize("margin,center", [(False, None), (True, None), (True, 0.01), (False, 0.5)])
def test_loss_and_gradients_match_trl_reward_trainer(rm, tmp_path, margin, center):
    model, tok, fmt = rm
    trl_loss, trl_grads, trl_tokens = trl_loss_and_grads(rm, tmp_path, margin, center)
    pairs = [PreferencePair([{"role": "user", "content": p}], c, r, margin=m if margin else None)
             for p, c, r, m in ROWS]
    settings = RewardSettings(center_rewards_coefficient=center)
    rows, _ = tokenize_reward_pairs(pairs, fmt, settings)
    # the same tokens: the whole conversation through the chat template, as TRL renders it
    assert [(row[0].input_ids, row[1].input_ids) for row in rows] == [(list(c), list(r)) for c, r in trl_tokens]
    ours = copy.deepcopy(model)
    ours.train()
    loss_sum, metrics = RewardObjective(settings)(SequenceScores(ours), collate(rows, tok.pad_token_id,
                                                                                 layout="repack"))
    loss = loss_sum / len(rows)
    loss.backward()
    torch.testing.assert_close(loss.detach(), trl_loss, atol=1e-5, rtol=1e-5)
    grads = {n: p.grad for n, p in ours.named_parameters() if p.grad is not None}
    assert "score.weight" in grads
    assert_same_gradients(grads, trl_grads)


def test_scores_are_read_at_the_last_token_whatever_the_padding(rm):
    """pride's pooling equals transformers' own (rightmost non-pad token) on right- and left-padded
    batches, and does not depend on the pad token: a conversation ending in the pad token id is
    still read at its last token (where transformers would read the token before)."""
    from pride.scores import score_conversations

    model, tok, fmt = rm
    ids = [conversation_ids(fmt, [{"role": "user", "content": p}], c, 1024, "left")[0] for p, c, _, _ in ROWS]
    ours = score_conversations(model, ids, tok.pad_token_id, 4, "cpu")
    width = max(map(len, ids))
    for side in ("right", "left"):
        pad = [[tok.pad_token_id] * (width - len(x)) for x in ids]
        batch = torch.tensor([x + p if side == "right" else p + x for x, p in zip(ids, pad)])
        mask = torch.tensor([[1] * len(x) + [0] * len(p) if side == "right" else [0] * len(p) + [1] * len(x)
                             for x, p in zip(ids, pad)])
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            theirs = model(input_ids=batch, attention_mask=mask, position_ids=position_ids).logits[:, 0]
        # one sequence per row vs packed rows: fp32 summation order only
        torch.testing.assert_close(torch.tensor(ours), theirs, atol=1e-5, rtol=1e-5)
    alone = score_conversations(model, [ids[0]], tok.pad_token_id, 1, "cpu")
    ends_in_pad = score_conversations(model, [ids[0]], ids[0][-1], 1, "cpu")
    assert alone == ends_in_pad


def preference_file(tmp_path, n=8):
    rows = [{"prompt": f"Repeat the word w{i}.", "chosen": f"w{i}", "rejected": f"something else {i}"}
            for i in range(n)]
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


def test_pride_rm_trains_and_its_model_loads_as_a_sequence_classifier(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    data = preference_file(tmp_path)
    assert main(["rm", "examples/configs/rm.yaml", "model.path=tiny:llama", f"data.sources.0.path={data}",
                 "data.sources.0.columns={}", "data.eval_fraction=0.25", "train.max_steps=3",
                 "train.eval_strategy=epoch", f"output_dir={tmp_path / 'run'}"]) == 0
    out = tmp_path / "run" / "model"
    model = AutoModelForSequenceClassification.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tok.pad_token_id
    assert (tok.model_max_length, tok.truncation_side) == (1024, "left")
    assert tok.chat_template  # the template it was trained with
    last = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"accuracy", "margin", "rewards/mean", "rewards/std", "eval/accuracy"} <= set().union(*last)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["data"]["eval_pairs"] == 2


def test_the_judge_scores_as_training_did_on_the_side_it_was_trained(tmp_path, rm):
    """A reward model trained with truncation on the left: the judge reads the saved side and
    length and scores a long conversation exactly as the training forward did (not as a judge
    cutting on transformers' default right side would)."""
    from pride.config import JudgeSettings
    from pride.online.judges import make_judge
    from pride.scores import score_conversations

    data = preference_file(tmp_path)
    assert main(["rm", "examples/configs/rm.yaml", "model.path=tiny:llama", f"data.sources.0.path={data}",
                 "data.sources.0.columns={}", "train.max_steps=1", "reward.max_length=24",
                 f"output_dir={tmp_path / 'run'}"]) == 0
    out = tmp_path / "run" / "model"
    judge = make_judge(JudgeSettings(type="reward_model", path=str(out)), "cpu")
    prompt = [{"role": "user", "content": "Please repeat this long sentence back to me, word for word."}]
    answers = ["Please repeat this long sentence back to me, word for word.", "No."]
    judged = judge.judge([prompt], [answers])[0].scores
    _, tok, fmt = rm
    full = [fmt.encode(prompt + [{"role": "assistant", "content": a}]).ids for a in answers]
    assert all(len(x) > 24 for x in full)
    trained = [row[0].input_ids for row in tokenize_reward_pairs(
        [PreferencePair(prompt, answers[0], answers[1])], fmt, RewardSettings(max_length=24))[0]]
    assert trained[0] == full[0][-24:]  # training kept the end
    model = judge.model
    assert judged == score_conversations(model, [x[-24:] for x in full], tok.pad_token_id, 16, "cpu")
    assert judged != score_conversations(model, [x[:24] for x in full], tok.pad_token_id, 16, "cpu")


def rewardbench_official():
    """rewardbench 0.1.4's own `calculate_scores_per_section`, `EXAMPLE_COUNTS` and `SUBSET_MAPPING`,
    from its wheel (fetched once from PyPI into .cache/). The package itself cannot be imported
    here: it pins transformers 4.51 and imports model code transformers 5 no longer has."""
    import ast
    import os
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    from filelock import FileLock

    cache = Path(os.environ.get("PRIDE_TEST_CACHE", Path(__file__).resolve().parents[1] / ".cache")) / "rewardbench"
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / "lock")):
        wheels = list(cache.glob("rewardbench-0.1.4-*.whl"))
        if not wheels:
            got = subprocess.run([sys.executable, "-m", "pip", "download", "rewardbench==0.1.4", "--no-deps",
                                  "-d", str(cache)], capture_output=True, text=True)
            if got.returncode != 0:
                pytest.skip(f"rewardbench's wheel could not be fetched from PyPI: {got.stderr[-300:]}")
            wheels = list(cache.glob("rewardbench-0.1.4-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        constants, utils = (z.read(f"rewardbench/{name}.py").decode() for name in ("constants", "utils"))
    space: dict = {}
    exec(compile(constants, "rewardbench/constants.py", "exec"), space)  # plain dictionaries
    fn = next(n for n in ast.parse(utils).body if getattr(n, "name", "") == "calculate_scores_per_section")
    exec(compile(ast.Module([fn], []), "rewardbench/utils.py", "exec"), space)
    return space["calculate_scores_per_section"], space["EXAMPLE_COUNTS"], space["SUBSET_MAPPING"]


def test_rewardbench_sections_equal_the_packages_own_function():
    import random

    from pride.eval import reward_accuracy

    theirs, counts, mapping = rewardbench_official()
    assert reward_accuracy.EXAMPLE_COUNTS == counts and reward_accuracy.SUBSET_MAPPING == mapping
    rng = random.Random(0)
    for _ in range(50):  # some subsets absent, as on a partial local copy
        per_subset = {s: rng.random() for s in counts if rng.random() < 0.7}
        assert reward_accuracy.section_scores(per_subset) == theirs(counts, mapping, per_subset)


def test_pride_eval_reward_accuracy_per_source_subset_and_section(tmp_path):
    """pride eval of a trained reward model: per-file and overall accuracy with intervals, and on
    rows with RewardBench subsets, the sections as the package computes them from per-subset
    accuracies (recomputed here from the judge's own scores)."""
    from pride.config import JudgeSettings
    from pride.online.judges import make_judge

    data = preference_file(tmp_path)
    assert main(["rm", "examples/configs/rm.yaml", "model.path=tiny:llama", f"data.sources.0.path={data}",
                 "data.sources.0.columns={}", "train.max_steps=2", f"output_dir={tmp_path / 'run'}"]) == 0
    rows = [{"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": "No." * (i % 3 + 1),
             "subset": ["alpacaeval-easy", "mt-bench-hard", "donotanswer", "hep-go"][i % 4]} for i in range(16)]
    bench = write_jsonl(tmp_path / "bench.jsonl", rows)
    plain = write_jsonl(tmp_path / "plain.jsonl", [{k: v for k, v in r.items() if k != "subset"} for r in rows[:6]])
    cfg = tmp_path / "e.yaml"
    cfg.write_text(f"model: {{path: {tmp_path / 'run' / 'model'}}}\neval:\n  benchmarks: [reward_accuracy]\n"
                   f"  reward_sources: [{{path: {bench}}}, {{path: {plain}}}]\n  output_dir: {tmp_path / 'out'}\n")
    assert main(["eval", str(cfg)]) == 0
    (result,) = json.loads((tmp_path / "out" / "scores.json").read_text())["run"]["reward_accuracy"]["runs"]
    judge = make_judge(JudgeSettings(type="reward_model", path=str(tmp_path / "run" / "model")), "cpu")
    right = [int(s[0] > s[1]) for s in (j.scores for j in judge.judge(
        [[{"role": "user", "content": r["prompt"]}] for r in rows], [[r["chosen"], r["rejected"]] for r in rows]))]
    by_subset = {}
    for r, ok in zip(rows, right):
        by_subset.setdefault(r["subset"], []).append(ok)
    per_subset = {s: sum(v) / len(v) for s, v in by_subset.items()}
    # counts of the same comparisons, times 100 on both sides: exact
    assert result["subsets"] == pytest.approx({k: v * 100 for k, v in per_subset.items()}, abs=0)
    theirs, counts, mapping = rewardbench_official()
    expected = theirs(counts, mapping, per_subset)  # fractions, and 0 for a section with no subset scored
    scored = [k for k, v in mapping.items() if set(v) & set(per_subset)]
    assert {k: result["rewardbench"][k] for k in scored} == {k: expected[k] * 100 for k in scored}
    assert set(scored) == set(result["rewardbench"]["sections_scored"]) and "Chat Hard" in scored
    assert "subsets_not_in_sections" not in result
    assert result["sources"][str(bench)]["accuracy"] == 100 * sum(right) / 16
    assert result["sources"][str(plain)]["accuracy"] == 100 * sum(right[:6]) / 6
    assert result["accuracy"] == 100 * (sum(right) + sum(right[:6])) / 22 and result["pairs"] == 22
    assert result["ci_lower"] <= result["accuracy"] <= result["ci_upper"]


def test_reward_accuracy_takes_fractions_and_max_questions_and_says_what_its_sections_leave_out(tmp_path, capsys):
    """A source's fraction and eval.max_questions choose the pairs scored; a subset RewardBench does
    not know is named and warned about, and a section with no row is left out, not shown as 0."""
    data = preference_file(tmp_path)
    assert main(["rm", "examples/configs/rm.yaml", "model.path=tiny:llama", f"data.sources.0.path={data}",
                 "data.sources.0.columns={}", "train.max_steps=1", f"output_dir={tmp_path / 'run'}"]) == 0
    rows = [{"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": "No.",
             "subset": ["alpacaeval-easy", "my-own"][i % 2]} for i in range(20)]
    bench = write_jsonl(tmp_path / "bench.jsonl", rows)
    other = write_jsonl(tmp_path / "other.jsonl", rows[:10])
    for extra, pairs in (([], {str(bench): 10, str(other): 10}), (["eval.max_questions=3"], {str(bench): 3, str(other): 3})):
        cfg = tmp_path / "e.yaml"
        cfg.write_text(f"model: {{path: {tmp_path / 'run' / 'model'}}}\neval:\n  benchmarks: [reward_accuracy]\n"
                       f"  reward_sources: [{{path: {bench}, fraction: 0.5}}, {{path: {other}}}]\n"
                       f"  output_dir: {tmp_path / 'out'}\n")
        assert main(["eval", str(cfg), *extra]) == 0
        (result,) = json.loads((tmp_path / "out" / "scores.json").read_text())["run"]["reward_accuracy"]["runs"]
        assert {k: v["pairs"] for k, v in result["sources"].items()} == pairs
        assert result["subsets_not_in_sections"] == ["my-own"]
        assert result["rewardbench"]["sections_scored"] == ["Chat"] and "Safety" not in result["rewardbench"]
        assert result["rewardbench"]["Chat"] == result["subsets"]["alpacaeval-easy"]  # one subset: its own, in %
    assert "subsets RewardBench does not know are left out of its section scores: my-own" in capsys.readouterr().err


def test_online_rounds_judged_by_a_trained_reward_model(tmp_path):
    """pride rm, then 2 online rounds judged by its model/: each round's scores are that model's."""
    from pride.config import JudgeSettings
    from pride.online.judges import make_judge

    data = preference_file(tmp_path)
    assert main(["rm", "examples/configs/rm.yaml", "model.path=tiny:llama", f"data.sources.0.path={data}",
                 "data.sources.0.columns={}", "train.max_steps=2", f"output_dir={tmp_path / 'rm'}"]) == 0
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Repeat w{i}."} for i in range(4)])
    rm_dir = tmp_path / "rm" / "model"
    assert main(["online", "examples/configs/online.yaml", "model.path=tiny:llama", f"data.sources.0.path={prompts}",
                 "online.iterations=2", "online.samples_per_prompt=2", "online.max_new_tokens=6",
                 "online.judge.type=reward_model", f"online.judge.path={rm_dir}", "online.judge.function=null",
                 "train.micro_batch_size=2", f"output_dir={tmp_path / 'online'}"]) == 0
    judge = make_judge(JudgeSettings(type="reward_model", path=str(rm_dir)), "cpu")
    for it in (1, 2):
        round_dir = tmp_path / "online" / f"iteration-{it}"
        generations = [json.loads(x) for x in (round_dir / "generations.jsonl").read_text().splitlines()]
        scored = [json.loads(x) for x in (round_dir / "scores.jsonl").read_text().splitlines()]
        assert len(generations) == 4 and (round_dir / "model" / "model.safetensors").exists()
        by_id = {g["prompt_id"]: g for g in generations}
        for s in scored:
            g = by_id[s["prompt_id"]]
            # the round scored every prompt's answers in one batch, here one prompt at a time: other rows
            # are packed beside them, so fp32 sums differ in the last bits (1e-5 on scores near 0.1)
            assert s["scores"] == pytest.approx(judge.judge([g["prompt"]], [g["responses"]])[0].scores, abs=1e-5)


def test_a_reward_model_with_another_tokenizer_is_refused(tmp_path, capsys):
    from pride.tiny import tiny_tokenizer

    data = preference_file(tmp_path)
    assert main(["rm", "examples/configs/rm.yaml", "model.path=tiny:llama", f"data.sources.0.path={data}",
                 "data.sources.0.columns={}", "train.max_steps=1", f"output_dir={tmp_path / 'rm'}"]) == 0
    rm_dir = tmp_path / "rm" / "model"
    other = tiny_tokenizer("qwen2")
    other.chat_template = json.loads((rm_dir / "tokenizer_config.json").read_text()).get("chat_template") or \
        (rm_dir / "chat_template.jinja").read_text()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (rm_dir / name).unlink(missing_ok=True)
    other.save_pretrained(rm_dir)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Hi"}])
    capsys.readouterr()
    assert main(["online", "examples/configs/online.yaml", "model.path=tiny:llama", f"data.sources.0.path={prompts}",
                 "online.judge.type=reward_model", f"online.judge.path={rm_dir}", "online.judge.function=null",
                 f"output_dir={tmp_path / 'online'}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "its tokenizer is not the one this reward model was trained with" in err
    assert not (tmp_path / "online" / "iteration-1" / "generations.jsonl").exists()


def test_a_lora_reward_model_trains_its_head_and_saves_merged(tmp_path):
    """LoRA on a reward model: the score head trains in full (peft's SEQ_CLS keeps it), the adapter is
    saved beside the merged model, which AutoModelForSequenceClassification loads."""
    from transformers import AutoModelForSequenceClassification

    data = preference_file(tmp_path)
    assert main(["rm", "examples/configs/rm.yaml", "model.path=tiny:llama", f"data.sources.0.path={data}",
                 "data.sources.0.columns={}", "train.max_steps=3", "train.learning_rate=1e-2", "model.lora={r: 4}",
                 f"output_dir={tmp_path / 'run'}"]) == 0
    out = tmp_path / "run" / "model"
    trained = AutoModelForSequenceClassification.from_pretrained(out)
    start, _, _ = load_model_and_tokenizer(ModelSettings(path="tiny:llama"), seed=0, head="score")
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert not torch.equal(trained.score.weight, start.score.weight)  # the head moved


def test_data_inspect_of_a_reward_model_config_exports_what_the_reward_model_trains_on(tmp_path):
    """A config with a reward section (pride rm's) is inspected as the reward model trains: whole
    conversations cut to reward.max_length on its side; --stage dpo shows the pairs DPO would train."""
    from pride.config import load_config
    from pride.models import load_chat
    from pride.data import load_rows

    data = preference_file(tmp_path)
    out = tmp_path / "rows.jsonl"
    base = ["model.path=tiny:llama", f"data.sources.0.path={data}", "data.sources.0.columns={}",
            "reward.max_length=24", "reward.truncation_side=left"]
    assert main(["data", "inspect", "examples/configs/rm.yaml", *base, "--export", str(out)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    cfg = load_config("examples/configs/rm.yaml", base)
    rows = load_rows(cfg.data, want="preference", seed=cfg.seed).train
    expected, _ = tokenize_reward_pairs(rows, load_chat(cfg.model)[1], cfg.reward)
    assert lines == [{"chosen_ids": c.input_ids, "rejected_ids": r.input_ids} for c, r in expected]
    assert max(len(x["chosen_ids"]) for x in lines) == 24  # cut as the reward model is
    assert main(["data", "inspect", "examples/configs/rm.yaml", *base, "--stage", "dpo", "--export", str(out)]) == 0
    assert set(json.loads(out.read_text().splitlines()[0])) == {"prompt_ids", "chosen_ids", "rejected_ids"}


def test_an_eval_stage_from_an_rm_stage_scores_the_reward_model(tmp_path):
    """Evaluating a reward model is what reward_accuracy is for: `from: rm` is allowed for an eval stage
    of that benchmark (any other stage from an rm stage is still refused)."""
    import yaml

    data = preference_file(tmp_path)
    recipe = {"model": {"path": "tiny:llama"}, "output_dir": str(tmp_path / "out"), "train": {"max_steps": 1},
              "stages": [{"name": "rm", "type": "rm", "data": {"sources": [{"path": str(data)}]}},
                         {"name": "acc", "type": "eval", "from": "rm",
                          "eval": {"benchmarks": ["reward_accuracy"], "reward_sources": [{"path": str(data)}]}}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", str(tmp_path / "r.yaml")]) == 0
    scores = json.loads((tmp_path / "out" / "acc" / "scores.json").read_text())
    (name,) = scores
    assert scores[name]["reward_accuracy"]["runs"][0]["pairs"] > 0
    recipe["stages"][1] = {"name": "dpo", "type": "dpo", "from": "rm", "data": {"sources": [{"path": str(data)}]}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", str(tmp_path / "r.yaml")]) == 2
