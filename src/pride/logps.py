"""Per-token log-probs at labelled positions only, in chunks, never full-vocabulary logits.

`TokenLogps` wraps a causal LM: the decoder gives hidden states, the positions that carry
a label are gathered, and the LM head plus log-softmax run on chunks of those positions
only. Each chunk is checkpointed, so the backward pass keeps one chunk's fp32 logits at a
time instead of [batch, length, vocab] (the difference between fitting and not fitting a
128k-256k vocabulary). Everything happens inside `forward`, so DDP, FSDP and ZeRO-3 see the
LM head used inside the wrapped module and gather/synchronise it as usual.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def _chunk_logps(lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, softcap: float | None,
                 temperature: float = 1.0):
    logits = lm_head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    if temperature != 1.0:  # the distribution a sampler drew from at that temperature (GRPO's ratios)
        logits = logits / temperature
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def chunked_logps(lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk_size: int,
                  softcap: float | None = None, temperature: float = 1.0) -> torch.Tensor:
    """log p(targets[i] | hidden[i]) for each row of hidden [N, H], fp32, chunk by chunk (logits
    divided by `temperature` after any softcap)."""
    out = []
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start:start + chunk_size], targets[start:start + chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            out.append(checkpoint(_chunk_logps, lm_head, h, t, softcap, temperature, use_reentrant=False))
        else:
            out.append(_chunk_logps(lm_head, h, t, softcap, temperature))
    if not out:
        return hidden.new_zeros(0, dtype=torch.float32)
    return torch.cat(out)


class TokenLogps(nn.Module):
    """model inputs -> log-probs of the targets (what every objective consumes)."""

    def __init__(self, model: nn.Module, chunk_size: int = 256, temperature: float = 1.0):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        self.temperature = temperature
        config = getattr(model, "config", None)
        self.softcap = getattr(config, "final_logit_softcapping", None)

    def _parts(self):
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return base.get_decoder(), base.get_output_embeddings()

    def forward(self, input_ids, position_ids, target_index, target_ids, part=None, segment=None,
                **_) -> torch.Tensor:
        decoder, lm_head = self._parts()
        mask = None
        if part is not None:  # shared-prompt pairs: the block mask instead of the causal one
            dtype = next(decoder.parameters()).dtype
            mask = shared_prompt_mask(self.model.config, part, segment, position_ids, dtype)
        hidden = decoder(input_ids=input_ids, position_ids=position_ids, attention_mask=mask,
                         use_cache=False).last_hidden_state
        hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, target_index)
        return chunked_logps(lm_head, hidden, target_ids, self.chunk_size, self.softcap, self.temperature)


BLOCK_MASK_BACKENDS = ("sdpa", "eager", "flex_attention")  # take `shared_prompt_mask`; flash-attention cannot


def takes_block_mask(model) -> bool:
    """Whether the model's attention takes the shared-prompt block mask (DPO's pairs, GRPO's groups)."""
    from pride.models import attention_backend

    return attention_backend(model) in BLOCK_MASK_BACKENDS


def shared_prompt_mask(config, part: torch.Tensor, segment: torch.Tensor, position_ids: torch.Tensor,
                       dtype: torch.dtype):
    """Masks for `[prompt, chosen, rejected]` units (data.packing.collate_shared) and `[prompt,
    answer 1, ..., answer K]` units (collate_groups): a token sees earlier tokens of its own unit's
    prompt and of its own answer, never another answer's; sliding-window layers
    also drop keys more than `sliding_window` positions back. Models with several layer types get
    one mask per type (transformers takes that mapping as the attention mask).

    sdpa/eager get additive 4D masks [B, 1, T, T]; flex_attention gets `BlockMask`s built from the
    same rule, so blocks a unit never attends (chosen x rejected, other units) are skipped."""
    from pride.data.packing import PROMPT

    window = getattr(config, "sliding_window", None)

    def rule(b, q, k, windowed: bool):  # the unit's prompt, or the query's own answer (a pair's or a group's)
        ok = (segment[b, q] == segment[b, k]) & (k <= q)
        ok = ok & ((part[b, k] == PROMPT) | (part[b, k] == part[b, q]))
        return ok & ((position_ids[b, q] - position_ids[b, k]) < window) if windowed else ok

    if getattr(config, "_attn_implementation", None) == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        def build(windowed):
            return create_block_mask(lambda b, h, q, k: rule(b, q, k, windowed), B=part.shape[0], H=None,
                                     Q_LEN=part.shape[1], KV_LEN=part.shape[1], device=part.device)
    else:
        def build(windowed):
            n = part.shape[1]
            b = torch.arange(part.shape[0], device=part.device)[:, None, None]
            q = torch.arange(n, device=part.device)[None, :, None]
            k = torch.arange(n, device=part.device)[None, None, :]
            m = torch.zeros((part.shape[0], n, n), dtype=dtype, device=part.device)
            return m.masked_fill_(~rule(b, q, k, windowed), torch.finfo(dtype).min)[:, None]

    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return {t: build(bool(window) and t == "sliding_attention") for t in set(layer_types)}
    return build(bool(window))


def attention_weight(config) -> float:
    """FLOPs of one query-key pair across a layer's heads over FLOPs of one token through the
    layer's matrices (projections and gated MLP): what `data.packing.collate_shared` weighs a
    longer shared unit's attention against the prompt tokens it saves. 0 when unknown, and 0 with
    flex_attention: it computes only the blocks a unit attends, and sharing never adds attended
    pairs (the chosen x rejected block is skipped), so every prompt is shared."""
    if getattr(config, "_attn_implementation", None) == "flex_attention":
        return 0.0
    try:
        d, heads, ff = config.hidden_size, config.num_attention_heads, config.intermediate_size
    except AttributeError:
        return 0.0
    head_dim = getattr(config, "head_dim", None) or d // heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    matrices = 2 * d * heads * head_dim + 2 * d * kv * head_dim + 3 * d * ff  # q, o; k, v; gate, up, down
    return 4 * heads * head_dim / (2 * matrices)  # QK^T and AV: 2 FLOPs per multiply-add each


def sequence_logps(token_logps: torch.Tensor, target_seq: torch.Tensor, n_seqs: int) -> torch.Tensor:
    """Sum the token log-probs of each sequence: [N] -> [n_seqs]."""
    out = token_logps.new_zeros(n_seqs)
    return out.index_add(0, target_seq, token_logps)


def pair_logps(token_logps: torch.Tensor, batch):
    """Per pair of a micro-batch, in example order: summed log-probs and completion lengths of
    chosen and rejected, and which sequences of the batch they are (to pick their columns)."""
    seq = sequence_logps(token_logps.float(), batch.target_seq, batch.n_seqs)
    lengths = torch.bincount(batch.target_seq, minlength=batch.n_seqs)
    kind, example = batch.seq_kind, batch.seq_example
    c = (kind == 0).nonzero(as_tuple=True)[0]
    r = (kind == 1).nonzero(as_tuple=True)[0]
    c, r = c[example[c].argsort()], r[example[r].argsort()]
    return seq[c], seq[r], lengths[c], lengths[r], c, r
