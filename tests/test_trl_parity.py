"""pride's DPO losses and gradients == TRL's DPOTrainer on the same tiny model and batch.

Loss: 1e-5. Gradients: per parameter tensor, max |difference| <= 1e-6 + 1e-4 * max |gradient|
(the two sides sum the same terms in a different order). TRL is a test-only dependency;
these tests skip cleanly when it is not installed.
"""

import copy

import pytest
import torch

trl = pytest.importorskip("trl")

from pride.config import ModelSettings, PreferenceSettings  # noqa: E402
from pride.data.preference import pair_samples  # noqa: E402
from pride.logps import TokenLogps  # noqa: E402
from pride.models import load_model_and_tokenizer  # noqa: E402
from pride.reference import attach, compute_pair_logps  # noqa: E402
from pride.train.preference import PreferenceObjective  # noqa: E402
from tests.parity import assert_same_gradients  # noqa: E402

TRL_LOSSES = ["sigmoid", "hinge", "ipo", "robust", "bco_pair", "nca_pair", "sppo_hard", "apo_zero", "apo_down"]
ROWS = [("What is 2+2?", "4", "5"), ("Name a colour.", "Blue, like the sky.", "Loud."),
        ("Say hi in French.", "Bonjour !", "Hello"), ("Capital of Italy?", "Rome.", "Milan is the capital.")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from datasets import Dataset

    ref, tok, fmt = load_model_and_tokenizer(ModelSettings(path="tiny:llama"), seed=0)
    policy = copy.deepcopy(ref)
    with torch.no_grad():  # move the policy away from the reference so the losses are not all at D=0
        g = torch.Generator().manual_seed(1)
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
                             "rejected": [{"role": "assistant", "content": r}]} for p, c, r in ROWS])
    return ref, policy, tok, fmt, ds, tmp_path_factory.mktemp("trl")


def trl_loss_and_grads(setup, loss_type, label_smoothing):
    from accelerate.state import AcceleratorState, PartialState

    ref, policy, tok, fmt, ds, out = setup
    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    args = trl.DPOConfig(output_dir=str(out), loss_type=[loss_type], beta=0.1, label_smoothing=label_smoothing,
                         per_device_train_batch_size=len(ROWS), report_to="none", use_cpu=True, max_length=None,
                         bf16=False, fp16=False)
    trainer = trl.DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(ref), args=args, train_dataset=ds,
                             processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(ROWS))])
    model = trainer.model
    model.train()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    tokens = [(e["prompt_ids"], e["chosen_ids"], e["rejected_ids"]) for e in trainer.train_dataset]
    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    return loss.detach(), grads, tokens


@pytest.mark.parametrize("loss_type", TRL_LOSSES)
def test_loss_and_gradients_match_trl(setup, loss_type):
    from accelerate import Accelerator

    ref, policy, tok, fmt, ds, _ = setup
    label_smoothing = 0.1 if loss_type == "robust" else 0.0
    trl_loss, trl_grads, trl_tokens = trl_loss_and_grads(setup, loss_type, label_smoothing)

    # Same tokens on both sides: pride's own tokenization agrees with TRL's exactly.
    for (p, c, r), (tp, tc, tr) in zip(ROWS, trl_tokens):
        msgs = [{"role": "user", "content": p}]
        assert fmt.encode_prompt(msgs) == list(tp)
        assert fmt.encode_completion(msgs, c) == list(tc) and fmt.encode_completion(msgs, r) == list(tr)

    rows = [pair_samples(list(p), list(c), list(r), example=i) for i, (p, c, r) in enumerate(trl_tokens)]
    acc = Accelerator(cpu=True)
    ref_lp = compute_pair_logps(acc, ref, rows, tok.pad_token_id, batch_size=2)
    settings = PreferenceSettings(loss_type=loss_type, beta=0.1, label_smoothing=label_smoothing)
    attach(rows, ref_lp)
    objective = PreferenceObjective(settings)
    model = copy.deepcopy(policy)
    model.train()
    from pride.data.packing import collate

    loss_sum, _ = objective(TokenLogps(model, chunk_size=8), collate(rows, tok.pad_token_id, layout="repack"))
    loss = loss_sum / len(rows)
    loss.backward()
    # TRL pads and runs each sequence alone, pride packs: fp32 summation order only (as packing's tests)
    torch.testing.assert_close(loss.detach(), trl_loss, atol=1e-5, rtol=1e-5)
    assert_same_gradients({n: p.grad for n, p in model.named_parameters() if p.grad is not None}, trl_grads)
