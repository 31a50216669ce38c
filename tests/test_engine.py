"""The one generation engine (`pride.serve.engine`): what serve, online sampling and the demo run."""

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from pride.config import ModelSettings, OnlineSettings
from pride.models import load_model_and_tokenizer
from pride.online.samplers import EngineSampler
from pride.serve.engine import Engine, sampling_scores

PROMPTS = [[{"role": "user", "content": "Say something."}],
           [{"role": "user", "content": "A much longer question, so that the batch needs left padding?"}]]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2"])
def test_greedy_equals_transformers_generate(arch):
    model, tok, fmt = load_model_and_tokenizer(ModelSettings(path=f"tiny:{arch}"), seed=0)
    engine = Engine(model, tok, max_batch_size=8)
    prompts = [fmt.encode_prompt(m) for m in PROMPTS]
    ours = engine.complete(prompts, n=1, temperature=0, max_tokens=20)
    stops = sorted(engine.stop_ids)
    for ids, (text,) in zip(prompts, ours):  # each prompt alone through transformers
        out = model.generate(input_ids=torch.tensor([ids]), do_sample=False, max_new_tokens=20, eos_token_id=stops,
                             pad_token_id=engine.pad)[0, len(ids):].tolist()
        cut = next((i for i, t in enumerate(out) if t in engine.stop_ids), len(out))
        assert text == tok.decode(out[:cut], skip_special_tokens=True)


def test_sampling_scores_equal_transformers_warpers():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    for temperature, top_p in ((0.7, 0.9), (1.3, 0.5), (1.0, 1.0)):
        expected = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, logits.clone()))
        # the same elementwise ops on the same tensors in one process: exact
        torch.testing.assert_close(sampling_scores(logits, temperature, top_p), expected, rtol=0, atol=0)


def test_each_sample_is_drawn_with_its_own_seed_and_the_global_rng_is_left_alone():
    model, tok, fmt = load_model_and_tokenizer(ModelSettings(path="tiny:llama"), seed=0)
    sampler = EngineSampler(model, tok, fmt, OnlineSettings(samples_per_prompt=3, temperature=1.0, max_new_tokens=12))
    seeds = [[1, 2, 3], [4, 5, 6]]
    state = torch.get_rng_state()
    first = sampler.sample(PROMPTS, seeds)
    assert torch.equal(torch.get_rng_state(), state)
    assert sampler.sample(PROMPTS, seeds) == first
    changed = sampler.sample(PROMPTS, [[1, 99, 3], [4, 5, 6]])
    assert changed[0][1] != first[0][1]  # the sample whose seed changed, and only it
    assert [changed[0][0], changed[0][2], changed[1]] == [first[0][0], first[0][2], first[1]]
