"""pride kto: unpaired rows, TRL's KTOTrainer loss and gradients, and a KL term formed over the global batch.

Parity tolerances are the DPO tests' (tests/test_trl_parity.py): loss 1e-5, gradients per tensor
1e-6 + 1e-4 x max |gradient|; the two sides sum the same fp32 terms in another order (TRL pads each
row, pride packs them).
"""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch

from pride.config import KtoSettings, ModelSettings, load_config
from pride.data import LabeledCompletion, PreferencePair, load_rows, unpair
from pride.data.packing import collate
from pride.errors import PrideError
from pride.logps import TokenLogps
from pride.models import load_model_and_tokenizer
from pride.reference import compute_pair_logps
from pride.train.unpaired import MismatchedPairs, UnpairedObjective, partners, run_unpaired, tokenize_unpaired
from tests.parity import assert_same_gradients

ROWS = [("What is 2+2?", "4", True), ("Name a colour.", "Loud.", False), ("Say hi in French.", "Bonjour !", True),
        ("Capital of Italy?", "Milan is the capital.", False), ("Capital of Italy?", "Rome.", True),
        ("A fruit?", "An apple, red and round.", True)]


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def feedback(n: int, seed: int = 0) -> list[dict]:
    import random

    rng = random.Random(seed)
    words = "the cat sat on a mat while birds sang songs of rain and sun over quiet hills".split()
    return [{"prompt": f"Question {i}: {' '.join(rng.choices(words, k=rng.randint(2, 8)))}?",
             "completion": " ".join(rng.choices(words, k=rng.randint(1, 12))), "label": rng.random() < 0.6}
            for i in range(n)]


# ---------------------------------------------------------------- rows


def test_labels_parse_and_bad_labels_name_the_row(tmp_path):
    ok = write_rows(tmp_path / "ok.jsonl", [{"prompt": "a", "completion": "b", "label": v}
                                            for v in (True, False, 1, 0, "true", "False")])
    cfg = load_config(None, ["model.path=tiny:llama", f"data.sources.0.path={ok}", "data.shuffle=false"])
    rows = load_rows(cfg.data, want="unpaired", seed=0).train
    assert [r.label for r in rows] == [True, False, True, False, True, False]
    for bad in (2, "yes", 0.5, None):
        path = write_rows(tmp_path / "bad.jsonl", [{"prompt": "a", "completion": "b", "label": True},
                                                   {"prompt": "a", "completion": "b", "label": bad}])
        cfg = load_config(None, ["model.path=tiny:llama", f"data.sources.0.path={path}"])
        with pytest.raises(PrideError, match=r"bad.jsonl line 2: field 'label'"):
            load_rows(cfg.data, want="unpaired", seed=0)


def test_pairs_split_as_trl_unpairs_them():
    """trl.data_utils.unpair_preference_dataset: per map batch (1000 rows) every chosen, then every rejected."""
    from datasets import Dataset
    from trl.data_utils import unpair_preference_dataset

    pairs = [PreferencePair([{"role": "user", "content": f"p{i}"}], f"c{i}", f"r{i}") for i in range(1203)]
    ours = unpair(pairs)
    theirs = unpair_preference_dataset(Dataset.from_list(
        [{"prompt": p.prompt[0]["content"], "chosen": p.chosen, "rejected": p.rejected} for p in pairs]))
    assert [(r.prompt[0]["content"], r.completion, r.label) for r in ours] == \
        [(t["prompt"], t["completion"], t["label"]) for t in theirs]


# ---------------------------------------------------------------- parity with TRL


@pytest.fixture(scope="module")
def setup():
    ref, tok, fmt = load_model_and_tokenizer(ModelSettings(path="tiny:llama"), seed=0)
    policy = copy.deepcopy(ref)
    with torch.no_grad():  # move the policy away from the reference, so rewards and KL are not 0
        g = torch.Generator().manual_seed(1)
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return ref, policy, tok, fmt


