"""Reward-model scores: one number per conversation, the score head at its last token.

Training (`pride rm`) and judging (`online.judge.type: reward_model`, `pride eval`) both come
through here, so a conversation is templated, cut and pooled the same way in both:
`conversation_ids` renders it with the model's chat template and cuts it to the saved
`model_max_length` on the saved `truncation_side` (`load_reward_model`: a directory's model,
tokenizer and format, checked to belong together); `SequenceScores` runs the decoder on
padding-free rows (`data.packing.collate`) and applies the score head at each sequence's last
token, found from the rows' layout, never from the pad token id (which transformers' own
pooling relies on, and which can equal a template's end-of-turn token).
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

from pride.data.packing import IGNORE, Sample, collate
from pride.errors import PrideError


def conversation_ids(fmt, prompt: list[dict], response: str, max_length: int, side: str) -> tuple[list[int], bool]:
    """The token ids of prompt + answer as the chat template renders the whole conversation
    (TRL's RewardTrainer: apply_chat_template of prompt + chosen), cut to `max_length` on `side`.
    Returns the ids and whether they were cut."""
    ids = fmt.encode(list(prompt) + [{"role": "assistant", "content": response}]).ids
    if len(ids) <= max_length:
        return ids, False
    return (ids[-max_length:] if side == "left" else ids[:max_length]), True


def scored_sample(ids: list[int], seq: int, example: int, margin: float | None = None) -> Sample:
    """A sequence whose one target is its last position: where the score is read."""
    return Sample(list(ids), [IGNORE] * (len(ids) - 1) + [0], seq=seq, example=example, margin=margin)


def score_head(model) -> nn.Module:
    head = getattr(model, "score", None)
    if head is None:
        raise PrideError(f"{type(model).__name__}: no `score` head; a reward model here is a transformers "
                         "...ForSequenceClassification with one output")
    return head


class SequenceScores(nn.Module):
    """model inputs -> one score per sequence (in `target_seq` order), fp32. Wraps a sequence-
    classification model as `pride.logps.TokenLogps` wraps a causal LM, so the training loop,
    checkpoints and sharding treat both alike."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, target_index, **_) -> torch.Tensor:
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        decoder = getattr(base, base.base_model_prefix)
        hidden = decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
        hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, target_index)
        return score_head(base)(hidden).squeeze(-1).to(torch.float32, copy=True)  # not a view (FSDP2 hooks)


@torch.no_grad()
def score_conversations(model, ids: list[list[int]], pad_id: int, batch_size: int, device) -> list[float]:
    """Scores of token sequences, `batch_size` at a time, laid out as training lays them out."""
    wrapper = SequenceScores(model).eval()
    out: list[float] = []
    for start in range(0, len(ids), batch_size):
        rows = [[scored_sample(x, 0, start + i)] for i, x in enumerate(ids[start:start + batch_size])]
        batch = collate(rows, pad_id, layout="repack").to(device)
        scores = wrapper(**batch.inputs())
        order = batch.seq_example[batch.target_seq].argsort()  # back to the order given
        out += scores[order].tolist()
    return out


def tokenizer_digest(tokenizer) -> str:
    """What a reward model was trained to read: the vocabulary (added tokens included) and the
    chat template. Saved in its config; a judge refuses a tokenizer that differs."""
    body = json.dumps([sorted(tokenizer.get_vocab().items()), tokenizer.chat_template], default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def load_reward_model(path: str, device, key: str = "online.judge.path"):
    """Tokenizer, chat format and model of a reward-model directory, checked to belong together
    (`reward_tokenizer`)."""
    from transformers import AutoModelForSequenceClassification

    from pride.models import from_pretrained

    tok, fmt = reward_tokenizer(path, key)
    model = from_pretrained(AutoModelForSequenceClassification.from_pretrained, path, key=key).to(device).eval()
    return tok, fmt, model


def reward_tokenizer(path: str, key: str = "online.judge.path"):
    """A reward model's tokenizer and chat format, before any weights load: a sequence-
    classification directory with a chat template of its own, and the tokenizer it was trained
    with (`pride rm` records its digest in config.json; any other: no larger than the embeddings)."""
    from pride.config import ModelSettings
    from pride.model_dirs import read_json
    from pride.models import load_chat

    from pride.model_dirs import check_score_head

    check_score_head(path, key)
    tok, fmt = load_chat(ModelSettings(path=path))
    if fmt.fallback:
        raise PrideError(f"{key}={path}: no chat template; a reward model scores conversations rendered with the "
                         "template it was trained with: save that template into its tokenizer_config.json")
    from pathlib import Path

    config = read_json(Path(path).expanduser() / "config.json")
    trained, rows = config.get("pride_tokenizer"), config.get("vocab_size")
    if (trained is not None and trained != tokenizer_digest(tok)) or (isinstance(rows, int) and len(tok) > rows):
        raise PrideError(f"{key}={path}: its tokenizer is not the one this reward model was trained with "
                         f"({len(tok)} tokens{', another vocabulary or chat template' if trained else ''}; the model "
                         f"has {rows} embedding rows); put back the tokenizer files `pride rm` saved with it")
    return tok, fmt
