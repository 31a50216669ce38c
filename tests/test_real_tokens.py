"""Token ids equal what real tokenizers produce at inference (issue 17, point 2).

At inference, transformers' `apply_chat_template` and vLLM render the conversation with
the official template and tokenize the whole string without adding special tokens. pride
must train on exactly those ids, with SentencePiece (Mistral / Llama-2) and BPE (Llama-3,
Qwen) tokenizers built from the files PyPI packages ship (tests/real_tokenizers.py).
"""

import json

import pytest

from pride.chat import ChatFormat, chat_format, get_template
from pride.cli import main
from pride.config import ModelSettings
from pride.models import load_chat
from tests.conftest import write_jsonl
from tests.real_tokenizers import (CHATML_TEMPLATE, GEMMA_TEMPLATE, LLAMA3_TEMPLATE, MISTRAL_TEMPLATE, PHI3_TEMPLATE,
                                   real_tokenizer, real_tokenizer_dir)

CONVS = [
    [{"role": "user", "content": "Hello, how are you?"}, {"role": "assistant", "content": "Fine, thanks."}],
    [{"role": "user", "content": "Write a haiku."}, {"role": "assistant", "content": "\nleaves fall\nquietly"}],
    [{"role": "user", "content": "  spaced  "}, {"role": "assistant", "content": " lead and trail "},
     {"role": "user", "content": "Und auf Deutsch? Ünïcödé 🙂"}, {"role": "assistant", "content": "Ja.\n\n- eins"}],
    [{"role": "user", "content": "x=1\n"}, {"role": "assistant", "content": "```py\nprint(1)\n```"},
     {"role": "user", "content": "\n\nagain"}, {"role": "assistant", "content": "\n\n2"}],
]
WITH_SYSTEM = [{"role": "system", "content": "You are terse."}] + CONVS[0]

# (tokenizer, built-in template or None for the tokenizer's own, official Jinja to compare with)
CASES = [
    ("llama3", "llama3", LLAMA3_TEMPLATE),
    ("llama3", None, LLAMA3_TEMPLATE),
    ("qwen2", None, None),  # Qwen2's own template (default system prompt)
    ("qwen2", "chatml", CHATML_TEMPLATE),
    ("mistral", "mistral", MISTRAL_TEMPLATE),
    ("mistral", None, MISTRAL_TEMPLATE),
    ("mistral-first", "mistral", MISTRAL_TEMPLATE),
]


def official_ids(tok, messages, template, add_generation_prompt=False):
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                   chat_template=template)
    return tok(text, add_special_tokens=False)["input_ids"], text


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1] or 'own'}")
def case(request):
    name, builtin, official = request.param
    tok = real_tokenizer(name)
    fmt = chat_format(tok, builtin)
    assert (fmt.template is None) == (builtin is None)
    return tok, fmt, official or tok.chat_template


@pytest.mark.parametrize("conv", range(len(CONVS)))
def test_sft_ids_are_the_whole_string_tokenization(case, conv):
    tok, fmt, official = case
    messages = CONVS[conv]
    expected, _ = official_ids(tok, messages, official)
    enc = fmt.encode(messages)
    assert enc.ids == expected
    assert len(enc.mask) == len(expected)


@pytest.mark.parametrize("conv", range(len(CONVS)))
def test_prompt_ids_are_what_inference_sees(case, conv):
    tok, fmt, official = case
    for k in range(1, len(CONVS[conv]), 2):
        expected, _ = official_ids(tok, CONVS[conv][:k], official, add_generation_prompt=True)
        assert fmt.encode_prompt(CONVS[conv][:k]) == expected


@pytest.mark.parametrize("conv", range(len(CONVS)))
def test_preference_ids_split_the_rendered_conversation(case, conv):
    """prompt + completion decodes to the rendered conversation through its end of turn; when the
    boundary is prefix-stable the ids are exactly the whole-string tokenization."""
    tok, fmt, official = case
    prompt, answer = CONVS[conv][:-1], CONVS[conv][-1]["content"]
    prompt_ids, (completion,) = fmt.encode_pair(prompt, [answer])
    assert prompt_ids == official_ids(tok, prompt, official, add_generation_prompt=True)[0]
    full_ids, full_text = official_ids(tok, CONVS[conv], official)
    prompt_text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True, chat_template=official)
    eot = "<|eot_id|>" if "<|eot_id|>" in full_text else "<|im_end|>" if "<|im_end|>" in full_text else tok.eos_token
    through_eot = full_text[: full_text.rindex(eot) + len(eot)]
    assert tok.decode(prompt_ids + completion) == tok.decode(tok(through_eot, add_special_tokens=False)["input_ids"])
    if full_ids[: len(prompt_ids)] == prompt_ids:
        assert prompt_ids + completion == full_ids[: len(prompt_ids) + len(completion)]
        assert full_ids[len(prompt_ids) + len(completion) - 1] == tok.convert_tokens_to_ids(eot)
    else:  # a token straddles the boundary: the completion is the remaining text's tokenization
        assert completion == tok(full_text[len(prompt_text):len(through_eot)], add_special_tokens=False)["input_ids"]


