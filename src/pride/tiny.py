"""`tiny:<arch>` models: small random-init models with a matching byte-level tokenizer.

Built offline and deterministically from a seed, for tests, the demo and benchmarks.
Each architecture gets the special tokens and chat template of its real family (Llama-3,
Gemma, Mistral, Qwen, Phi-3), so templates, BOS handling and end-of-turn behave as on the real
models. Sizes can be overridden (`model.tiny.hidden_size=256`, `vocab_size=128256`, ...).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from pride.chat import TEMPLATES
from pride.errors import PrideError


@dataclass(frozen=True)
class TinyArch:
    model_type: str
    template: str
    bos: str | None
    eos: str
    pad: str
    extra_eos: tuple[str, ...]  # also stop generation (end-of-turn tokens)
    config: dict


_COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    tie_word_embeddings=False,
)

ARCHS: dict[str, TinyArch] = {
    "llama": TinyArch("llama", "llama3", "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>",
                      ("<|end_of_text|>",), dict(_COMMON, rope_theta=500000.0)),
    "gemma": TinyArch("gemma", "gemma", "<bos>", "<eos>", "<pad>", ("<end_of_turn>",),
                      dict(_COMMON, head_dim=16, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True)),
    "mistral": TinyArch("mistral", "mistral", "<s>", "</s>", "<unk>", (), dict(_COMMON, sliding_window=None)),
    "qwen2": TinyArch("qwen2", "chatml", None, "<|im_end|>", "<|endoftext|>", ("<|endoftext|>",),
                      dict(_COMMON, tie_word_embeddings=True)),
    "qwen3": TinyArch("qwen3", "chatml", None, "<|im_end|>", "<|endoftext|>", ("<|endoftext|>",),
                      dict(_COMMON, head_dim=16, tie_word_embeddings=True)),
    # Gemma-2: sliding-window layers alternate with global ones, attention and final logits softcapped
    "gemma2": TinyArch("gemma2", "gemma", "<bos>", "<eos>", "<pad>", ("<end_of_turn>",),
                       dict(_COMMON, head_dim=16, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
                            sliding_window=16, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                            query_pre_attn_scalar=16)),
    "gemma3": TinyArch("gemma3_text", "gemma", "<bos>", "<eos>", "<pad>", ("<end_of_turn>",),
                       dict(_COMMON, head_dim=16, tie_word_embeddings=True, sliding_window=16,
                            query_pre_attn_scalar=16, layer_types=["sliding_attention", "full_attention"])),
    "phi3": TinyArch("phi3", "phi3", "<s>", "<|endoftext|>", "<|endoftext|>", ("<|end|>",),
                     dict(_COMMON, original_max_position_embeddings=4096)),
}


def tiny_tokenizer(arch: str) -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: 256 byte tokens plus the family's special tokens."""
    spec = _arch(arch)
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    template = TEMPLATES[spec.template]
    specials = [t for t in (spec.bos, spec.eos, spec.pad, *spec.extra_eos, *template.special_tokens) if t]
    specials = list(dict.fromkeys(specials))
    tok.add_special_tokens(specials)
    if spec.bos:  # like the real families: plain tokenizer(text) prepends BOS
        bos_id = tok.token_to_id(spec.bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A", pair=f"{spec.bos} $A {spec.bos} $B", special_tokens=[(spec.bos, bos_id)]
        )
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=spec.bos, eos_token=spec.eos, pad_token=spec.pad,
        model_max_length=spec.config["max_position_embeddings"],
    )
    out.chat_template = template.jinja()
    return out


def tiny_model(arch: str, seed: int = 0, overrides: dict | None = None, tokenizer=None):
    """Random-init model of `arch`, identical for the same seed and overrides."""
    from transformers import AutoConfig

    spec = _arch(arch)
    tokenizer = tokenizer or tiny_tokenizer(arch)
    params = dict(spec.config)
    known = set(AutoConfig.for_model(spec.model_type).to_dict()) | set(params)
    unknown = sorted(set(overrides or {}) - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise PrideError(f"model.tiny.{unknown[0]}: not a setting of tiny:{arch} ({spec.model_type}){hint}")
    params.update(overrides or {})
    params.setdefault("vocab_size", len(tokenizer))
    if params["vocab_size"] < len(tokenizer):
        raise PrideError(f"model.tiny.vocab_size={params['vocab_size']} is smaller than the tokenizer ({len(tokenizer)})")
    ids = {k: tokenizer.convert_tokens_to_ids(getattr(tokenizer, f"{k}_token")) for k in ("bos", "eos", "pad")
           if getattr(tokenizer, f"{k}_token")}
    try:
        config = AutoConfig.for_model(
            spec.model_type, **params,
            bos_token_id=ids.get("bos"), eos_token_id=ids["eos"], pad_token_id=ids.get("pad"),
        )
    except Exception as e:  # noqa: BLE001 - transformers validates sizes with its own error classes
        cause = e.__cause__ or e
        raise PrideError(f"model.tiny: invalid sizes for tiny:{arch} ({str(cause).splitlines()[0]})") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError, ZeroDivisionError) as e:
            raise PrideError(f"model.tiny: these sizes do not make a tiny:{arch} model "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    stop = [ids["eos"], *(tokenizer.convert_tokens_to_ids(t) for t in spec.extra_eos)]
    model.generation_config = GenerationConfig(
        bos_token_id=ids.get("bos"), eos_token_id=list(dict.fromkeys(stop)), pad_token_id=ids.get("pad"),
    )
    return model


def _arch(arch: str) -> TinyArch:
    if arch not in ARCHS:
        raise PrideError(f"unknown tiny model 'tiny:{arch}' (available: {', '.join('tiny:' + a for a in ARCHS)})")
    return ARCHS[arch]