def trl_loss_and_grads(setup, tmp_path, loss_type, weights):
    from accelerate.state import AcceleratorState, PartialState
    from datasets import Dataset

    trl = pytest.importorskip("trl")
    ref, policy, tok, fmt = setup
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": p}],
                             "completion": [{"role": "assistant", "content": c}], "label": y} for p, c, y in ROWS])
    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    args = trl.KTOConfig(output_dir=str(tmp_path), loss_type=loss_type, beta=0.1, desirable_weight=weights[0],
                         undesirable_weight=weights[1], per_device_train_batch_size=len(ROWS), report_to="none",
                         use_cpu=True, max_length=None, bf16=False, fp16=False)
    trainer = trl.KTOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(ref), args=args, train_dataset=ds,
                             processing_class=tok)
    examples = [trainer.train_dataset[i] for i in range(len(ROWS))]
    batch = trainer.data_collator(examples)
    model = trainer.model
    model.train()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    kl = trainer._metrics["train"]["kl"][-1]
    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    return loss.detach(), grads, examples, kl


@pytest.mark.parametrize("loss_type,weights", [("kto", (1.3, 0.8)), ("apo_zero_unpaired", (0.7, 1.2))])
def test_loss_and_gradients_match_kto_trainer(setup, tmp_path, loss_type, weights):
    from accelerate import Accelerator

    ref, policy, tok, fmt = setup
    trl_loss, trl_grads, trl_rows, trl_kl = trl_loss_and_grads(setup, tmp_path, loss_type, weights)
    items = [LabeledCompletion([{"role": "user", "content": p}], c, y, f"row {i}") for i, (p, c, y) in enumerate(ROWS)]
    data = tokenize_unpaired(items, fmt, max_length=1024, max_prompt_length=512)
    assert [(p, c) for p, c in data.ids] == [(list(e["prompt_ids"]), list(e["completion_ids"])) for e in trl_rows]
    examples = [row[0].example for row in data.rows]
    acc = Accelerator(cpu=True)
    pairs = MismatchedPairs([data], max_length=1024)
    kto = loss_type == "kto"
    keys = partners(examples) if kto else [(e, e) for e in examples]
    if kto:  # the mismatched completions are TRL's: row i with the completion of row i-1, the first with the last
        assert [pairs.ids[b][1] for _, b in keys] == [list(e["KL_completion_ids"]) for e in trl_rows]
    ref_lp = compute_pair_logps(acc, ref, pairs.reference_rows(keys), tok.pad_token_id, batch_size=4)
    for row, value in zip(data.rows, ref_lp.chosen.tolist()):
        row[0].ref_logps = value
    pairs.reference = {key: v for key, v in zip(keys, ref_lp.rejected.tolist())}
    settings = KtoSettings(loss_type=loss_type, beta=0.1, desirable_weight=weights[0], undesirable_weight=weights[1])
    objective = UnpairedObjective(settings, pairs if kto else None)
    model = copy.deepcopy(policy)
    model.train()
    wrapper = TokenLogps(model, chunk_size=8)
    everything = list(range(len(data.rows)))

    def batch_for(idx, source):
        return collate([source[i] for i in idx], tok.pad_token_id, layout="repack")

    objective.prepare(acc, wrapper, data.rows, [everything], [(everything, 1.0)], batch_for)
    if kto:
        assert float(objective.z) == pytest.approx(trl_kl, rel=1e-5, abs=1e-6)  # fp32 sums in another order
        assert trl_kl > 0  # the KL term is in play, not clamped away
    loss_sum, _ = objective(wrapper, batch_for(everything, data.rows))
    loss = loss_sum / len(data.rows)
    loss.backward()
    torch.testing.assert_close(loss.detach(), trl_loss, atol=1e-5, rtol=1e-5)
    assert_same_gradients({n: p.grad for n, p in model.named_parameters() if p.grad is not None}, trl_grads)


# ---------------------------------------------------------------- the stage


def kto_args(data, out, *extra):
    return ["model.path=tiny:llama", f"data.sources.0.path={data}", "train.learning_rate=1e-3",
            "train.micro_batch_size=2", "train.global_batch_size=8", "train.max_steps=4", "seed=0",
            "preference.max_length=256", f"output_dir={out}", *extra]


