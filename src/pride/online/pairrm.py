"""PairRM (LLM-Blender's pairwise ranker, DeBERTa-v3 + a small head) in plain transformers.

Loads the `PairRM-hf` weights from a local directory (weight names `pretrained_model.*` and
`head_layer.*`; prefix token ids in config.json). Input, as in the model card:
`<|source|>prompt [SEP] <|candidate1|>A [SEP] <|candidate2|>B [SEP]`, each part encoded
with the tokenizer's special tokens and truncated (source 1224, candidates share the rest
of 2048). The logit is > 0 when A is better. `compare_all` runs every ordered pair of the
K candidates, both orders, and returns the antisymmetric matrix M[i][j] = (l(i,j) - l(j,i))/2.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoTokenizer
from transformers.models.deberta_v2.modeling_deberta_v2 import DebertaV2Model, DebertaV2PreTrainedModel

from pride.errors import PrideError

SOURCE, CAND1, CAND2 = "<|source|>", "<|candidate1|>", "<|candidate2|>"


class PairRMModel(DebertaV2PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.pretrained_model = DebertaV2Model(config)
        h, n_tasks = config.hidden_size, getattr(config, "n_tasks", 1)
        drop = getattr(config, "drop_out", 0.05)
        self.head_layer = nn.Sequential(nn.Dropout(drop), nn.Linear(2 * h, h), nn.Tanh(), nn.Dropout(drop),
                                        nn.Linear(h, n_tasks))
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        c = self.config
        hidden = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        def first(token_id):
            hit = input_ids == token_id
            if not bool(hit.any(dim=1).all()):
                raise PrideError(f"PairRM input lacks its marker token {token_id} in some row: the text was cut "
                                 "before it (prompt or candidates longer than PairRM's source/candidate limits)")
            return hidden[torch.arange(len(input_ids)), hit.int().argmax(dim=1)]

        source = first(c.source_prefix_id)
        left = self.head_layer(torch.cat([source, first(c.cand1_prefix_id)], dim=-1))
        right = self.head_layer(torch.cat([source, first(c.cand2_prefix_id)], dim=-1))
        return (left - right).mean(dim=-1)


class PairRM:
    def __init__(self, path: str, device="cpu", batch_size: int = 16, source_max_length: int = 1224,
                 candidate_max_length: int = 412):
        from pride.models import from_pretrained

        self.tok = from_pretrained(AutoTokenizer.from_pretrained, path)
        self.model = from_pretrained(PairRMModel.from_pretrained, path).to(device).eval()
        self.device, self.batch_size = device, batch_size
        self.source_max, self.cand_max = source_max_length, candidate_max_length

    def encode(self, source: str, a: str, b: str) -> list[int]:
        total = self.source_max + 2 * self.cand_max
        src = self.tok.encode(SOURCE + source, max_length=self.source_max, truncation=True)
        room = (total - len(src)) // 2
        return (src + self.tok.encode(CAND1 + a, max_length=room, truncation=True)
                + self.tok.encode(CAND2 + b, max_length=room, truncation=True))

    @torch.no_grad()
    def logits(self, triples: list[tuple[str, str, str]]) -> list[float]:
        out = []
        for start in range(0, len(triples), self.batch_size):
            ids = [self.encode(*t) for t in triples[start:start + self.batch_size]]
            width = max(len(x) for x in ids)
            pad = self.tok.pad_token_id or 0
            x = torch.tensor([i + [pad] * (width - len(i)) for i in ids], device=self.device)
            m = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], device=self.device)
            out += self.model(x, m).float().tolist()
        return out

    def compare_all(self, source: str, candidates: list[str]) -> list[list[float]]:
        k = len(candidates)
        order = [(i, j) for i in range(k) for j in range(k) if i != j]
        values = dict(zip(order, self.logits([(source, candidates[i], candidates[j]) for i, j in order])))
        return [[0.0 if i == j else (values[i, j] - values[j, i]) / 2 for j in range(k)] for i in range(k)]
