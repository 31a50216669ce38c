"""Choosing each row's next token: greedy, or a draw from the row's own generator after
temperature and top-p, as transformers' warpers compute them."""

from __future__ import annotations

import math

import torch


def sampling_scores(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Logits after temperature and top-p, as transformers' TemperatureLogitsWarper and
    TopPLogitsWarper compute them (top_k off): tokens outside the nucleus get -inf."""
    scores = logits / temperature
    if top_p >= 1.0:
        return scores
    ordered, order = torch.sort(scores, descending=False)
    drop = ordered.softmax(-1).cumsum(-1) <= (1 - top_p)
    drop[..., -1:] = False  # keep at least one token
    return scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))


def choose(logits: torch.Tensor, rows) -> list[int]:
    """The next token of each row: argmax for greedy rows; for sampling rows, inverse-CDF
    sampling with one uniform draw from the row's own generator (rows sharing the engine's
    unseeded generator draw in one call). One draw per row rather than a `torch.multinomial`
    call per row: the same categorical distribution, at a fraction of the per-row cost."""
    chosen = logits.argmax(-1)
    sampled = [i for i, row in enumerate(rows) if row.request.sampling]
    if not sampled:
        return chosen.tolist()
    sub = logits if len(sampled) == len(rows) else logits[sampled]
    by_setting: dict[tuple, list[int]] = {}
    for j, i in enumerate(sampled):
        by_setting.setdefault((rows[i].request.temperature, rows[i].request.top_p), []).append(j)
    if len(by_setting) == 1:
        scores = sampling_scores(sub, *next(iter(by_setting)))
    else:
        scores = torch.empty_like(sub)
        for (temperature, top_p), js in by_setting.items():  # each setting with the warpers' scalar arithmetic
            scores[js] = sampling_scores(sub[js], temperature, top_p)
    cdf = scores.softmax(-1).double().cumsum(-1)
    u = torch.empty(len(sampled), dtype=torch.float64, device=logits.device)
    by_generator: dict[int, list[int]] = {}
    for j, i in enumerate(sampled):
        by_generator.setdefault(id(rows[i].generator), []).append(j)
    for js in by_generator.values():
        u[js] = torch.rand(len(js), dtype=torch.float64, device=logits.device, generator=rows[sampled[js[0]]].generator)
    # the first token whose cumulative probability passes u (zero-probability tokens never do)
    picked = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0].clamp(max=cdf.shape[1] - 1)
    chosen[sampled] = picked
    return chosen.tolist()


def logprob_entry(tokenizer, logits: torch.Tensor, tid: int, top: int) -> dict:
    """OpenAI's logprob entry of token `tid` (and the `top` most likely) from one row's logits."""
    lp = torch.log_softmax(logits.float(), -1)
    entry = _token(tokenizer, tid, float(lp[tid]))
    entry["top_logprobs"] = [_token(tokenizer, int(j), float(v)) for v, j in zip(*lp.topk(top))] if top else []
    return entry


def _token(tokenizer, tid: int, logprob: float) -> dict:
    text = tokenizer.decode([tid])
    return {"token": text, "logprob": logprob if math.isfinite(logprob) else -9999.0,
            "bytes": list(text.encode("utf-8"))}
