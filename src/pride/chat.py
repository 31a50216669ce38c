"""Chat templates: a conversation -> token ids plus a per-token "trained" mask.

Token ids are always the tokenizer's own tokenization of the whole rendered conversation
(`tokenizer(text, add_special_tokens=False)`), which is what `apply_chat_template` and vLLM
produce at inference. Pieces are never tokenized on their own: SentencePiece tokenizers add
a "▁" at piece starts and BPE merges cross piece boundaries, so piecewise ids differ from
what the model sees at inference.

The mask comes from character offsets: rendering records the character span of each
assistant turn (content + end-of-turn), and a token is trained when it overlaps such a span
(the rule of transformers' `return_assistant_tokens_mask`).

* Built-in templates (`chatml`, `llama3`, `gemma`, `tulu2`, ...) render the official
  template text (trimming, BOS) in Python, so the spans are known by construction; each
  exports the equivalent Jinja template, saved with the tokenizer for inference.
* A tokenizer's own Jinja template is rendered incrementally (conversation up to turn i with
  the generation prompt, then through turn i); the shorter text must be a prefix of the
  longer one, and the difference, through its end-of-turn token, is the assistant turn.

Preference rows split the rendered conversation where the generation prompt ends: prompt
ids are the prompt's own tokenization (as at inference); completion ids are the rest of the
whole-string tokenization, or, where a token straddles the boundary (Llama-3 content that
starts with "\\n"), the tokenization of the remaining text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal, Sequence

from pride.data.rows import RowError
from pride.errors import PrideError

TrainOn = Literal["all_assistant", "last_assistant", "all"]
Message = dict  # {"role": "system"|"user"|"assistant", "content": str}
Span = tuple[int, int]  # characters [start, end) of one assistant turn: content + end-of-turn

# End-of-turn tokens of common families, used to find where an assistant turn of a
# tokenizer's own template ends (template whitespace after it is not trained).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


@dataclass(frozen=True)
class NamedTemplate:
    """A chat format as pieces. `{content}` marks the message text, `{eos}` the EOS token.

    bos: the tokenizer's BOS token starts the conversation (when it has one).
    trim: message contents are stripped of surrounding whitespace (Llama-3, Gemma).
    """

    name: str
    bos: bool
    user: str
    assistant_prefix: str
    end_of_turn: str
    turn_tail: str = ""
    system: str | None = None  # None: the system prompt is merged into the first user turn
    trim: bool = False
    special_tokens: tuple[str, ...] = ()
    closing: str = ""  # after the last message when no generation prompt follows (Phi-3: EOS)

    def render(self, messages: Sequence[Message], add_generation_prompt: bool, bos_token: str | None,
               eos_token: str | None) -> tuple[str, list[Span]]:
        """The template's text for `messages` and the character span of each assistant turn."""
        eos = eos_token or ""
        text = bos_token if (self.bos and bos_token) else ""
        spans: list[Span] = []
        msgs = list(messages)
        sys_prefix = ""
        if msgs and msgs[0]["role"] == "system" and self.system is None:
            sys_prefix = msgs[0]["content"] + "\n\n"
            msgs = msgs[1:]
        first_user = True
        for m in msgs:
            content = m["content"].strip() if self.trim else m["content"]
            if m["role"] == "assistant":
                text += self.assistant_prefix.replace("{eos}", eos)
                start = len(text)
                text += content + self.end_of_turn.replace("{eos}", eos)
                spans.append((start, len(text)))
                text += self.turn_tail.replace("{eos}", eos)
                continue
            if m["role"] == "user" and first_user:
                content, first_user = sys_prefix + content, False
            fmt = self.system if m["role"] == "system" else self.user
            text += fmt.replace("{eos}", eos).replace("{content}", content)
        if add_generation_prompt:
            text += self.assistant_prefix.replace("{eos}", eos)
        else:
            text += self.closing.replace("{eos}", eos)
        return text, spans

    def jinja(self) -> str:
        """The equivalent Jinja chat template (what transformers/vLLM use at inference)."""

        def lit(text: str) -> str:
            out = json.dumps(text).replace("{eos}", '" + eos_token + "')
            return "{{ " + out + " }}"

        def wrap(fmt: str, content: str) -> str:
            before, after = fmt.split("{content}")
            return lit(before) + "{{ " + content + " }}" + lit(after)

        msg = "(message['content'] | trim)" if self.trim else "message['content']"
        head = "{%- if bos_token and " + ("true" if self.bos else "false") + " %}{{ bos_token }}{% endif -%}\n"
        if self.system is None:
            head += (
                "{%- if messages and messages[0]['role'] == 'system' -%}"
                "{%- set sys_prefix = messages[0]['content'] + '\\n\\n' -%}{%- set msgs = messages[1:] -%}"
                "{%- else -%}{%- set sys_prefix = '' -%}{%- set msgs = messages -%}{%- endif -%}\n"
            )
            user_content = f"(sys_prefix if loop.first else '') + {msg}"
            system_branch = ""
        else:
            head += "{%- set msgs = messages -%}\n"
            user_content = msg
            system_branch = "{%- if message['role'] == 'system' -%}" + wrap(self.system, msg) + "\n{%- el"
        body = (
            "{%- for message in msgs -%}\n"
            + (system_branch or "{%- ")
            + "if message['role'] == 'user' -%}"
            + wrap(self.user, user_content)
            + "\n{%- elif message['role'] == 'assistant' -%}"
            + lit(self.assistant_prefix)
            + "{{ " + msg + " }}"
            + lit(self.end_of_turn)
            + lit(self.turn_tail)
            + "\n{%- endif -%}\n{%- endfor -%}\n"
            + "{%- if add_generation_prompt -%}"
            + lit(self.assistant_prefix)
            + ("{%- else -%}" + lit(self.closing) if self.closing else "")
            + "{%- endif -%}"
        )
        return head + body


