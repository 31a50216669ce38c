"""Preference data: pairs -> token samples (prompt + chosen, prompt + rejected).

Ids come from `ChatFormat.encode_pair`: the prompt as tokenized at inference, shared by
both completions, and each completion as the rest of the whole-string tokenization. Truncation: the prompt
keeps its end (and its BOS) within `max_prompt_length`; completions keep their start within
`max_length`. Pairs left with an empty completion, and pairs whose chosen equals rejected,
are skipped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pride.chat import ChatFormat
from pride.data.packing import IGNORE, Sample
from pride.data.rows import PreferencePair, RowError
from pride.errors import PrideError


@dataclass
class PairData:
    rows: list[list[Sample]]  # one row per kept pair: [chosen sample, rejected sample]
    kept: list[int]  # input index of each kept pair
    status: list[str]  # per input pair: ok | empty_completion | identical | unrenderable
    stats: dict = field(default_factory=dict)
    ids: list[tuple[list[int], list[int], list[int]]] = field(default_factory=list)  # kept: prompt, chosen, rejected


def completion_sample(prompt: list[int], completion: list[int], seq: int, example: int) -> Sample:
    """prompt + completion, trained on the completion's tokens only."""
    return Sample(prompt + completion, [IGNORE] * (len(prompt) - 1) + completion + [IGNORE], seq=seq, example=example)


def pair_samples(prompt: list[int], chosen: list[int], rejected: list[int], example: int) -> list[Sample]:
    return [completion_sample(prompt, chosen, 0, example), completion_sample(prompt, rejected, 1, example)]


def truncate_prompt(prompt: list[int], limit: int, bos: int | None) -> list[int]:
    if len(prompt) <= limit:
        return prompt
    if bos is not None and prompt[:1] == [bos] and limit > 1:
        return [bos] + prompt[len(prompt) - (limit - 1):]
    return prompt[len(prompt) - limit:]


def encode_cut(fmt: ChatFormat, prompt: list[dict], completions: list[str], max_length: int, max_prompt_length: int,
               header_in_completion: bool = False) -> tuple[list[int], list[list[int]], list[bool]]:
    """A prompt and its completions as ids (`ChatFormat.encode_pair`), cut as preference data is
    (module docstring): the prompt's end within `max_prompt_length`, each completion's start within
    what `max_length` leaves. Also, per completion, whether its sequence was cut. Raises RowError."""
    ids, answers = fmt.encode_pair(prompt, completions, header_in_completion)
    short = truncate_prompt(ids, max_prompt_length, fmt.tokenizer.bos_token_id)
    budget = max(max_length - len(short), 0)
    kept = [a[:budget] for a in answers]
    return short, kept, [short != ids or len(k) < len(a) for k, a in zip(kept, answers)]


def tokenize_pairs(pairs: list[PreferencePair], fmt: ChatFormat, max_length: int, max_prompt_length: int,
                   first_example: int = 0, on_bad_row: str = "error", keep_identical: bool = False,
                   header_in_completion: bool = False) -> PairData:
    rows, kept, status, ids = [], [], [], []
    truncated = 0
    for i, pair in enumerate(pairs):
        try:
            short, (c, r), cut = encode_cut(fmt, pair.prompt, [pair.chosen, pair.rejected], max_length,
                                            max_prompt_length, header_in_completion)
        except RowError as e:
            if on_bad_row == "error":
                raise PrideError(f"{pair.where}: {e}") from None
            status.append("unrenderable")
            continue
        truncated += any(cut)
        if not c or not r:
            status.append("empty_completion")
            continue
        if c == r and not keep_identical:
            status.append("identical")
            continue
        status.append("ok")
        kept.append(i)
        ids.append((short, c, r))
        rows.append(pair_samples(short, c, r, example=first_example + len(kept) - 1))
    stats = {"pairs": len(pairs), "kept": len(kept), "truncated": int(truncated),
             "skipped_empty_completion": status.count("empty_completion"),
             "skipped_identical": status.count("identical"), "skipped_unrenderable": status.count("unrenderable")}
    return PairData(rows, kept, status, stats, ids)
