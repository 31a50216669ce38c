"""Packing without cross-sample attention: a packed batch == the same samples one by one."""

import random

import pytest
import torch

from pride.config import ModelSettings
from pride.data.packing import Sample, collate, pack_bfd, shift_targets
from pride.logps import TokenLogps
from pride.models import load_model_and_tokenizer


def make_samples(fmt, n, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        turns = [{"role": "user", "content": "q" * rng.randint(1, 30)},
                 {"role": "assistant", "content": "a" * rng.randint(1, 40)}]
        if rng.random() < 0.5:
            turns += [{"role": "user", "content": "more"}, {"role": "assistant", "content": "b" * rng.randint(1, 20)}]
        enc = fmt.encode(turns)
        out.append(Sample(enc.ids, shift_targets(enc.ids, enc.mask), example=i))
    return out


def loss_and_grads(wrapper, rows, pad_id):
    wrapper.zero_grad()
    batch = collate(rows, pad_id)
    logps = wrapper(**batch.inputs())
    loss = -logps.sum() / len(logps)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in wrapper.named_parameters() if p.grad is not None}
    return loss.detach(), logps.detach(), grads


ARCH_ATTN = [(a, attn) for a in ("llama", "gemma", "mistral", "qwen2") for attn in ("sdpa", "eager")] + [
    (a, "auto") for a in ("qwen3", "gemma2", "gemma3", "phi3")]


@pytest.mark.parametrize("arch,attn", ARCH_ATTN)
def test_packed_equals_one_by_one(arch, attn):
    model, tok, fmt = load_model_and_tokenizer(ModelSettings(path=f"tiny:{arch}", attn_implementation=attn), seed=1)
    model.train()
    wrapper = TokenLogps(model, chunk_size=7)  # several chunks, a ragged last one
    samples = make_samples(fmt, 9)
    assert max(len(s) for s in samples) > 2 * 16  # longer than the tiny sliding windows (gemma2/3)
    rows = [[samples[i] for i in g] for g in pack_bfd([len(s) for s in samples], 160)]
    assert any(len(r) > 1 for r in rows), "the test must pack several samples into a row"
    packed_loss, packed_logps, packed_grads = loss_and_grads(wrapper, rows, tok.pad_token_id)
    # Reference: each sample alone (no padding at all), in the packed order.
    order = [s for r in rows for s in r]
    wrapper.zero_grad()
    total = sum(s.n_targets for s in order)
    logps_one = []
    for s in order:
        lp = wrapper(**collate([[s]], tok.pad_token_id).inputs())
        (-lp.sum() / total).backward()
        logps_one.append(lp.detach())
    one_grads = {n: p.grad.detach().clone() for n, p in wrapper.named_parameters() if p.grad is not None}
    one_logps = torch.cat(logps_one)
    # fp32, same weights, another layout or order of work: only the order of float sums differs;
    # log-probs agree to ~1e-6 here, and the suite passes with these on AVX2, AVX-512 and ATen
    # without SIMD + MKL_CBWR=COMPATIBLE; a leaked or dropped token moves them by > 1e-2.
    torch.testing.assert_close(packed_logps, one_logps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed_loss, -one_logps.sum() / total, atol=1e-5, rtol=1e-5)
    assert packed_grads.keys() == one_grads.keys()
    for name in packed_grads:
        torch.testing.assert_close(packed_grads[name], one_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_cache_on_would_leak_across_samples():
    """Guard for the pitfall: with the KV cache on, transformers does not detect packing."""
    model, tok, fmt = load_model_and_tokenizer(ModelSettings(path="tiny:llama"), seed=1)
    samples = make_samples(fmt, 2)
    batch = collate([samples], tok.pad_token_id)
    with torch.no_grad():
        ours = TokenLogps(model)(**batch.inputs())
        leaky = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=True).logits
    logp = torch.log_softmax(leaky.float(), -1).view(-1, leaky.shape[-1])[batch.target_index, batch.target_ids]
    # the leak moves log-probs by > 1e-2; 1e-4 is far above fp32 rounding, far below the leak
    assert not torch.allclose(ours, logp, atol=1e-4)


def test_bfd_packs_tightly_and_keeps_every_sample():
    rng = random.Random(0)
    lengths = [rng.randint(10, 400) for _ in range(2000)]
    rows = pack_bfd(lengths, 1024)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 1024 for r in rows)
    assert sum(lengths) / (len(rows) * 1024) > 0.98


def test_labels_never_cross_samples():
    a = Sample([1, 2, 3], shift_targets([1, 2, 3], [False, True, True]))
    b = Sample([4, 5], shift_targets([4, 5], [False, True]))
    batch = collate([[a, b]], pad_id=0)
    assert batch.target_ids.tolist() == [2, 3, 5]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1]]
    assert batch.target_seq.tolist() == [0, 0, 1]


def test_chunked_logps_equal_full_logits():
    model, tok, fmt = load_model_and_tokenizer(ModelSettings(path="tiny:gemma"), seed=2)
    samples = make_samples(fmt, 3)
    batch = collate([[s] for s in samples], tok.pad_token_id)
    with torch.no_grad():
        ours = TokenLogps(model, chunk_size=5)(**batch.inputs())
        logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits
    full = torch.log_softmax(logits.float(), -1).view(-1, logits.shape[-1])
    # chunked LM head vs one full matmul over the same hidden states: fp32 summation order only
    torch.testing.assert_close(ours, full[batch.target_index, batch.target_ids], atol=1e-5, rtol=1e-5)


def test_split_packing_cuts_the_stream_into_full_rows_as_lionalignment_does():
    """`train.packing: split`: samples concatenated in order, 4 at a time here (LION: 1024),
    cut into rows of exactly 10 tokens; a sample cut at a row's end goes on as the next row's
    first segment, its target across the cut dropped; each group's remainder is dropped."""
    from pride.data.packing import IGNORE, split_rows

    def sample(n, start):
        ids = list(range(start, start + n))
        return Sample(ids, ids[1:] + [IGNORE], example=start)

    samples = [sample(n, 100 * i) for i, n in enumerate([4, 9, 3, 5, 12, 6, 2, 1])]
    rows, dropped = split_rows(samples, 10, buffer=4)
    assert [sum(len(s) for s in r) for r in rows] == [10, 10, 10, 10]  # each 4: 21 tokens, 2 rows, 1 dropped
    assert dropped == {"split_dropped_tail_tokens": 2, "split_dropped_untrained_rows": 0}  # counted
    stream = [t for s in samples[:4] for t in s.input_ids][:20] + [t for s in samples[4:] for t in s.input_ids][:20]
    assert [t for r in rows for s in r for t in s.input_ids] == stream
    assert [[len(s) for s in r] for r in rows] == [[4, 6], [3, 3, 4], [10], [2, 6, 2]]  # segments: samples and their pieces
    first, rest = rows[0][1], rows[1][0]  # sample 1 (9 tokens) cut after 6
    assert first.labels == [101, 102, 103, 104, 105, IGNORE] and rest.labels == [107, 108, IGNORE]
    mostly_prompt = Sample(list(range(10)), [IGNORE] * 9 + [1])  # 90% untrained: kept (LION drops over 90%)
    assert len(split_rows([mostly_prompt], 10)[0]) == 1
    assert split_rows([Sample(list(range(10)), [IGNORE] * 10)], 10) == ([], {"split_dropped_tail_tokens": 0,
                                                                            "split_dropped_untrained_rows": 1})
