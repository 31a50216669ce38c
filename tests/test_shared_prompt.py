"""DPO with the prompt computed once (issue 16): log-probs and gradients equal the unshared path."""

import random

import pytest
import torch
from safetensors.torch import load_file

from pride.config import ModelSettings, PreferenceSettings
from pride.data import packing
from pride.data.packing import IGNORE, Sample, collate, layout_cost, prompt_length, share_choice
from pride.data.preference import tokenize_pairs
from pride.data.rows import PreferencePair
from pride.logps import TokenLogps, attention_weight
from pride.models import load_model_and_tokenizer
from pride.train.preference import pair_layout, run_preference
from tests.conftest import write_jsonl
from tests.test_dpo import dpo_config, uf_rows

CASES = [("llama", "sdpa", {}), ("llama", "eager", {}), ("gemma2", "auto", {}),  # gemma2: window 16, softcaps
         ("qwen2", "sdpa", {}), ("mistral", "sdpa", {"sliding_window": 16})]


def pairs(fmt, n=7, seed=0):
    """Prompts of very different lengths, answers longer than the sliding windows, some sharing a start."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = " ".join(rng.choice(["why", "how", "the", "cat", "sat"]) for _ in range(rng.randint(1, 30)))
        chosen = "".join(rng.choice("abcdefg ") for _ in range(rng.randint(5, 60)))
        rejected = chosen[: rng.randint(0, 4)] + "".join(rng.choice("hijk ") for _ in range(rng.randint(5, 60)))
        out.append(PreferencePair(prompt=[{"role": "user", "content": prompt}], chosen=chosen, rejected=rejected))
    return tokenize_pairs(out, fmt, max_length=512, max_prompt_length=256)


def logps_and_grads(wrapper, rows, pad_id, layout, attention_weight=0.0):
    wrapper.zero_grad()
    batch = collate(rows, pad_id, layout=layout, attention_weight=attention_weight)
    lp = wrapper(**batch.inputs())
    seqs = torch.zeros(batch.n_seqs).index_add(0, batch.target_seq, lp)
    order = torch.argsort(batch.seq_example * 2 + batch.seq_kind)  # (pair, chosen/rejected) order
    seqs = seqs[order]
    (seqs * torch.linspace(0.5, 1.5, len(seqs))).sum().backward()  # a loss that weighs every sequence
    grads = {n: p.grad.detach().clone() for n, p in wrapper.named_parameters() if p.grad is not None}
    return seqs.detach(), grads, batch


@pytest.mark.parametrize("arch,attn,tiny", CASES, ids=[f"{a}-{b}" for a, b, _ in CASES])
def test_shared_prompt_equals_unshared(arch, attn, tiny):
    model, tok, fmt = load_model_and_tokenizer(ModelSettings(path=f"tiny:{arch}", attn_implementation=attn,
                                                             tiny=tiny), seed=1)
    model.train()
    wrapper = TokenLogps(model, chunk_size=13)
    data = pairs(fmt)
    assert max(len(s) for row in data.rows for s in row) > 40  # beyond the 16-token windows
    shared, g_shared, batch = logps_and_grads(wrapper, data.rows, tok.pad_token_id, "shared")
    plain, g_plain, plain_batch = logps_and_grads(wrapper, data.rows, tok.pad_token_id, "repack")
    assert batch.n_computed < plain_batch.n_tokens == batch.n_tokens  # the prompts really ran once
    # fp32, same weights, another layout or order of work: only the order of float sums differs;
    # log-probs agree to ~1e-6 here, and the suite passes with these on AVX2, AVX-512 and ATen
    # without SIMD + MKL_CBWR=COMPATIBLE; a leaked or dropped token moves them by > 1e-2.
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-5)
    assert g_shared.keys() == g_plain.keys()
    for name in g_plain:
        torch.testing.assert_close(g_shared[name], g_plain[name], atol=1e-5, rtol=1e-4, msg=name)


def test_mixed_layout_equals_unshared(monkeypatch):
    """Pairs whose answers are long against the prompt keep two units and the rest share; such a
    mixed micro-batch still gives the unshared log-probs and gradients."""
    model, tok, fmt = load_model_and_tokenizer(ModelSettings(path="tiny:mistral", tiny={"sliding_window": 16}), seed=1)
    wrapper = TokenLogps(model, chunk_size=13)
    data = pairs(fmt, n=9, seed=3)
    share = [2 * (len(c) - p) * (len(r) - p) <= p * p for c, r, p in ((c, r, prompt_length(c)) for c, r in data.rows)]
    # (any mix will do: here, the pairs whose one unit has less attention than two sequences)
    assert 0 < sum(share) < len(share)  # the data holds both kinds of pair
    monkeypatch.setattr(packing, "share_choice", lambda pairs, w: share)
    mixed, g_mixed, batch = logps_and_grads(wrapper, data.rows, tok.pad_token_id, "shared", attention_weight=1.0)
    plain, g_plain, plain_batch = logps_and_grads(wrapper, data.rows, tok.pad_token_id, "repack")
    assert plain_batch.n_tokens - batch.n_computed == sum(
        prompt_length(c) for (c, _), s in zip(data.rows, share) if s)  # exactly the shared prompts ran once
    # fp32, same weights, another layout or order of work: only the order of float sums differs;
    # log-probs agree to ~1e-6 here, and the suite passes with these on AVX2, AVX-512 and ATen
    # without SIMD + MKL_CBWR=COMPATIBLE; a leaked or dropped token moves them by > 1e-2.
    torch.testing.assert_close(mixed, plain, atol=1e-5, rtol=1e-5)
    for name in g_plain:
        torch.testing.assert_close(g_mixed[name], g_plain[name], atol=1e-5, rtol=1e-4, msg=name)


def synthetic_pair(example, p, c, r):
    """A pair with a p-token prompt and answers of c and r tokens (labels as tokenize_pairs makes them)."""
    def sample(n, seq):
        ids = list(range(1, p + 1)) + [100 + seq] * n
        return Sample(ids, [IGNORE] * (p - 1) + ids[p:] + [IGNORE], seq=seq, example=example)
    return sample(c, 0), sample(r, 1), p


def test_layout_choice_follows_the_cost():
    """A pair with a tiny prompt and long answers would double the row width if shared: with
    attention weighed it keeps two units while the short-answer pairs share (free, they fit the
    width anyway); with no weight everything shares. layout_cost counts tokens plus weighted
    query-key pairs of the packed rows."""
    pairs_ = [synthetic_pair(0, 2, 100, 100)] + [synthetic_pair(i, 50, 10, 10) for i in (1, 2, 3)]
    assert share_choice(pairs_, 0.0) == [True] * 4
    assert share_choice(pairs_, 0.01) == [False, True, True, True]
    # rows of width 102: [102], [102], [70], [70], [70]; all shared, width 202: [202], [70, 70], [70]
    # float64 arithmetic on small integers: pytest's default relative 1e-6 is exact
    assert layout_cost([102, 102, 70, 70, 70], 0.01) == pytest.approx(414 + 0.01 * 5 * 102 ** 2)
    assert layout_cost([202, 70, 70, 70], 0.01) == pytest.approx(412 + 0.01 * 3 * 202 ** 2)
    model, _, _ = load_model_and_tokenizer(ModelSettings(path="tiny:llama"), seed=1)
    w = attention_weight(model.config)
    cfg = model.config  # 2 * (d*H*hd*2 + d*kv*hd*2 + 3*d*ff) FLOPs per token, 4*H*hd per query-key pair
    hd = cfg.hidden_size // cfg.num_attention_heads
    per_token = 2 * (2 * cfg.hidden_size ** 2 + 2 * cfg.hidden_size * cfg.num_key_value_heads * hd
                     + 3 * cfg.hidden_size * cfg.intermediate_size)
    assert w == pytest.approx(4 * cfg.hidden_size / per_token)


def test_dpo_stage_with_and_without_sharing_trains_the_same_weights(tmp_path):
    data = write_jsonl(tmp_path / "uf.jsonl", uf_rows(24))
    for flag in ("true", "false"):
        run_preference(dpo_config(tmp_path, "tiny:llama", data, tmp_path / flag, "train.max_steps=4",
                           f"preference.share_prompt={flag}"))
    a, b = load_file(str(tmp_path / "true/model/model.safetensors")), load_file(str(tmp_path / "false/model/model.safetensors"))
    for k in a:
        # 4 AdamW steps whose log-probs differ only in fp32 summation order (see above)
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5, msg=k)
    import pyarrow.parquet as pq

    ra = pq.read_table(tmp_path / "true" / "reference_logps.parquet").to_pydict()
    rb = pq.read_table(tmp_path / "false" / "reference_logps.parquet").to_pydict()
    # fp32 sums of ~100 token log-probs, computed in two layouts
    assert ra["ref_chosen_logps"] == pytest.approx(rb["ref_chosen_logps"], abs=1e-4)
    assert ra["chosen_tokens"] == rb["chosen_tokens"]


def test_flash_attention_falls_back_and_says_so():
    model, _, _ = load_model_and_tokenizer(ModelSettings(path="tiny:llama"))
    said = []

    class Console:
        def print(self, text):
            said.append(text)

    assert pair_layout(PreferenceSettings(), model, Console()) == "shared"
    model.config._attn_implementation = "flash_attention_2"
    assert pair_layout(PreferenceSettings(), model, Console()) == "repack"
    assert "computed twice" in said[0]
    assert pair_layout(PreferenceSettings(share_prompt=False), model) == "repack"
