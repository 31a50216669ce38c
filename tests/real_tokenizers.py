"""Real tokenizers for tests, built offline from files that PyPI packages ship.

* Llama-3 and Qwen BPE: the ranks in `quicktok-v1` (quicktok's own binary layout), turned
  into fast tokenizers by transformers' `TikTokenConverter` with each family's split regex.
* Mistral / Llama-2 SentencePiece: `tokenizer.model.v1` from `mistral-common`, through
  transformers' SentencePiece extractor, in both prepend schemes ("always": legacy
  tokenizer.json files; "first": legacy=False).

Each is built once and cached as a tokenizer directory (`PRIDE_TEST_CACHE`, default
`.cache/tokenizers` in the repository), with the family's official chat template.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from filelock import FileLock

CACHE = Path(os.environ.get("PRIDE_TEST_CACHE", Path(__file__).resolve().parents[1] / ".cache" / "tokenizers"))

LLAMA3_PAT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN_PAT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# Official chat templates, as in each model's tokenizer_config.json.
LLAMA3_TEMPLATE = (  # meta-llama/Meta-Llama-3-8B-Instruct
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
QWEN2_TEMPLATE = (  # Qwen/Qwen2-7B-Instruct
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")
CHATML_TEMPLATE = (  # alignment-handbook / OpenHermes chatml
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
    "'\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
MISTRAL_TEMPLATE = (  # mistralai/Mixtral-8x7B-Instruct-v0.1
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")
PHI3_TEMPLATE = (  # microsoft/Phi-3-mini-4k-instruct, tokenizer_config.json
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")
GEMMA_TEMPLATE = (  # google/gemma-7b-it, gemma-2-*-it
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")


def _quicktok_ranks(name: str) -> tuple[dict[bytes, int], dict[str, int]]:
    """quicktok's files: u32 count, then (u16 length, bytes, u32 rank) / (u32 rank, u16 length, text)."""
    import quicktok

    data = Path(quicktok.__file__).parent / "data"
    raw = (data / f"{name}.vocab").read_bytes()
    (n,), at, ranks = struct.unpack_from("<I", raw), 4, {}
    for _ in range(n):
        (length,) = struct.unpack_from("<H", raw, at)
        token = raw[at + 2:at + 2 + length]
        (rank,) = struct.unpack_from("<I", raw, at + 2 + length)
        ranks[token] = rank
        at += 6 + length
    raw = (data / f"{name}.special").read_bytes()
    (n,), at, special = struct.unpack_from("<I", raw), 4, {}
    for _ in range(n):
        rank, length = struct.unpack_from("<IH", raw, at)
        special[raw[at + 6:at + 6 + length].decode()] = rank
        at += 6 + length
    return ranks, special


def _bpe(name: str, pattern: str, **tokens):
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks, special = _quicktok_ranks(name)

    class Converter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(_):
            return ranks

    backend = Converter(vocab_file="quicktok", pattern=pattern).converted()
    assert backend.get_vocab_size() == len(ranks)
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                for t, _ in sorted(special.items(), key=lambda kv: kv[1])])
    for t, rank in special.items():
        assert backend.token_to_id(t) == rank, (t, rank)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **tokens)


def _sentencepiece(prepend: str):
    import mistral_common
    from transformers import LlamaTokenizer, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    spm = SentencePieceExtractor(str(path)).extract(None)
    llama = LlamaTokenizer(vocab=spm["vocab"], merges=spm["merges"], legacy=prepend == "always",
                           add_prefix_space=True)
    # a generic fast tokenizer keeps this tokenizer.json as it is when saved and reloaded
    return PreTrainedTokenizerFast(tokenizer_object=llama.backend_tokenizer, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


BUILDERS = {
    "llama3": lambda: _bpe("llama3", LLAMA3_PAT, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                           pad_token="<|end_of_text|>"),
    "qwen2": lambda: _bpe("qwen3", QWEN_PAT, eos_token="<|im_end|>", pad_token="<|endoftext|>"),
    "mistral": lambda: _sentencepiece("always"),
    "mistral-first": lambda: _sentencepiece("first"),
}
TEMPLATE_OF = {"llama3": LLAMA3_TEMPLATE, "qwen2": QWEN2_TEMPLATE, "mistral": MISTRAL_TEMPLATE,
               "mistral-first": MISTRAL_TEMPLATE}


def real_tokenizer_dir(name: str) -> Path:
    """A saved tokenizer directory (tokenizer.json + config with the official template)."""
    out = CACHE / name
    CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(str(CACHE / f"{name}.lock")):
        if not (out / "tokenizer_config.json").exists():
            tok = BUILDERS[name]()
            tok.chat_template = TEMPLATE_OF[name]
            tmp = CACHE / f"{name}.tmp"
            tok.save_pretrained(tmp)
            tmp.rename(out)
    return out


def real_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_tokenizer_dir(name))
