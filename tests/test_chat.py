import pytest

from pride.chat import TEMPLATES, ChatFormat, chat_format
from pride.config import ModelSettings
from pride.data.rows import RowError
from pride.errors import PrideError
from pride.models import load_chat

# A tokenizer per template (the tiny family that uses it; others borrow one).
TOKENIZER_FOR = {"llama3": "tiny:llama", "gemma": "tiny:gemma", "chatml": "tiny:qwen2", "mistral": "tiny:mistral",
                 "tulu2": "tiny:mistral", "zephyr": "tiny:llama", "raw": "tiny:llama", "phi3": "tiny:phi3"}

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello there!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]


def spans(mask):
    out, start = [], None
    for i, m in enumerate(list(mask) + [False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i))
            start = None
    return out


@pytest.fixture(params=sorted(TEMPLATES))
def fmt(request):
    tok, f = load_chat(ModelSettings(path=TOKENIZER_FOR[request.param], chat_template=request.param))
    assert f.template.name == request.param
    return f


def eot_text(f: ChatFormat) -> str:
    return f.template.end_of_turn.replace("{eos}", f.tokenizer.eos_token)


def test_trained_tokens_are_assistant_content_plus_end_of_turn(fmt):
    enc = fmt.encode(CONV)
    trained = [fmt.tokenizer.decode(enc.ids[a:b]) for a, b in spans(enc.mask)]
    eot = eot_text(fmt)
    assert trained == ["Hello there!" + eot, "4" + eot]


def test_last_assistant_and_all(fmt):
    last = fmt.encode(CONV, train_on="last_assistant")
    assert [fmt.tokenizer.decode(last.ids[a:b]) for a, b in spans(last.mask)] == ["4" + eot_text(fmt)]
    assert all(fmt.encode(CONV, train_on="all").mask)


def test_matches_exported_jinja(fmt):
    """The Jinja template saved with the tokenizer renders exactly what pride trains on."""
    fmt.tokenizer.chat_template = fmt.template.jinja()
    rendered = fmt.tokenizer.apply_chat_template(CONV, tokenize=False)
    assert fmt.tokenizer.decode(fmt.encode(CONV).ids) == rendered
    prompt = fmt.tokenizer.apply_chat_template(CONV[:4], tokenize=False, add_generation_prompt=True)
    assert fmt.tokenizer.decode(fmt.encode_prompt(CONV[:4])) == prompt


def test_bos_never_doubled(fmt):
    ids = fmt.encode(CONV).ids
    bos = fmt.tokenizer.bos_token_id
    if fmt.template.bos and bos is not None:
        assert ids[0] == bos and ids[1] != bos
    assert ids.count(bos) <= 1 or bos == fmt.tokenizer.eos_token_id
    assert fmt.encode_prompt(CONV[:2])[:2].count(bos) <= 1


def test_prompt_plus_completion_is_the_conversation(fmt):
    prompt, completion = fmt.encode_prompt(CONV[:4]), fmt.encode_completion(CONV[:4], "4")
    full = fmt.encode(CONV)
    n = len(prompt) + len(completion)
    assert full.ids[:n] == prompt + completion
    assert full.mask[len(prompt):n] == [True] * len(completion)


def test_tokenizer_jinja_path_gives_same_mask():
    """A tokenizer template that pride does not know (the Llama-3 jinja written by hand)."""
    tok, named = load_chat(ModelSettings(path="tiny:llama"))
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
    own = chat_format(tok, None)
    assert own.template is None
    for train_on in ("all_assistant", "last_assistant", "all"):
        a, b = own.encode(CONV, train_on), named.encode(CONV, train_on)
        assert a.ids == b.ids and a.mask == b.mask
    assert own.encode_prompt(CONV[:2]) == named.encode_prompt(CONV[:2])
    assert own.encode_completion(CONV[:2], "ok") == named.encode_completion(CONV[:2], "ok")
    assert own.encode(CONV).ids.count(tok.bos_token_id) == 1  # template BOS, not the tokenizer's too


def test_chatml_template_trailing_newline_not_trained():
    tok, named = load_chat(ModelSettings(path="tiny:qwen2"))
    tok.chat_template = TEMPLATES["chatml"].jinja().replace("{{ \"<|im_end|>\" }}", "<|im_end|>")
    own = chat_format(tok, None)
    assert own.template is None
    enc = own.encode(CONV)
    assert [tok.decode(enc.ids[a:b]) for a, b in spans(enc.mask)] == ["Hello there!<|im_end|>", "4<|im_end|>"]


def test_unstable_template_is_refused():
    tok, _ = load_chat(ModelSettings(path="tiny:llama"))
    # Renders only the last two messages: earlier tokens change when a turn is added.
    tok.chat_template = "{% for m in messages[-2:] %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(RowError, match="not prefix-stable"):
        chat_format(tok, None).encode(CONV)


def test_unknown_template_name():
    with pytest.raises(PrideError, match="unknown chat template 'vicuna'"):
        load_chat(ModelSettings(path="tiny:llama", chat_template="vicuna"))


def test_tokenizer_without_template_gets_chatml_tokens():
    tok, fmt = load_chat(ModelSettings(path="tiny:gemma", chat_template="chatml"))
    assert "<|im_start|>" in tok.get_vocab()
    enc = fmt.encode(CONV)
    assert tok.convert_tokens_to_ids("<|im_start|>") in enc.ids


def test_raw_template_is_the_texts_between_bos_and_eos():
    """No chat markup (CustomPOs, LLM_DPO): BOS + prompt + answer + EOS, the answer span ending with EOS."""
    from pride.chat import get_template

    text, spans = get_template("raw").render(
        [{"role": "user", "content": "Translate: Hallo"}, {"role": "assistant", "content": " Hello"}],
        add_generation_prompt=False, bos_token="<s>", eos_token="</s>")
    assert text == "<s>Translate: Hallo Hello</s>"
    assert text[spans[0][0]:spans[0][1]] == " Hello</s>"
    prompt, _ = get_template("raw").render([{"role": "user", "content": "Q"}], True, "<s>", "</s>")
    assert prompt == "<s>Q"
