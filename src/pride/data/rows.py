"""Row formats: validate a raw row and normalise it to a conversation or a preference pair.

Accepted layouts (column names can be mapped per source with `columns:`):

* conversation: `messages` = [{role, content}, ...] (system?, then user/assistant
  alternating; ShareGPT's {from, value} is accepted too)
* prompt/completion: `prompt` and `completion`, each a string or a message list
* preference: `prompt`, `chosen`, `rejected`; prompt a string or message list, chosen and
  rejected a string, a single assistant message, or the full conversation including the
  prompt (UltraFeedback-binarized); `chosen`/`rejected` without `prompt` (HH-RLHF message
  lists sharing a prefix) also works
* scored preference (SPPO): the above plus `chosen_win_prob`/`rejected_win_prob` (each
  answer's mean win probability against all K samples; SPPO's `chosen_probs_win`/`_lose`)
  and/or `chosen_probs` (P(chosen beats rejected), for `sppo_single`), optionally
  `chosen_score`/`rejected_score`; for reward models, `margin` (TRL's: how much better chosen is)
* prompt only: `prompt` (a string or message list), for online rounds and evaluation
* unpaired feedback (KTO): `prompt`, `completion`, `label` (true: desirable, a thumbs up;
  false: undesirable); read so only by a stage that asks for it (`want="unpaired"`), where
  preference rows are split into one desirable and one undesirable row, as TRL splits them

Problems raise `RowError` with the field path; the caller adds the file and line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

from pride.errors import PrideError

RowKind = Literal["conversation", "preference"]
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "chatgpt": "assistant", "bing": "assistant"}
FIELDS = ("messages", "prompt", "completion", "chosen", "rejected", "chosen_win_prob",
          "rejected_win_prob", "chosen_probs", "chosen_score", "rejected_score", "margin", "subset", "label")
LABELS = {"true": True, "false": False}  # the strings a label may be (any case), besides a boolean, 0 or 1


class RowError(ValueError):
    def __init__(self, field: str, problem: str):
        super().__init__(f"field '{field}': {problem}")
        self.field = field


@dataclass
class Conversation:
    messages: list[dict]
    where: str = field(default="", compare=False)

    def key(self) -> tuple:
        return ("c", tuple((m["role"], m["content"]) for m in self.messages))


@dataclass
class PreferencePair:
    prompt: list[dict]
    chosen: str
    rejected: str
    chosen_win_prob: float | None = None
    rejected_win_prob: float | None = None
    chosen_probs: float | None = None
    chosen_score: float | None = None
    rejected_score: float | None = None
    margin: float | None = None  # reward models: how much better chosen is (TRL's `margin` column)
    subset: str | None = None  # reward-model evaluation: RewardBench's subset of the pair
    where: str = field(default="", compare=False)

    def key(self) -> tuple:
        return ("p", tuple((m["role"], m["content"]) for m in self.prompt), self.chosen, self.rejected)


@dataclass
class LabeledCompletion:
    """Unpaired feedback: one answer to a prompt, desirable (label True) or not (KTO's rows)."""

    prompt: list[dict]
    completion: str
    label: bool
    where: str = field(default="", compare=False)

    def key(self) -> tuple:
        return ("u", tuple((m["role"], m["content"]) for m in self.prompt), self.completion, self.label)


def detect_kind(row: dict) -> str:
    """The layout a (column-mapped) row is in: messages | prompt_completion | preference."""
    if "chosen" in row and "rejected" in row:
        return "preference"
    if "messages" in row:
        return "messages"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "prompt" in row:
        return "prompt"
    raise RowError(
        "<row>",
        f"no known layout in columns {sorted(row)}: expected 'messages', 'prompt'+'completion', or "
        "'prompt'+'chosen'+'rejected' (map other names with data.sources[].columns)",
    )


def map_columns(row: dict, columns: dict[str, str]) -> dict:
    """Apply a source's `columns:` mapping (pride field -> where its value is in the row).

    A value is a column name; a path into nested columns (`info.post`, `summaries[0].text`, an
    index may name an integer column or be `1-column`: `summaries[1-choice].text`); or a
    template whose `{path}` placeholders are filled so (`"TITLE: {info.title}"`; a missing key
    renders empty, None as "None", as Jinja renders them). Examples in the README (Data).
    """
    if not columns:
        return row
    out = dict(row)
    for ours, theirs in columns.items():
        if theirs in row:  # a plain column name (also one with dots or brackets in it)
            out[ours] = row[theirs]
        elif "{" in theirs:
            out[ours] = _TEMPLATE_FIELD.sub(lambda m: _render(row, m.group(1), ours), theirs)
        elif "." in theirs or "[" in theirs:
            out[ours] = _resolve(row, theirs, ours)
        else:  # a plain name the row lacks: say so, never train without the mapping
            raise RowError(ours, f"columns maps {ours!r} to {theirs!r}, which is not a column here "
                                 f"(columns: {', '.join(sorted(map(str, row)))})")
    return out


_TEMPLATE_FIELD = re.compile(r"\{([^{}]+)\}")
_SEGMENT = re.compile(r"([^.\[\]]+)((?:\[[^\]]+\])*)")


_MISSING = object()


def _render(row: dict, path: str, field_name: str) -> str:
    return str(_resolve(row, path.strip(), field_name, missing=""))


def _index(row: dict, text: str, path: str, field_name: str) -> int:
    """`3`, `choice` (an integer column) or `1-choice`."""
    m = re.fullmatch(r"\s*(?:(-?\d+)\s*-\s*)?([A-Za-z_]\w*|-?\d+)\s*", text)
    if not m:
        raise RowError(field_name, f"columns path {path!r}: index [{text}] is not N, a column or N-column")
    base, ref = m.groups()
    value = int(ref) if re.fullmatch(r"-?\d+", ref) else row.get(ref)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RowError(field_name, f"columns path {path!r}: index column {ref!r} is {value!r}, not an integer")
    return int(base) - value if base is not None else value


def _resolve(row: dict, path: str, field_name: str, missing=_MISSING):
    """The value at `path`; a missing key raises unless `missing` gives the value to use."""
    node = row
    for part in path.split("."):
        m = _SEGMENT.fullmatch(part)
        if not m:
            raise RowError(field_name, f"columns path {path!r}: cannot read {part!r}")
        name, brackets = m.groups()
        if not isinstance(node, dict) or name not in node:
            if missing is not _MISSING:
                return missing
            raise RowError(field_name, f"columns path {path!r}: {name!r} missing")
        node = node[name]
        for idx_text in re.findall(r"\[([^\]]+)\]", brackets):
            i = _index(row, idx_text, path, field_name)
            if not isinstance(node, list) or not -len(node) <= i < len(node):
                raise RowError(field_name, f"columns path {path!r}: no item [{i}] in {type(node).__name__}")
            node = node[i]
    return node


def normalize(row: dict, layout: str, allow_empty: bool = False) -> Conversation | PreferencePair:
    if layout == "messages":
        return Conversation(_conversation(row.get("messages"), "messages", need_assistant=True))
    if layout == "prompt_completion":
        prompt = _prompt(row.get("prompt"), "prompt")
        completion = _completion(row.get("completion"), "completion", prompt)
        return Conversation(prompt + [{"role": "assistant", "content": completion}])
    if layout == "preference":
        return _preference(row, allow_empty)
    if layout == "unpaired":
        prompt = _prompt(row.get("prompt"), "prompt")
        return LabeledCompletion(prompt, _completion(row.get("completion"), "completion", prompt), _label(row))
    if layout == "prompt":  # prompts alone: for sampling (online rounds, evaluation)
        return Conversation(_prompt(row.get("prompt"), "prompt"))
    raise PrideError(f"unknown row layout {layout!r}")


# ------------------------------------------------------------------ pieces


def _message(m, where: str) -> dict:
    if not isinstance(m, dict):
        raise RowError(where, f"expected a message object, got {type(m).__name__}")
    if "role" in m:
        role, content = m.get("role"), m.get("content")
    elif "from" in m:  # ShareGPT
        role, content = SHAREGPT_ROLES.get(str(m.get("from")).lower(), m.get("from")), m.get("value")
    else:
        raise RowError(where, "message has no 'role'")
    if role not in ROLES:
        raise RowError(f"{where}.role", f"unknown role {role!r} (allowed: {', '.join(ROLES)})")
    if not isinstance(content, str):
        raise RowError(f"{where}.content", f"expected a string, got {type(content).__name__}")
    return {"role": role, "content": content}


def _conversation(value, name: str, need_assistant: bool) -> list[dict]:
    if value is None:
        raise RowError(name, "missing")
    if not isinstance(value, list):
        raise RowError(name, f"expected a list of messages, got {type(value).__name__}")
    msgs = [_message(m, f"{name}[{i}]") for i, m in enumerate(value)]
    if not msgs:
        raise RowError(name, "empty conversation")
    start = 1 if msgs[0]["role"] == "system" else 0
    for i in range(start, len(msgs)):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if msgs[i]["role"] != expected:
            raise RowError(f"{name}[{i}].role", f"expected {expected!r} here (system first, then user/assistant "
                                                  f"alternating), got {msgs[i]['role']!r}")
        if expected == "assistant" and not msgs[i]["content"].strip():
            raise RowError(f"{name}[{i}].content", "empty assistant turn")
    if need_assistant and not any(m["role"] == "assistant" for m in msgs):
        raise RowError(name, "no assistant turn to train on")
    return msgs


def _prompt(value, name: str) -> list[dict]:
    if value is None:
        raise RowError(name, "missing")
    if isinstance(value, str):
        if not value.strip():
            raise RowError(name, "empty prompt")
        return [{"role": "user", "content": value}]
    msgs = _conversation(value, name, need_assistant=False)
    if msgs[-1]["role"] != "user":
        raise RowError(f"{name}[{len(msgs) - 1}].role", "a prompt must end with a user turn")
    return msgs


def _completion(value, name: str, prompt: list[dict], allow_empty: bool = False) -> str:
    """A completion: a string, one assistant message, or prompt + one assistant message."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, list):
        msgs = [_message(m, f"{name}[{i}]") for i, m in enumerate(value)]
        head = [(m["role"], m["content"]) for m in msgs[:-1]]
        if head and head != [(m["role"], m["content"]) for m in prompt]:
            raise RowError(name, "the messages before the last one do not match the prompt")
        if not msgs or msgs[-1]["role"] != "assistant":
            raise RowError(f"{name}[{len(msgs) - 1}].role", "the completion must end with an assistant message")
        text = msgs[-1]["content"]
    elif isinstance(value, dict):
        text = _message(value, name)["content"]
    elif value is None:
        raise RowError(name, "missing")
    else:
        raise RowError(name, f"expected a string or messages, got {type(value).__name__}")
    if not text.strip() and not allow_empty:
        raise RowError(name, "empty completion")
    return text


def _prob(row: dict, name: str) -> float | None:
    v = row.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or not 0.0 <= v <= 1.0:
        raise RowError(name, f"expected a probability in [0, 1], got {v!r}")
    return float(v)


def _score(row: dict, name: str) -> float | None:
    v = row.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise RowError(name, f"expected a finite number, got {v!r}")
    return float(v)


def _label(row: dict) -> bool:
    """KTO's label: a boolean; 0/1 and "true"/"false" (any case) are taken too."""
    if "label" not in row or row["label"] is None:
        raise RowError("label", "missing: unpaired rows need label true (desirable) or false (undesirable)")
    v = row["label"]
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in LABELS:
        return LABELS[v.strip().lower()]
    raise RowError("label", f"expected true or false (or 1/0, \"true\"/\"false\"), got {v!r}")


def _text(row: dict, name: str) -> str | None:
    v = row.get(name)
    if v is not None and not isinstance(v, str):
        raise RowError(name, f"expected a string, got {type(v).__name__}")
    return v


def _preference(row: dict, allow_empty: bool = False) -> PreferencePair:
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if "prompt" in row and row["prompt"] is not None:
        prompt = _prompt(row["prompt"], "prompt")
    else:  # HH-RLHF style: two full conversations sharing everything but the last turn
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise RowError("prompt", "missing (needed unless chosen and rejected are full conversations)")
        c = _conversation(chosen, "chosen", need_assistant=True)
        prompt = c[:-1]
        if not prompt or prompt[-1]["role"] != "user":
            raise RowError("chosen", "cannot find the prompt: the conversation must end with user -> assistant")
    pair = PreferencePair(
        prompt=prompt,
        chosen=_completion(chosen, "chosen", prompt, allow_empty),
        rejected=_completion(rejected, "rejected", prompt, allow_empty),
        chosen_win_prob=_prob(row, "chosen_win_prob"),
        rejected_win_prob=_prob(row, "rejected_win_prob"),
        chosen_probs=_prob(row, "chosen_probs"),
        chosen_score=_score(row, "chosen_score"),
        rejected_score=_score(row, "rejected_score"),
        margin=_score(row, "margin"),
        subset=_text(row, "subset"),
    )
    if (pair.chosen_win_prob is None) != (pair.rejected_win_prob is None):
        missing = "rejected_win_prob" if pair.rejected_win_prob is None else "chosen_win_prob"
        raise RowError(missing, "win probabilities come in pairs: both chosen_win_prob and rejected_win_prob")
    return pair