def logged(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_kl_term_is_the_same_on_1_and_2_processes(tmp_path):
    """train.global_batch_size=8, micro-batch 2: 1 process accumulates 4, 2 processes 2 each. KTO's
    mismatched pairs and KL estimate are formed over the step's 8 rows either way, so every step's
    KL and loss agree (relative 1e-5: gloo sums the ranks' values in another order), where TRL's
    per-device estimate would differ."""
    from tests.test_sft import empty_config

    data = write_rows(tmp_path / "feedback.jsonl", feedback(40))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "pride", "kto",
              str(empty_config(tmp_path)), *kto_args(data, tmp_path / "two")]
    two = subprocess.run(launch, capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert two.returncode == 0, two.stderr[-3000:]
    run_unpaired(load_config(None, kto_args(data, tmp_path / "one")))
    one, two_ = logged(tmp_path / "one"), logged(tmp_path / "two")
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["distributed"]["world_size"] == 2
    assert [r["kl"] for r in two_] == pytest.approx([r["kl"] for r in one], rel=1e-5)
    assert [r["loss"] for r in two_] == pytest.approx([r["loss"] for r in one], rel=1e-5)
    assert all(r["kl"] > 0 for r in one[2:])  # in play once the policy moved (step 1 is warmup at lr 0)


def test_kto_stage_on_pairs_writes_metrics_and_plots(tmp_path):
    pairs = [{"prompt": f"q{i} {r['prompt']}", "chosen": r["completion"], "rejected": r["completion"][::-1] or "x"}
             for i, r in enumerate(feedback(12, seed=3))]
    data = write_rows(tmp_path / "pairs.jsonl", pairs)
    summary = run_unpaired(load_config(None, kto_args(data, tmp_path / "run", "data.eval_fraction=0.25",
                                                      "train.eval_steps=2", "kto.undesirable_weight=1.0")))
    assert summary["data"]["desirable"] == summary["data"]["undesirable"] == 9  # 9 training pairs, split
    lines = logged(tmp_path / "run")
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected", "kl",
            "eval/kl", "eval/loss"} <= set(lines[-1])
    assert (tmp_path / "run" / "curves.png").is_file()


def test_only_desirable_rows_and_one_row_steps_are_refused(tmp_path):
    rows = [dict(r, label=True) for r in feedback(8)]
    data = write_rows(tmp_path / "good.jsonl", rows)
    with pytest.raises(PrideError, match="every training row is desirable"):
        run_unpaired(load_config(None, kto_args(data, tmp_path / "a")))
    data = write_rows(tmp_path / "mixed.jsonl", feedback(8))
    with pytest.raises(PrideError, match="global_batch_size to 2"):
        run_unpaired(load_config(None, kto_args(data, tmp_path / "b", "train.global_batch_size=1",
                                                "train.micro_batch_size=1")))


# ---------------------------------------------------------------- online KTO


