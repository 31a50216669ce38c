"""Chat templates: a conversation -> token ids plus a per-token "trained" mask.

Masks are computed at the token level, never by diffing rendered strings:

* Built-in templates (`chatml`, `llama3`, `gemma`, `tulu2`, ...) are declared as pieces
  (role headers, end-of-turn). Each piece is tokenized on its own, so the mask is exact
  by construction and the prompt tokens are identical for every completion of a prompt.
  Each also exports an equivalent Jinja template that is saved with the tokenizer, so
  transformers and vLLM format prompts the same way at inference.
* A tokenizer's own Jinja template is rendered incrementally (conversation up to turn i,
  then through turn i); the token ids of the shorter rendering must be a prefix of the
  longer one, which is checked, and the difference is the assistant turn.

BOS comes from the template only (never also from the tokenizer), and the end-of-turn
token is always trained so the model learns to stop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal, Sequence

from pride.errors import PrideError

TrainOn = Literal["all_assistant", "last_assistant", "all"]
Message = dict  # {"role": "system"|"user"|"assistant", "content": str}


@dataclass(frozen=True)
class NamedTemplate:
    """A chat format as pieces. `{content}` marks the message text, `{eos}` the EOS token."""

    name: str
    bos: bool
    user: str
    assistant_prefix: str
    end_of_turn: str
    turn_tail: str = ""
    system: str | None = None  # None: the system prompt is merged into the first user turn
    special_tokens: tuple[str, ...] = ()

    def jinja(self) -> str:
        """An equivalent Jinja chat template (what transformers/vLLM use at inference)."""

        def lit(text: str) -> str:
            out = json.dumps(text).replace("{eos}", '" + eos_token + "')
            return "{{ " + out + " }}"

        def wrap(fmt: str, content: str) -> str:
            before, after = fmt.split("{content}")
            return lit(before) + "{{ " + content + " }}" + lit(after)

        head = "{%- if bos_token and " + ("true" if self.bos else "false") + " %}{{ bos_token }}{% endif -%}\n"
        if self.system is None:
            head += (
                "{%- if messages and messages[0]['role'] == 'system' -%}"
                "{%- set sys_prefix = messages[0]['content'] + '\\n\\n' -%}{%- set msgs = messages[1:] -%}"
                "{%- else -%}{%- set sys_prefix = '' -%}{%- set msgs = messages -%}{%- endif -%}\n"
            )
            user_content = "(sys_prefix if loop.first else '') + message['content']"
            system_branch = ""
        else:
            head += "{%- set msgs = messages -%}\n"
            user_content = "message['content']"
            system_branch = "{%- if message['role'] == 'system' -%}" + wrap(self.system, "message['content']") + "\n{%- el"
        body = (
            "{%- for message in msgs -%}\n"
            + (system_branch or "{%- ")
            + "if message['role'] == 'user' -%}"
            + wrap(self.user, user_content)
            + "\n{%- elif message['role'] == 'assistant' -%}"
            + lit(self.assistant_prefix)
            + "{{ message['content'] }}"
            + lit(self.end_of_turn)
            + lit(self.turn_tail)
            + "\n{%- endif -%}\n{%- endfor -%}\n"
            + "{%- if add_generation_prompt -%}"
            + lit(self.assistant_prefix)
            + "{%- endif -%}"
        )
        return head + body


TEMPLATES: dict[str, NamedTemplate] = {
    t.name: t
    for t in [
        NamedTemplate(
            name="chatml",
            bos=False,
            system="<|im_start|>system\n{content}<|im_end|>\n",
            user="<|im_start|>user\n{content}<|im_end|>\n",
            assistant_prefix="<|im_start|>assistant\n",
            end_of_turn="<|im_end|>",
            turn_tail="\n",
            special_tokens=("<|im_start|>", "<|im_end|>"),
        ),
        NamedTemplate(
            name="llama3",
            bos=True,
            system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
            user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
            assistant_prefix="<|start_header_id|>assistant<|end_header_id|>\n\n",
            end_of_turn="<|eot_id|>",
            special_tokens=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        ),
        NamedTemplate(
            name="gemma",
            bos=True,
            system=None,
            user="<start_of_turn>user\n{content}<end_of_turn>\n",
            assistant_prefix="<start_of_turn>model\n",
            end_of_turn="<end_of_turn>",
            turn_tail="\n",
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
        NamedTemplate(
            name="mistral",
            bos=True,
            system=None,
            user="[INST] {content} [/INST]",
            assistant_prefix="",
            end_of_turn="{eos}",
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


@dataclass
class ChatFormat:
    """Turns conversations into token ids with masks for one tokenizer."""

    tokenizer: object
    template: NamedTemplate | None  # None: the tokenizer's own Jinja template
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.template.name if self.template else "tokenizer"

    # -- pieces ------------------------------------------------------------------

    def _tok(self, text: str) -> list[int]:
        if not text:
            return []
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _piece(self, text: str) -> list[int]:
        """Tokenize a fixed template piece, cached (they repeat on every row)."""
        text = text.replace("{eos}", self.tokenizer.eos_token or "")
        if text not in self._cache:
            self._cache[text] = self._tok(text)
        return self._cache[text]

    def _bos(self) -> list[int]:
        bos = self.tokenizer.bos_token_id
        return [bos] if (self.template and self.template.bos and bos is not None) else []

    # -- public ------------------------------------------------------------------

    def encode(self, messages: Sequence[Message], train_on: TrainOn = "all_assistant") -> Encoded:
        """A whole conversation with its mask (what SFT trains on)."""
        if self.template is None:
            return self._encode_jinja(messages, train_on)
        t = self.template
        ids, mask = list(self._bos()), [False] * len(self._bos())
        msgs = list(messages)
        sys_prefix = ""
        if msgs and msgs[0]["role"] == "system" and t.system is None:
            sys_prefix = msgs[0]["content"] + "\n\n"
            msgs = msgs[1:]
        last_assistant = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=-1)
        first_user = True
        for i, m in enumerate(msgs):
            role = m["role"]
            if role == "assistant":
                trained = train_on != "last_assistant" or i == last_assistant
                head, body, eot, tail = (
                    self._piece(t.assistant_prefix),
                    self._tok(m["content"]),
                    self._piece(t.end_of_turn),
                    self._piece(t.turn_tail),
                )
                ids += head + body + eot + tail
                mask += [False] * len(head) + [trained] * (len(body) + len(eot)) + [False] * len(tail)
            else:
                fmt = t.system if role == "system" else t.user
                content = m["content"]
                if role == "user" and first_user:
                    content, first_user = sys_prefix + content, False
                before, after = fmt.split("{content}")
                part = self._piece(before) + self._tok(content) + self._piece(after)
                ids += part
                mask += [False] * len(part)
        if train_on == "all":
            mask = [True] * len(ids)
        return Encoded(ids, mask)

    def encode_prompt(self, messages: Sequence[Message]) -> list[int]:
        """Prompt ids ending with the assistant header (what generation continues from)."""
        if self.template is None:
            return self._jinja_ids(messages, add_generation_prompt=True)
        enc = self.encode(messages, train_on="all")
        return enc.ids + self._piece(self.template.assistant_prefix)

    def encode_completion(self, prompt: Sequence[Message], completion: str) -> list[int]:
        """Completion ids (assistant content + end-of-turn) that follow `encode_prompt(prompt)`."""
        if self.template is None:
            p = self._jinja_ids(prompt, add_generation_prompt=True)
            q = self._jinja_ids(list(prompt) + [{"role": "assistant", "content": completion}], False)
            self._check_prefix(p, q, len(prompt))
            return self._trim_tail(q[len(p):])
        return self._tok(completion) + self._piece(self.template.end_of_turn)

    def end_of_turn_ids(self) -> list[int]:
        if self.template is not None:
            return self._piece(self.template.end_of_turn)
        return [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []

    # -- tokenizer's own Jinja template --------------------------------------------

    def _jinja_ids(self, messages: Sequence[Message], add_generation_prompt: bool) -> list[int]:
        if not messages:
            text = ""
        else:
            text = self.tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
            )
        ids = self._tok(text)
        bos = self.tokenizer.bos_token_id
        if bos is not None and _tokenizer_adds_bos(self.tokenizer) and ids[:1] != [bos]:
            ids = [bos] + ids  # the tokenizer expects BOS but the template leaves it out
        return ids

    def _check_prefix(self, shorter: list[int], longer: list[int], turn: int) -> None:
        if longer[: len(shorter)] != shorter:
            raise PrideError(
                f"the tokenizer's chat template is not prefix-stable at turn {turn}: the tokens "
                "of the conversation so far change when a turn is added, so the assistant tokens "
                "cannot be found exactly. Set model.chat_template to a built-in template "
                f"({', '.join(sorted(TEMPLATES))})."
            )

    def _trim_tail(self, ids: list[int]) -> list[int]:
        """Keep the assistant turn through its end-of-turn token; drop template whitespace after it."""
        stops = {i for i in (self.tokenizer.eos_token_id, *self._extra_stop_ids()) if i is not None}
        for k in range(len(ids) - 1, -1, -1):
            if ids[k] in stops:
                return ids[: k + 1]
        return ids

    def _extra_stop_ids(self) -> list[int]:
        out = []
        for tok in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"):
            tid = self.tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
                out.append(tid)
        return out

    def _encode_jinja(self, messages: Sequence[Message], train_on: TrainOn) -> Encoded:
        msgs = list(messages)
        full = self._jinja_ids(msgs, add_generation_prompt=False)
        mask = [train_on == "all"] * len(full)
        if train_on == "all":
            return Encoded(full, mask)
        assistant_turns = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
        if train_on == "last_assistant":
            assistant_turns = assistant_turns[-1:]
        for i in assistant_turns:
            p = self._jinja_ids(msgs[:i], add_generation_prompt=True)
            q = self._jinja_ids(msgs[: i + 1], add_generation_prompt=False)
            self._check_prefix(p, q, i)
            self._check_prefix(q, full, i)
            turn = self._trim_tail(q[len(p):])
            for k in range(len(p), len(p) + len(turn)):
                mask[k] = True
        return Encoded(full, mask)


def _tokenizer_adds_bos(tokenizer) -> bool:
    """Whether plain `tokenizer(text)` prepends BOS (Llama-style post-processors do)."""
    bos = tokenizer.bos_token_id
    return bos is not None and list(tokenizer("a")["input_ids"][:1]) == [bos]


def chat_format(tokenizer, template_name: str | None) -> ChatFormat:
    """Pick the format: the named template, else the tokenizer's own, else chatml."""
    if template_name:
        return ChatFormat(tokenizer, get_template(template_name))
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, str) and own.strip():
        return ChatFormat(tokenizer, template_for_jinja(own))
    return ChatFormat(tokenizer, TEMPLATES["chatml"])


def missing_special_tokens(tokenizer, template: NamedTemplate | None) -> list[str]:
    """Template tokens the tokenizer lacks (they must be added and the embeddings resized)."""
    if template is None:
        return []
    vocab = tokenizer.get_vocab()
    return [t for t in template.special_tokens if t not in vocab]