def test_the_qwen_newline_boundary_is_not_prefix_stable_and_still_trains():
    """Qwen: '<|im_start|>assistant\\n' + '\\n...' merges into one '\\n\\n' token across the boundary."""
    tok = real_tokenizer("qwen2")
    fmt = chat_format(tok, None)
    conv = CONVS[1]
    full, _ = official_ids(tok, conv, tok.chat_template)
    prompt = fmt.encode_prompt(conv[:1])
    assert full[: len(prompt)] != prompt  # the case the old code refused for the whole run
    enc = fmt.encode(conv)
    assert enc.ids == full
    trained = [i for i, m in zip(enc.ids, enc.mask) if m]
    assert tok.decode(trained) == "\n\nleaves fall\nquietly<|im_end|>"  # the straddling '\n\n' is trained


def test_mask_equals_transformers_assistant_mask():
    """The same rule as transformers' return_assistant_tokens_mask ({% generation %} spans)."""
    tok = real_tokenizer("qwen2")
    tagged = ("{% for message in messages %}{% if message['role'] == 'assistant' %}{{'<|im_start|>assistant\n'}}"
              "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}{% else %}"
              "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endif %}"
              "{% endfor %}")
    fmt = chat_format(tok, "chatml")
    for conv in CONVS:
        out = tok.apply_chat_template(conv, chat_template=tagged, return_dict=True, return_assistant_tokens_mask=True)
        enc = fmt.encode(conv)
        assert enc.ids == out["input_ids"]
        assert [int(m) for m in enc.mask] == out["assistant_masks"]


def test_mistral_one_turn_prompt_is_mistrals_own_ids():
    """mistral-common's own encoding of '[INST] Hello [/INST]' (what Mistral's API tokenizes)."""
    tok = real_tokenizer("mistral")
    fmt = chat_format(tok, "mistral")
    assert fmt.encode_prompt([{"role": "user", "content": "Hello"}]) == [1, 733, 16289, 28793, 22557, 733, 28748,
                                                                         16289, 28793]


@pytest.mark.parametrize("builtin,official,tokenizer", [("llama3", LLAMA3_TEMPLATE, "tiny:llama"),
                                                        ("gemma", GEMMA_TEMPLATE, "tiny:gemma"),
                                                        ("mistral", MISTRAL_TEMPLATE, "tiny:mistral"),
                                                        ("phi3", PHI3_TEMPLATE, "tiny:phi3")])
def test_builtin_templates_render_the_official_text(builtin, official, tokenizer):
    tok, fmt = load_chat(ModelSettings(path=tokenizer, chat_template=builtin))
    for conv in CONVS:
        for k in range(1, len(conv) + 1):
            gen = conv[k - 1]["role"] == "user"
            text = tok.apply_chat_template(conv[:k], tokenize=False, add_generation_prompt=gen, chat_template=official)
            assert fmt.render(conv[:k], add_generation_prompt=gen)[0] == text
            # and the Jinja export saved with the model renders the same text
            assert tok.apply_chat_template(conv[:k], tokenize=False, add_generation_prompt=gen,
                                           chat_template=fmt.template.jinja()) == text


def test_chatml_starts_with_bos_where_the_tokenizer_has_one():
    tok, fmt = load_chat(ModelSettings(path="tiny:gemma", chat_template="chatml"))
    assert fmt.encode(CONVS[0]).ids[0] == tok.bos_token_id
    tok, fmt = load_chat(ModelSettings(path="tiny:qwen2", chat_template="chatml"))  # Qwen has no BOS
    assert tok.bos_token_id is None and fmt.encode(CONVS[0]).ids[0] == tok.convert_tokens_to_ids("<|im_start|>")