TEMPLATES: dict[str, NamedTemplate] = {
    t.name: t
    for t in [
        NamedTemplate(  # BOS where the tokenizer has one (LION's Gemma chatml data starts with it)
            name="chatml",
            bos=True,
            system="<|im_start|>system\n{content}<|im_end|>\n",
            user="<|im_start|>user\n{content}<|im_end|>\n",
            assistant_prefix="<|im_start|>assistant\n",
            end_of_turn="<|im_end|>",
            turn_tail="\n",
            special_tokens=("<|im_start|>", "<|im_end|>"),
        ),
        NamedTemplate(  # Meta-Llama-3-8B-Instruct's template
            name="llama3",
            bos=True,
            system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
            user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
            assistant_prefix="<|start_header_id|>assistant<|end_header_id|>\n\n",
            end_of_turn="<|eot_id|>",
            trim=True,
            special_tokens=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        ),
        NamedTemplate(  # gemma-it's template; a system prompt joins the first user turn (as Gemma 3)
            name="gemma",
            bos=True,
            system=None,
            user="<start_of_turn>user\n{content}<end_of_turn>\n",
            assistant_prefix="<start_of_turn>model\n",
            end_of_turn="<end_of_turn>",
            turn_tail="\n",
            trim=True,
            special_tokens=("<start_of_turn>", "<end_of_turn>"),
        ),
        NamedTemplate(
            name="tulu2",
            bos=True,
            system="<|system|>\n{content}\n",
            user="<|user|>\n{content}\n",
            assistant_prefix="<|assistant|>\n",
            end_of_turn="{eos}",
            turn_tail="\n",
        ),
        NamedTemplate(  # Mixtral-8x7B-Instruct-v0.1's template
            name="mistral",
            bos=True,
            system=None,
            user="[INST] {content} [/INST]",
            assistant_prefix="",
            end_of_turn="{eos}",
        ),
        NamedTemplate(  # no chat markup: BOS, the texts as they are, EOS after each answer (the old TRL
            name="raw",  # DPOTrainer's layout, which CustomPOs and LLM_DPO train with)
            bos=True,
            system="{content}",
            user="{content}",
            assistant_prefix="",
            end_of_turn="{eos}",
        ),
        NamedTemplate(  # microsoft/Phi-3-mini-4k-instruct's template (and Phi-3.5-mini's)
            name="phi3",
            bos=False,
            system="<|system|>\n{content}<|end|>\n",
            user="<|user|>\n{content}<|end|>\n",
            assistant_prefix="<|assistant|>\n",
            end_of_turn="<|end|>",
            turn_tail="\n",
            closing="{eos}",
            special_tokens=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
        ),
        NamedTemplate(
            name="zephyr",
            bos=False,
            system="<|system|>\n{content}{eos}\n",
            user="<|user|>\n{content}{eos}\n",
            assistant_prefix="<|assistant|>\n",
            end_of_turn="{eos}",
            turn_tail="\n",
        ),
    ]
}


