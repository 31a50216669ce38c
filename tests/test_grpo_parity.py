"""pride's GRPO family == TRL's GRPOTrainer, and RLOO's advantages == RLOOTrainer's, on one model and batch.

TRL runs its own pipeline on pride's token ids: `_generate_and_score_completions` (generation and
the reward call replaced by the fixed completions and rewards) pads them, computes its advantages,
its reference log-probs and its normaliser, and `compute_loss` gives the loss and gradients. pride
tokenizes the same groups (`tokenize_groups`), computes old and reference log-probs with its own
pass (`reference.token_logps`), its advantages (`online.groups`) and its loss through the
objective the loop trains with.

Tolerances are the DPO parity tests': loss 1e-5; gradients per tensor 1e-6 + 1e-4 x max |gradient|.
Both sides sum the same fp32 terms in another order (TRL pads each sequence in its own row; pride
packs them, computes a group's prompt once under a block mask, and gathers the completion positions).
Advantages: 1e-6 (the same float32 operations; only the std's summation order may differ).
"""

import copy

import pytest
import torch

trl = pytest.importorskip("trl")

from accelerate import Accelerator  # noqa: E402

from pride import reference  # noqa: E402
from pride.config import GrpoSettings, ModelSettings  # noqa: E402
from pride.data.packing import collate  # noqa: E402
from pride.models import load_model_and_tokenizer  # noqa: E402
from pride.online.groups import advantages  # noqa: E402
from pride.train.policy_gradient import PolicyGradientObjective, tokenize_groups  # noqa: E402
from tests.parity import assert_same_gradients  # noqa: E402

K = 4
GROUPS = [
    {"prompt": [{"role": "user", "content": "Write the word abc 3 times."}],
     "responses": ["abc abc abc", "abc", "abc abc abc abc abc", ""], "rewards": [1.0, 0.0, 0.5, 0.25]},
    {"prompt": [{"role": "user", "content": "Name a colour."}],
     "responses": ["Blue.", "Blue, like the sky on a clear day.", "Red", "Loud."], "rewards": [0.3, 0.3, 0.9, 0.0]},
]
MAX_COMPLETION = 24


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """The round's starting model (saved: TRL loads its reference from the path), its tokenizer and format."""
    model, tok, fmt = load_model_and_tokenizer(ModelSettings(path="tiny:llama"), seed=0)
    path = tmp_path_factory.mktemp("start")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    rows, _ = tokenize_groups([{**g, "truncated": [False] * K} for g in GROUPS], fmt, 512, 512, "groups")
    return path, model, tok, fmt, rows


def perturb(model):
    """Later steps of a round: the policy has moved away from the one that sampled."""
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def reset_accelerate():
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(True)
    PartialState._reset_state()


def trl_inputs(trainer, rows):
    """TRL's inputs for compute_loss from pride's token ids (each group's samples) and the fixed rewards."""
    samples = [x for row in rows for x in row]
    prompt_ids = [x.input_ids[:len(x.input_ids) - x.n_targets] for x in samples]
    completion_ids = [x.input_ids[len(p):] for x, p in zip(samples, prompt_ids)]
    rewards = torch.tensor([r for g in GROUPS for r in g["rewards"]], dtype=torch.float32).unsqueeze(1)
    trainer._generate = lambda prompts: (prompt_ids, completion_ids, None, ["x"] * len(samples), None, {}, None, None)
    trainer._calculate_rewards = lambda *a: rewards
    examples = [{"prompt": g["prompt"]} for g in GROUPS for _ in range(K)]
    return trainer._generate_and_score_completions(examples)


