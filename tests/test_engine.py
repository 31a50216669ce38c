"""The one generation engine (`pride.engine`): what serve, online sampling and the demo run."""

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from pride.config import ModelSettings, OnlineSettings
from pride.models import load_model_and_tokenizer
from pride.online.samplers import EngineSampler
from pride.engine import Engine, sampling_scores

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


@pytest.mark.parametrize("arch,tiny", [("llama", {}), ("gemma2", {}), ("qwen2", {}), ("mistral", {"sliding_window": 16})])
def test_rows_joining_and_leaving_a_running_batch_get_the_logprobs_of_their_sequence_alone(arch, tiny, monkeypatch):
    """Continuous batching: 8 slots for 16 requests of different prompt and answer lengths,
    256 prompt tokens fed a step (longer prefills in chunks). Rows join the running batch as
    others finish (left-padded: written into a finished row's place, or the caches merged;
    finished rows decoded beside until a quarter of the batch has gone, then dropped with the
    columns no row uses), longer than the sliding windows (16). Every token's logprob equals
    one forward of that sequence alone, without padding or cache. (Checked once: 2 finished
    rows stayed at most, 19 prefills ran beside them, 8 prefills took several chunks; over the
    four architectures 14 joins were written in place, one did not fit and was merged.)"""
    from pride.engine import Request
    from pride.engine.requests import Row

    model, tok, fmt = load_model_and_tokenizer(ModelSettings(path=f"tiny:{arch}", tiny=tiny), seed=0)
    engine = Engine(model, tok, max_batch_size=8, prefill_tokens=256)
    taken: dict[int, list[int]] = {}
    accept = Row.accept
    monkeypatch.setattr(Row, "accept", lambda row, tid, logits: (taken.setdefault(id(row.request), []).append(tid),
                                                                 accept(row, tid, logits))[1])
    events: dict[int, list] = {}
    requests = []
    for i in range(16):
        prompt = fmt.encode_prompt([{"role": "user", "content": "word " * (3 + 7 * i % 40)}])
        requests.append(Request(prompt_ids=prompt, emit=events.setdefault(i, []).append, temperature=0,
                                max_tokens=4 + 5 * (i % 4), logprobs=True, ignore_eos=True, batch="test"))
    engine.generate(requests)
    for i, req in enumerate(requests):
        tokens = taken[id(req)]
        assert len(tokens) == req.max_tokens
        engine_logps = [e["logprob"] for ev in events[i] if ev[0] == "delta" for e in ev[3]]
        ids = torch.tensor([req.prompt_ids + tokens])
        with torch.no_grad():
            alone = model(input_ids=ids).logits[0, len(req.prompt_ids) - 1:-1].float().log_softmax(-1)
        expected = alone[torch.arange(len(tokens)), tokens]
        # fp32 both ways; batched, padded and cached kernels sum in other orders than one plain
        # forward: last-bit differences through two layers and a log-softmax over the vocabulary
        torch.testing.assert_close(torch.tensor(engine_logps), expected, atol=1e-4, rtol=0)
        assert (alone.max(-1).values - expected).max() < 1e-4  # each token was the argmax (greedy)


@pytest.mark.parametrize("name", ["llama3", "qwen2", "mistral"])
def test_text_decoded_token_by_token_equals_the_tokenizers_decode(name):
    """A row's text grows a token at a time (a window decoded with and without the newest
    token, held back on an incomplete character); at the end it equals the tokenizer's own
    decode of every token, on real tokenizers: byte-level BPE (Llama-3, Qwen) and Mistral's
    SentencePiece with its leading-space marker; texts whose characters span several tokens,
    and random ids."""
    import random

    from pride.engine import Request
    from pride.engine.requests import Row, text_decoder
    from tests.real_tokenizers import real_tokenizer

    tok = real_tokenizer(name)
    rng = random.Random(0)
    special = set(tok.all_special_ids)
    texts = ["naïve café, 日本語の文章 🙂🚀 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 letters", " ünïcödé  spaced\n\ttabs 中文 한국어"]
    cases = [tok.encode(t, add_special_tokens=False) for t in texts]  # characters split across tokens
    for _ in range(40):
        cases.append([t for t in (rng.randrange(len(tok)) for _ in range(rng.randrange(1, 40))) if t not in special])
    for ids in cases:
        events = []
        row = Row(Request(prompt_ids=[1], emit=events.append, max_tokens=len(ids), ignore_eos=True), [0], tok,
                  set(), None)
        for tid in ids:
            row.accept(tid, None)
        expected = tok.decode(ids, skip_special_tokens=True)
        assert text_decoder(tok)(ids) == expected
        assert "".join(e[2] for e in events if e[0] == "delta") == row.text == expected


def test_a_prompts_n_choices_share_one_prefill_and_each_gets_its_own_sequences_logprobs(monkeypatch):
    """n=4 sampled choices of one prompt (seeded, as online rounds ask for K): the prompt is fed
    once (every prefill forward has one row), its cache copied into the 4 rows; each choice's
    logprobs still equal one plain forward of its own sequence, and the choices differ."""
    from pride.engine import Request
    from pride.engine.requests import Row

    model, tok, fmt = load_model_and_tokenizer(ModelSettings(path="tiny:llama"), seed=0)
    engine = Engine(model, tok, max_batch_size=8, prefill_tokens=16)  # the prompt goes in several chunks
    prompt = fmt.encode_prompt([{"role": "user", "content": "word " * 12}])
    prefill_rows, taken = [], {}
    forward, accept = model.forward, Row.accept

    def counting(*args, **kwargs):
        if kwargs["input_ids"].shape[1] > 1:
            prefill_rows.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counting)
    monkeypatch.setattr(Row, "accept", lambda row, tid, logits: (taken.setdefault(row.copies[0], []).append(tid),
                                                                 accept(row, tid, logits))[1])
    events = []
    engine.generate([Request(prompt_ids=prompt, emit=events.append, n=4, temperature=1.0, max_tokens=10,
                             logprobs=True, ignore_eos=True, seeds=[11, 12, 13, 14])])
    assert set(prefill_rows) == {1} and len(prefill_rows) == -(-len(prompt) // 16)  # one prompt's chunks, once
    assert len({tuple(t) for t in taken.values()}) > 1
    for k in range(4):
        logps = torch.tensor([x["logprob"] for e in events if e[0] == "delta" and e[1] == k for x in e[3]])
        with torch.no_grad():
            alone = forward(input_ids=torch.tensor([prompt + taken[k]])).logits[0, len(prompt) - 1:-1].log_softmax(-1)
        # as in the test above: cached, chunked kernels against one plain forward, fp32
        torch.testing.assert_close(logps, alone[torch.arange(10), taken[k]], atol=1e-4, rtol=0)


def test_the_streamable_length_holds_back_exactly_a_tail_that_may_become_a_stop_string():
    """`_safe_length` against its definition, on random texts and stops over a small alphabet (so
    partial matches are common): per stop, in turn, the longest proper prefix of it that the text
    (as cut so far) ends with is held back."""
    import random

    from pride.engine.requests import _safe_length

    def by_definition(text, stops):
        end = len(text)
        for s in stops:
            k = next((k for k in range(min(len(s) - 1, end), 0, -1) if text[:end].endswith(s[:k])), 0)
            end -= k
        return end

    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice("ab") for _ in range(rng.randrange(0, 12)))
        stops = ["".join(rng.choice("ab") for _ in range(rng.randrange(1, 6))) for _ in range(rng.randrange(0, 4))]
        assert _safe_length(text, stops) == by_definition(text, stops), (text, stops)