def get_template(name: str) -> NamedTemplate:
    if name not in TEMPLATES:
        raise PrideError(f"unknown chat template {name!r} (built-in: {', '.join(sorted(TEMPLATES))})")
    return TEMPLATES[name]


def template_for_jinja(jinja: str | None) -> NamedTemplate | None:
    """The built-in template whose Jinja export is exactly this text (a model pride saved)."""
    for t in TEMPLATES.values():
        if jinja == t.jinja():
            return t
    return None


@dataclass
class Encoded:
    ids: list[int]
    mask: list[bool]  # True where the token is trained

    @property
    def n_trained(self) -> int:
        return sum(self.mask)


def overlap_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[Span]) -> list[bool]:
    """Per token: does its character range [s, e) overlap one of the sorted, disjoint spans?"""
    out, k = [], 0
    for s, e in offsets:  # tokens come in text order
        while k < len(spans) and spans[k][1] <= s:
            k += 1
        out.append(k < len(spans) and spans[k][0] < max(e, s + 1))
    return out


@dataclass
class ChatFormat:
    """Turns conversations into token ids with masks for one tokenizer."""

    tokenizer: object
    template: NamedTemplate | None  # None: the tokenizer's own Jinja template
    fallback = False  # True: neither named nor the tokenizer's own (chat_format's ChatML default)

    @property
    def name(self) -> str:
        return self.template.name if self.template else "tokenizer"

    # -- rendering -----------------------------------------------------------------

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> tuple[str, list[Span]]:
        """The conversation's text and the character spans of its assistant turns."""
        if self.template is not None:
            return self.template.render(messages, add_generation_prompt, self.tokenizer.bos_token,
                                        self.tokenizer.eos_token)
        msgs = list(messages)
        full = self._jinja(msgs, add_generation_prompt)
        spans = []
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            before = self._jinja(msgs[:i], True)
            through = self._jinja(msgs[: i + 1], False)
            if not through.startswith(before) or not full.startswith(through):
                raise RowError(f"messages[{i}]", "the tokenizer's chat template is not prefix-stable here: the text "
                               "of the conversation so far changes when a turn is added, so the assistant turn "
                               "cannot be located. Set model.chat_template to a built-in template "
                               f"({', '.join(sorted(TEMPLATES))})")
            spans.append((len(before), len(before) + self._turn_end(through[len(before):])))
        return full, spans

    def _jinja(self, messages: list[Message], add_generation_prompt: bool) -> str:
        if not messages:
            return ""
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)
        except Exception as e:  # jinja2's TemplateError, raise_exception(...) in the template
            raise RowError("messages", f"the chat template cannot render this conversation ({e})") from None

    def _turn_end(self, turn: str) -> int:
        """Length of an assistant turn's text through its last end-of-turn token."""
        stops = {t for t in (self.tokenizer.eos_token, *END_OF_TURN_TOKENS) if t and t in self.tokenizer.get_vocab()}
        ends = [turn.rfind(t) + len(t) for t in stops if t in turn]
        return max(ends) if ends else len(turn)

    # -- tokenizing ----------------------------------------------------------------

    def tokenize(self, text: str, offsets: bool = False):
        """The tokenizer's ids for `text` as one string (no special tokens added)."""
        if not text:
            return ([], []) if offsets else []
        if not offsets:
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if not getattr(self.tokenizer, "is_fast", False):
            raise PrideError(f"{type(self.tokenizer).__name__} is a slow tokenizer: pride needs a fast one "
                             "(character offsets), e.g. a tokenizer.json next to the model")
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    def encode(self, messages: Sequence[Message], train_on: TrainOn = "all_assistant") -> Encoded:
        """A whole conversation with its mask (what SFT trains on)."""
        text, spans = self.render(messages)
        ids, offsets = self.tokenize(text, offsets=True)
        if train_on == "all":
            return Encoded(ids, [True] * len(ids))
        if train_on == "last_assistant":
            spans = spans[-1:]
        return Encoded(ids, overlap_mask(offsets, spans))

    def encode_prompt(self, messages: Sequence[Message]) -> list[int]:
        """Prompt ids ending with the assistant header: what generation continues from."""
        return self.tokenize(self.render(messages, add_generation_prompt=True)[0])

    def encode_pair(self, prompt: Sequence[Message], completions: Sequence[str],
                    header_in_completion: bool = False) -> tuple[list[int], list[list[int]]]:
        """Prompt ids and, per completion, the ids (content + end-of-turn) that follow them.
        `header_in_completion`: the assistant header moves from the prompt's end to the start of
        each completion (SimPO's run_simpo.py renders the answer as its own assistant message)."""
        prompt_text = self.render(prompt, add_generation_prompt=True)[0]
        prompt_ids = self.tokenize(prompt_text)
        if header_in_completion:
            plain = self.render(prompt, add_generation_prompt=False)[0]
            plain_ids = self.tokenize(plain) if prompt_text.startswith(plain) else None
            if plain_ids is None or prompt_ids[:len(plain_ids)] != plain_ids:
                raise RowError("prompt", "the assistant header does not split off the prompt's tokens")
            header = prompt_ids[len(plain_ids):]
            _, answers = self.encode_pair(prompt, completions)
            return plain_ids, [header + a for a in answers]
        out = []
        for completion in completions:
            text, spans = self.render(list(prompt) + [{"role": "assistant", "content": completion}])
            if not text.startswith(prompt_text) or not spans:
                raise RowError("prompt", "the chat template renders the prompt differently once an answer follows")
            end = spans[-1][1]
            ids, offsets = self.tokenize(text[:end], offsets=True)
            if ids[: len(prompt_ids)] == prompt_ids:
                out.append(ids[len(prompt_ids):])
            else:  # a token straddles the boundary: keep the prompt as at inference
                out.append(self.tokenize(text[len(prompt_text):end]))
        return prompt_ids, out

    def encode_completion(self, prompt: Sequence[Message], completion: str) -> list[int]:
        """Completion ids (assistant content + end-of-turn) that follow `encode_prompt(prompt)`."""
        return self.encode_pair(prompt, [completion])[1][0]


def chat_format(tokenizer, template_name: str | None) -> ChatFormat:
    """Pick the format: the named template, else the tokenizer's own, else chatml."""
    if template_name:
        return ChatFormat(tokenizer, get_template(template_name))
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, str) and own.strip():
        return ChatFormat(tokenizer, template_for_jinja(own))
    fmt = ChatFormat(tokenizer, TEMPLATES["chatml"])
    fmt.fallback = True
    return fmt


def missing_special_tokens(tokenizer, template: NamedTemplate | None) -> list[str]:
    """Template tokens the tokenizer lacks (they must be added and the embeddings resized)."""
    if template is None:
        return []
    vocab = tokenizer.get_vocab()
    return [t for t in template.special_tokens if t not in vocab]