@pytest.fixture(scope="module")
def trainers(start, tmp_path_factory):
    """GRPOTrainer per sampling temperature (TRL fixes it into its fused LM head when it is built)."""
    from datasets import Dataset

    path, _, tok, _, _ = start
    made = {}

    def get(temperature: float):
        if temperature not in made:
            reset_accelerate()
            args = trl.GRPOConfig(output_dir=str(tmp_path_factory.mktemp("trl")), temperature=temperature,
                                  per_device_train_batch_size=len(GROUPS) * K, num_generations=K,
                                  max_completion_length=MAX_COMPLETION, beta=0.04, report_to="none", use_cpu=True,
                                  bf16=False, fp16=False)
            ds = Dataset.from_list([{"prompt": g["prompt"]} for g in GROUPS])
            made[temperature] = trl.GRPOTrainer(model=str(path), args=args, train_dataset=ds, processing_class=tok,
                                                reward_funcs=lambda completions, **kw: [0.0] * len(completions))
        return made[temperature]

    yield get
    reset_accelerate()


def trl_loss(trainer, rows, settings: GrpoSettings, moved: bool):
    start_state = copy.deepcopy(trainer.model.state_dict())
    trainer.loss_type, trainer.importance_sampling_level = settings.loss_type, settings.importance_sampling_level
    trainer.beta, trainer.scale_rewards = settings.beta, settings.scale_rewards
    trainer.epsilon_low, trainer.epsilon_high = settings.epsilon, settings.epsilon_high or settings.epsilon
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # what Trainer sets per step: one micro-batch, no accumulation
    inputs = trl_inputs(trainer, rows)
    if moved:
        with torch.no_grad():
            ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
            mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
            inputs["old_per_token_logps"] = trainer._get_per_token_logps_and_entropies(
                trainer.model, ids, mask, inputs["completion_ids"].size(1))[0]
        perturb(trainer.model)
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.model.load_state_dict(start_state)
    return loss.detach(), grads, inputs["advantages"]


def pride_loss(start, settings: GrpoSettings, moved: bool, temperature: float, layout: str):
    _, start_model, tok, _, rows = start
    acc = Accelerator(cpu=True)
    old = reference.token_logps(acc, start_model, rows, tok.pad_token_id, batch_size=3, chunk_size=8,
                                temperature=temperature, layout=layout)
    adv, _ = advantages([g["rewards"] for g in GROUPS], "grpo", settings.scale_rewards)
    for x, values in zip([x for row in rows for x in row], old):
        x.old_logps, x.advantage, x.masked = values, adv[x.example][x.seq], False
    model = copy.deepcopy(start_model)
    if moved:
        perturb(model)
    model.train()
    objective = PolicyGradientObjective(settings, "grpo", temperature, MAX_COMPLETION, layout)
    loss_sum, metrics = objective(objective.wrap(model, 8), collate(rows, tok.pad_token_id, layout=layout))
    loss = loss_sum / objective.units(rows)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, torch.tensor(adv).reshape(-1)


# each group's prompt computed once (pride's default), and each sample alone (what flash-attention runs)
CASES = [(lt, level, beta, moved, scale, "group") for lt in ("dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo", "vespo")
         for level in ("token", "sequence") for beta, moved, scale in ((0.0, False, "group"), (0.04, True, "batch"))]
CASES += [("luspo", "sequence", 0.0, True, "none", "group"), ("dapo", "token", 0.04, False, "none", "group"),
          ("grpo", "token", 0.0, True, "none", "group"), ("dapo", "token", 0.04, True, "group", "repack"),
          ("grpo", "sequence", 0.0, True, "batch", "repack")]