def test_data_inspect_export_is_what_training_sees(tmp_path):
    model = str(real_tokenizer_dir("llama3"))
    chats = write_jsonl(tmp_path / "chat.jsonl", [{"messages": c} for c in CONVS])
    prefs = write_jsonl(tmp_path / "pref.jsonl", [{"prompt": c[:-1], "chosen": c[-1]["content"], "rejected": "No."}
                                                  for c in CONVS])
    tok = real_tokenizer("llama3")
    fmt = ChatFormat(tok, get_template("llama3"))
    for data, kind in ((chats, "sft"), (prefs, "pref")):
        out = tmp_path / f"{kind}-export.jsonl"
        rc = main(["data", "inspect", str(_config(tmp_path, model, data)), "-n", "0", "--export", str(out),
                   "data.shuffle=false"])
        assert rc == 0
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        assert len(lines) == len(CONVS)
        for conv, line in zip(CONVS, lines):
            if kind == "sft":
                expected, _ = official_ids(tok, conv, LLAMA3_TEMPLATE)
                assert line["input_ids"] == expected
                trained = [t for t, label in zip(line["input_ids"], line["labels"]) if label != -100]
                assert trained == [t for t, m in zip(*(lambda e: (e.ids, e.mask))(fmt.encode(conv))) if m]
                assert tok.decode(trained).endswith("<|eot_id|>")
            else:
                assert line["prompt_ids"] == official_ids(tok, conv[:-1], LLAMA3_TEMPLATE, True)[0]
                assert line["prompt_ids"] + line["chosen_ids"] == official_ids(tok, conv, LLAMA3_TEMPLATE)[0]
                assert tok.decode(line["rejected_ids"]) == "No.<|eot_id|>"


def _config(tmp_path, model, data):
    path = tmp_path / f"inspect-{data.stem}.yaml"
    path.write_text(f"model: {{path: {model}, chat_template: llama3}}\ndata: {{sources: [{{path: {data}}}]}}\n")
    return path


def test_a_row_the_template_cannot_render_is_named_or_counted(tmp_path):
    """Gemma's official template refuses a system turn: that row fails alone, never the whole format."""
    from pride.data.rows import Conversation
    from pride.data.sft import tokenize_conversations
    from pride.errors import PrideError

    tok, _ = load_chat(ModelSettings(path="tiny:gemma"))
    tok.chat_template = GEMMA_TEMPLATE
    fmt = chat_format(tok, None)
    rows = [Conversation(CONVS[0], where="a.jsonl line 1"), Conversation(WITH_SYSTEM, where="a.jsonl line 2")]
    with pytest.raises(PrideError, match="a.jsonl line 2: .*System role not supported"):
        tokenize_conversations(rows, fmt, "all_assistant", 512, "truncate")
    samples, stats = tokenize_conversations(rows, fmt, "all_assistant", 512, "truncate", on_bad_row="skip")
    assert len(samples) == 1 and stats["skipped_unrenderable"] == 1


def test_header_in_completion_is_simpos_tokenization():
    """SimPO's run_simpo.py: prompt = apply_chat_template(prompt messages) (no generation prompt),
    answer = apply_chat_template([assistant message]) less BOS, each tokenized alone (TRL's DPO
    tokenization, no special tokens added): the 4 assistant-header tokens belong to the answer."""
    tok = real_tokenizer("llama3")
    fmt = chat_format(tok, "llama3")
    for conv in CONVS:
        if conv[-1]["role"] != "assistant":
            continue
        prompt, answer = conv[:-1], conv[-1]
        text_prompt = tok.apply_chat_template(prompt, tokenize=False, chat_template=LLAMA3_TEMPLATE)
        text_chosen = tok.apply_chat_template([answer], tokenize=False, chat_template=LLAMA3_TEMPLATE)
        text_chosen = text_chosen[len(tok.bos_token):] if text_chosen.startswith(tok.bos_token) else text_chosen
        ids, (chosen,) = fmt.encode_pair(prompt, [answer["content"]], header_in_completion=True)
        assert ids == tok(text_prompt, add_special_tokens=False)["input_ids"]
        assert chosen == tok(text_chosen, add_special_tokens=False)["input_ids"]
        assert len(chosen) == len(fmt.encode_pair(prompt, [answer["content"]])[1][0]) + 4  # the header's tokens


def test_data_inspect_export_under_split_packing_is_the_rows_training_sees(tmp_path):
    """`train.packing: split` trains on full rows cut from the stream of samples: the export writes
    those rows (never samples cut to max_length), each a slice of the official ids' stream."""
    model = str(real_tokenizer_dir("llama3"))
    chats = write_jsonl(tmp_path / "chat.jsonl", [{"messages": c} for c in CONVS])
    tok = real_tokenizer("llama3")
    stream = [t for conv in CONVS for t in official_ids(tok, conv, LLAMA3_TEMPLATE)[0]]
    out = tmp_path / "split.jsonl"
    assert main(["data", "inspect", str(_config(tmp_path, model, chats)), "-n", "0", "--export", str(out),
                 "data.shuffle=false", "train.packing=split", "train.max_length=8"]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    slices = [stream[i:i + 8] for i in range(0, len(stream) - 7, 8)]
    assert lines and all(line["input_ids"] in slices for line in lines)
    assert [slices.index(line["input_ids"]) for line in lines] == sorted(slices.index(x["input_ids"]) for x in lines)
    assert all(sum(line["segment_lengths"]) == 8 == len(line["labels"]) for line in lines)
