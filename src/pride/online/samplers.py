"""Samplers: K responses per prompt from the current policy, behind one interface.

`sample(prompts, seeds) -> [[K responses], ...]` where `seeds[i]` seeds prompt i's K samples.

* `VllmSampler`: offline batched vLLM (GPU), one request per sample with its own seed.
* `HFSampler`: transformers `generate` with left-padded batches and the KV cache, one
  seeded call per chunk of prompts.
* `OpenAISampler`: any OpenAI-compatible chat endpoint (`pride serve`, vLLM, sglang, ...),
  one request per sample with its seed; the API key comes from an environment variable.
"""

from __future__ import annotations

import importlib.util
from typing import Protocol

import torch

from pride.chat import ChatFormat
from pride.config import OnlineSettings
from pride.errors import PrideError


class Sampler(Protocol):
    def sample(self, prompts: list[list[dict]], seeds: list[int]) -> list[list[str]]: ...

    def close(self) -> None: ...


class HFSampler:
    """transformers `generate`: several prompts per call (left padding), K samples each, KV cache.

    The RNG is seeded once per call with the first prompt's seed, so a call's samples are
    reproducible for the same batch of prompts.
    """

    def __init__(self, model, tokenizer, fmt: ChatFormat, s: OnlineSettings, device):
        self.model, self.tok, self.fmt, self.s, self.device = model.eval(), tokenizer, fmt, s, device

    @torch.no_grad()
    def sample(self, prompts: list[list[dict]], seeds: list[int]) -> list[list[str]]:
        k = self.s.samples_per_prompt
        encoded = [self.fmt.encode_prompt(m) for m in prompts]
        width = max(len(e) for e in encoded)
        pad = self.tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=self.device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=self.device)
        torch.manual_seed(seeds[0])
        sampling = self.s.temperature > 0
        gen = self.model.generate(
            input_ids=ids, attention_mask=mask, do_sample=sampling, max_new_tokens=self.s.max_new_tokens,
            num_return_sequences=k, pad_token_id=pad, use_cache=True,
            **({"temperature": self.s.temperature, "top_p": self.s.top_p, "top_k": 0} if sampling else {}))
        texts = [self.tok.decode(g[width:], skip_special_tokens=True).strip() for g in gen]
        return [texts[i * k:(i + 1) * k] for i in range(len(prompts))]

    def close(self) -> None:
        self.model = None


class VllmSampler:
    def __init__(self, model_dir: str, tokenizer, fmt: ChatFormat, s: OnlineSettings, seed: int):
        from vllm import LLM

        self.fmt, self.s = fmt, s
        self.llm = LLM(model=model_dir, seed=seed, trust_remote_code=False)

    def sample(self, prompts: list[list[dict]], seeds: list[int]) -> list[list[str]]:
        from vllm import SamplingParams

        k = self.s.samples_per_prompt
        requests, params = [], []
        for messages, seed in zip(prompts, seeds):
            ids = self.fmt.encode_prompt(messages)
            for j in range(k):
                requests.append({"prompt_token_ids": ids})
                params.append(SamplingParams(n=1, temperature=self.s.temperature, top_p=self.s.top_p,
                                             max_tokens=self.s.max_new_tokens, seed=seed * 1000 + j))
        outs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        texts = [o.outputs[0].text.strip() for o in outs]
        return [texts[i * k:(i + 1) * k] for i in range(len(prompts))]

    def close(self) -> None:
        del self.llm


class OpenAISampler:
    def __init__(self, s: OnlineSettings, model_name: str):
        if not s.sampler_url:
            raise PrideError("online.sampler=openai needs online.sampler_url (an OpenAI-compatible base URL)")
        from pride.api import ChatClient

        self.s = s
        self.client = ChatClient(s.sampler_url, s.sampler_model or model_name, s.sampler_api_key_env)

    def sample(self, prompts: list[list[dict]], seeds: list[int]) -> list[list[str]]:
        out = []
        for messages, seed in zip(prompts, seeds):
            answers = []
            for j in range(self.s.samples_per_prompt):
                answers.append(self.client.text(messages, temperature=self.s.temperature, top_p=self.s.top_p,
                                                max_tokens=self.s.max_new_tokens, seed=seed * 1000 + j).strip())
            out.append(answers)
        return out

    def close(self) -> None:
        pass


def make_sampler(s: OnlineSettings, model_dir: str, model_name: str, load, device, seed: int) -> Sampler:
    """auto: vLLM when installed and on a GPU, else transformers. `load()` gives (model, tok, fmt)."""
    kind = s.sampler
    if kind == "auto":
        kind = "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") else "transformers"
    if kind == "openai":
        return OpenAISampler(s, model_name)
    model, tok, fmt = load()
    if kind == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise PrideError("online.sampler=vllm but vllm is not installed (pip install vllm), or use transformers")
        del model
        return VllmSampler(model_dir, tok, fmt, s, seed)
    return HFSampler(model.to(device), tok, fmt, s, device)