ROUND_KILLER = """
import os, signal, sys
import pride.train.loop as loop
real = loop.save_checkpoint
def save_checkpoint(acc, run_dir, step, *args, **kwargs):
    out = real(acc, run_dir, step, *args, **kwargs)
    if step == 6:  # the round's second checkpoint is on disk; its training is half done
        os.kill(os.getpid(), signal.SIGKILL)
    return out
loop.save_checkpoint = save_checkpoint
from pride.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_online_kto_round_labels_by_group_mean_and_resumes_after_kill(tmp_path):
    """One round of online.objective=kto: samples above their prompt's mean score are desirable, below
    undesirable, at the mean dropped and counted. Killed with SIGKILL after its second checkpoint, the
    re-run resumes from it and ends with the weights of an uninterrupted run."""
    from safetensors.torch import load_file

    from pride.cli import main
    from pride.online.groups import kto_labels
    from tests.test_online import online_config

    assert kto_labels([1.0, 3.0, 2.0, 2.0]) == [False, True, None, None]
    (tmp_path / "empty.yaml").write_text("# from the command line\n")
    common = [str(tmp_path / "empty.yaml"), *online_config(tmp_path, tmp_path / "x"), "online.objective=kto",
              "online.iterations=1", "train.save_steps=3", "train.learning_rate=1e-3"]
    assert main(["online", *common, f"output_dir={tmp_path / 'straight'}"]) == 0
    (tmp_path / "killer.py").write_text(ROUND_KILLER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    args = ["online", *common, f"output_dir={tmp_path / 'run'}"]
    killed = subprocess.run([sys.executable, str(tmp_path / "killer.py"), *args], capture_output=True, text=True,
                            env=env)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (tmp_path / "run" / "iteration-1" / "model").exists()
    resumed = subprocess.run([sys.executable, "-m", "pride", *args], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr and "checkpoint-6" in resumed.stderr
    a, b = (tmp_path / run / "iteration-1" for run in ("straight", "run"))
    feedback_ = [json.loads(x) for x in (b / "feedback.jsonl").read_text().splitlines()]
    assert (a / "feedback.jsonl").read_text() == (b / "feedback.jsonl").read_text()
    record = json.loads((b / "iteration.json").read_text())
    scores = [json.loads(x)["scores"] for x in (b / "scores.jsonl").read_text().splitlines()]
    labels = [kto_labels(s) for s in scores]
    assert record["dropped_tie"] == sum(x is None for g in labels for x in g) > 0
    assert [(r["prompt_id"], r["sample"], r["label"]) for r in feedback_] == \
        [(f"p{i}", j, x) for i, g in enumerate(labels) for j, x in enumerate(g) if x is not None]
    assert record["desirable"] + record["undesirable"] == len(feedback_)
    first, second = (load_file(str(d / "model" / "model.safetensors")) for d in (a, b))
    for k in first:  # resume restores the exact weights, optimizer and data position: rounding only
        torch.testing.assert_close(first[k], second[k], atol=1e-6, rtol=0, msg=k)


def test_data_inspect_shows_labels_and_a_recipe_runs_a_kto_stage(tmp_path):
    from pride.data.inspect import inspect
    from pride.recipe import run_recipe

    data = write_rows(tmp_path / "f.jsonl", feedback(10, seed=5))
    cfg = load_config(None, ["model.path=tiny:llama", f"data.sources.0.path={data}", "kto.beta=0.2"])
    counts = inspect(cfg, n=1, export=str(tmp_path / "rows.jsonl"), color="never")
    labels = [json.loads(x)["label"] for x in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert counts["desirable"] == sum(labels) and counts["undesirable"] == len(labels) - sum(labels) == 10 - sum(labels)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {{path: 'tiny:llama'}}\noutput_dir: {tmp_path / 'out'}\nseed: 0\nstages:\n"
                      f"  - {{name: unpaired, type: kto, data: {{sources: [{{path: {data}}}]}}, "
                      f"train: {{max_steps: 2, micro_batch_size: 4}}, kto: {{undesirable_weight: 1.3}}}}\n")
    run_recipe(recipe)
    assert (tmp_path / "out" / "unpaired" / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("good,bad,weights,warns", [(7, 5, (1.0, 1.0), True), (7, 5, (1.0, 1.2), False),
                                                    (3, 9, (2.5, 1.0), True), (3, 9, (3.2, 1.0), False),
                                                    (9, 3, (1.0, 2.0), True)])
def test_weight_warning_is_trls(setup, tmp_path, caplog, good, bad, weights, warns):
    """pride warns exactly when KTOTrainer warns (its `_prepare_dataset`, the KTO paper's eq. 8),
    recommending the same ranges: TRL's own code runs on the same label counts and weights."""
    import io
    import logging
    import re

    from accelerate.state import AcceleratorState, PartialState
    from datasets import Dataset
    from rich.console import Console

    from pride.train.unpaired import check_labels

    trl = pytest.importorskip("trl")
    ref, policy, tok, fmt = setup
    rows = [{"prompt": "q", "completion": "a", "label": i < good} for i in range(good + bad)]
    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    args = trl.KTOConfig(output_dir=str(tmp_path), desirable_weight=weights[0], undesirable_weight=weights[1],
                         per_device_train_batch_size=2, report_to="none", use_cpu=True, bf16=False, fp16=False)
    with caplog.at_level(logging.WARNING, logger="trl.trainer.kto_trainer"):
        trl.KTOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(ref), args=args,
                       train_dataset=Dataset.from_list(rows), processing_class=tok)
    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    theirs = [r.getMessage() for r in caplog.records if "desirable_weight in" in r.getMessage()]
    out = io.StringIO()
    check_labels({"desirable": good, "undesirable": bad},
                 KtoSettings(desirable_weight=weights[0], undesirable_weight=weights[1]),
                 Console(file=out, width=400))
    ours = [line for line in out.getvalue().splitlines() if "desirable_weight in" in line]
    assert len(ours) == len(theirs) == int(warns)
    ranges = r"desirable_weight in \[([^\]]+)\].*undesirable_weight in \[([^\]]+)\]"
    if theirs:
        assert re.search(ranges, ours[0]).groups() == re.search(ranges, theirs[0]).groups()
