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
    assert grads.keys() == trl_grads.keys() and "score.weight" in grads
    for name in grads:
        diff = (grads[name] - trl_grads[name]).abs().max().item()
        scale = trl_grads[name].abs().max().item()
        assert diff <= 1e-6 + 1e-4 * scale, (name, diff, scale)


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
