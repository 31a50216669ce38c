"""flex_attention equals sdpa (eager where the architecture has no sdpa): log-probs of packed
SFT rows (transformers' document mask from the restarting positions) and of
shared-prompt DPO units (pride's own `BlockMask`), on four architectures, sliding windows and
Gemma-2's soft-capping included.

flex_attention compiles its kernel on CPU too (torch.compile, some seconds per new shape), so
these are marked slow. torch 2.13 has no flex_attention backward on CPU ("FlexAttention does not
support backward on CPU"), so gradients are compared on a GPU, by the same functions, in
benchmarks/gpu/check.py."""

import pytest
import torch

from pride.config import ModelSettings
from pride.errors import PrideError
from pride.data.packing import collate, pack_bfd
from pride.logps import TokenLogps, attention_weight
from pride.models import attention_backend, load_model_and_tokenizer, resolve_attention
from tests.test_packing import make_samples
from tests.test_shared_prompt import pairs

ARCHS = [("llama", {}), ("gemma2", {}), ("qwen2", {}), ("mistral", {"sliding_window": 16})]  # gemma2: window 16, softcaps


def twins(arch, tiny):
    """The same weights twice: flex_attention, and the architecture's sdpa (or eager) path."""
    models = {}
    for attn in ("flex_attention", "sdpa", "eager"):
        try:
            model, tok, fmt = load_model_and_tokenizer(
                ModelSettings(path=f"tiny:{arch}", attn_implementation=attn, tiny=tiny), seed=1)
        except PrideError:  # an architecture without sdpa: eager is its reference
            continue
        models.setdefault("flex" if attn == "flex_attention" else "reference", (model.train(), tok, fmt))
    return models["flex"], models["reference"]


def sequence_logps(wrapper, rows, pad_id, layout):
    """Summed log-probs per sequence in (pair, chosen/rejected) order, and the batch."""
    batch = collate(rows, pad_id, layout=layout)
    seqs = torch.zeros(batch.n_seqs).index_add(0, batch.target_seq, wrapper(**batch.inputs()))
    return seqs[torch.argsort(batch.seq_example * 2 + batch.seq_kind)], batch


def assert_same(a, b):
    # fp32 on both sides; the kernels sum in other orders (flex in blocks of 128 keys, sdpa by
    # its own tiling), so last-bit differences grow through two layers: the tolerance of the
    # packed == one-by-one tests (tests/test_packing.py), which compare other summation orders too.
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("arch,tiny", ARCHS, ids=[a for a, _ in ARCHS])
def test_flex_equals_sdpa_on_packed_sft_rows(arch, tiny):
    (flex, tok, fmt), (ref, _, _) = twins(arch, tiny)
    assert attention_backend(flex) == "flex_attention"
    samples = make_samples(fmt, 9)
    assert max(len(s) for s in samples) > 2 * 16  # beyond the tiny sliding windows
    rows = [[samples[i] for i in g] for g in pack_bfd([len(s) for s in samples], 160)]
    assert any(len(r) > 1 for r in rows)
    with torch.no_grad():
        a = TokenLogps(flex, chunk_size=7)(**collate(rows, tok.pad_token_id).inputs())
        b = TokenLogps(ref, chunk_size=7)(**collate(rows, tok.pad_token_id).inputs())
    assert_same(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("arch,tiny", ARCHS, ids=[a for a, _ in ARCHS])
def test_flex_shared_prompt_equals_sdpa_unshared(arch, tiny):
    (flex, tok, fmt), (ref, _, _) = twins(arch, tiny)
    data = pairs(fmt)
    assert attention_weight(flex.config) == 0.0  # flex: every prompt shared
    with torch.no_grad():
        shared, batch = sequence_logps(TokenLogps(flex, chunk_size=13), data.rows, tok.pad_token_id, "shared")
        plain, plain_batch = sequence_logps(TokenLogps(ref, chunk_size=13), data.rows, tok.pad_token_id, "repack")
    assert batch.n_computed < plain_batch.n_tokens  # the prompts really ran once
    assert_same(shared, plain)


def test_flex_is_taken_on_request_and_auto_stays_sdpa(monkeypatch):
    """auto does not pick flex_attention (its kernel failed to compile for mixed-precision
    training on an H200, BENCHMARKS.md); asked for, it is used where the architecture has it."""
    from transformers import Gemma2ForCausalLM, LlamaForCausalLM

    import pride.models as models

    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)  # flash-attn absent
    assert resolve_attention("auto", "cuda", LlamaForCausalLM) == "sdpa"
    assert resolve_attention("auto", "cuda", Gemma2ForCausalLM) == "eager"  # no sdpa path: keeps its softcapping
    assert resolve_attention("flex_attention", "cuda", Gemma2ForCausalLM) == "flex_attention"
    assert resolve_attention("flex_attention", "cpu", LlamaForCausalLM) == "flex_attention"