@pytest.mark.parametrize("loss_type,level,beta,moved,scale,layout", CASES)
def test_grpo_loss_and_gradients_match_trl(start, trainers, loss_type, level, beta, moved, scale, layout):
    settings = GrpoSettings(loss_type=loss_type, importance_sampling_level=level, beta=beta, scale_rewards=scale,
                            epsilon=0.2, epsilon_high=5.0 if loss_type == "cispo" else 0.28)
    temperature = 0.7 if moved else 1.0  # TRL divides the logits by the sampling temperature; so does pride
    theirs, their_grads, their_adv = trl_loss(trainers(temperature), start[4], settings, moved)
    ours, our_grads, our_adv = pride_loss(start, settings, moved, temperature, layout)
    torch.testing.assert_close(our_adv, their_adv, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert_same_gradients(our_grads, their_grads)


@pytest.mark.parametrize("normalize", [False, True])
def test_rloo_advantages_loss_and_gradients_match_rloo_trainer(start, tmp_path_factory, normalize):
    """RLOOTrainer with its KL penalty in the reward (beta 0.05, its default): the policy that sampled
    (moved once) is not the reference (the saved start), and training has moved it again."""
    from datasets import Dataset

    path, start_model, tok, _, rows = start
    reset_accelerate()
    args = trl.RLOOConfig(output_dir=str(tmp_path_factory.mktemp("rloo")), per_device_train_batch_size=len(GROUPS) * K,
                          num_generations=K, max_completion_length=MAX_COMPLETION, beta=0.05, report_to="none",
                          use_cpu=True, bf16=False, fp16=False, normalize_advantages=normalize, epsilon_high=0.28)
    trainer = trl.RLOOTrainer(model=str(path), args=args, processing_class=tok,
                              train_dataset=Dataset.from_list([{"prompt": g["prompt"]} for g in GROUPS]),
                              reward_funcs=lambda completions, **kw: [0.0] * len(completions))
    samples = [x for row in rows for x in row]
    prompt_ids = [x.input_ids[:len(x.input_ids) - x.n_targets] for x in samples]
    completion_ids = [x.input_ids[len(p):] for x, p in zip(samples, prompt_ids)]
    rewards = torch.tensor([r for g in GROUPS for r in g["rewards"]], dtype=torch.float32).unsqueeze(1)
    trainer._generate = lambda prompts: (prompt_ids, completion_ids, ["x"] * len(samples))
    trainer._calculate_rewards = lambda *a: rewards
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    perturb(trainer.model)  # the policy that sampled
    inputs = trainer._generate_and_score_completions([{"prompt": g["prompt"]} for g in GROUPS for _ in range(K)])
    perturb(trainer.model)  # and the one training now
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    their_grads = {n: p.grad for n, p in trainer.model.named_parameters() if p.grad is not None}
    reset_accelerate()

    sampler = copy.deepcopy(start_model)
    perturb(sampler)
    acc = Accelerator(cpu=True)
    old = reference.token_logps(acc, sampler, rows, tok.pad_token_id, batch_size=3, chunk_size=8, layout="group")
    ref = reference.token_logps(acc, start_model, rows, tok.pad_token_id, batch_size=3, chunk_size=8, layout="group")
    kl = [[0.0] * K for _ in GROUPS]
    for x, o, r in zip(samples, old, ref):
        kl[x.example][x.seq] = sum(o) - sum(r)
    adv, _ = advantages([g["rewards"] for g in GROUPS], "rloo", "batch" if normalize else "none", kl, 0.05)
    # the KL sums in another order (pride: Python over each completion's tokens; TRL: a padded row's sum)
    torch.testing.assert_close(torch.tensor(adv).reshape(-1), inputs["advantages"], atol=1e-5, rtol=0)
    assert any(abs(x) > 1e-3 for x in sum(kl, []))  # the penalty is really there
    for x, values in zip(samples, old):
        x.old_logps, x.advantage, x.masked = values, adv[x.example][x.seq], False
    model = sampler
    perturb(model)
    model.train()
    settings = GrpoSettings(epsilon=0.2, epsilon_high=0.28, beta=0.05, scale_rewards="batch" if normalize else "none")
    objective = PolicyGradientObjective(settings, "rloo", 1.0, MAX_COMPLETION)
    loss_sum, _ = objective(objective.wrap(model, 8), collate(rows, tok.pad_token_id, layout="repack"))
    ours = loss_sum / objective.units(rows)
    ours.backward()
    torch.testing.assert_close(ours.detach(), loss.detach(), atol=1e-5, rtol=1e-5)
    assert_same_gradients({n: p.grad for n, p in model.named_parameters()}, their_grads)
