"""Samplers: K responses per prompt from the current policy, behind one interface.

`sample(prompts, seeds) -> [[K responses], ...]` where `seeds[i][k]` seeds prompt i's sample k;
`stream_samples` gives (i, K responses) as each prompt is done.

* `VllmSampler`: offline batched vLLM (GPU), one request per sample with its own seed.
* `EngineSampler`: pride's own generation engine (`pride.engine`) in process: all prompts
  of a call in one continuous batch (`generation_batch_size` x K samples at a time, a new
  prompt's samples taking the slots of finished ones), sample k of prompt i drawn with its
  own seed; `stream` hands each prompt back as soon as its K samples are done.
* `OpenAISampler`: any OpenAI-compatible chat endpoint (`pride serve`, vLLM, sglang, ...),
  one request per sample with its seed; the API key comes from an environment variable.
"""

from __future__ import annotations

import importlib.util
from typing import Protocol

from pride.chat import ChatFormat
from pride.config import OnlineSettings
from pride.errors import PrideError
from pride.models import gpu_server


class Sampler(Protocol):
    def sample(self, prompts: list[list[dict]], seeds: list[list[int]]) -> list[list[str]]: ...

    def close(self) -> None: ...


class EngineSampler:
    """pride's generation engine in process: the prompts of a call batched together, K samples
    each, every sample from its own seeded generator (so it does not depend on its neighbours'
    randomness, and the global RNG is left alone)."""

    def __init__(self, model, tokenizer, fmt: ChatFormat, s: OnlineSettings):
        from pride.engine import Engine

        self.fmt, self.s = fmt, s
        self.engine = Engine(model, tokenizer, max_batch_size=s.generation_batch_size * s.samples_per_prompt,
                             offline=True)

    def sample(self, prompts: list[list[dict]], seeds: list[list[int]]) -> list[list[str]]:
        out = dict(self.stream(prompts, seeds))
        return [out[i] for i in range(len(prompts))]

    def stream(self, prompts: list[list[dict]], seeds: list[list[int]]):
        """(i, K responses) for each prompt, as soon as its samples are done."""
        for i, texts in self.engine.answers([self.fmt.encode_prompt(m) for m in prompts], self.s.samples_per_prompt,
                                            seeds, temperature=self.s.temperature, top_p=self.s.top_p,
                                            max_tokens=self.s.max_new_tokens):
            yield i, [t.strip() for t in texts]

    def close(self) -> None:
        self.engine = None


class VllmSampler:
    def __init__(self, model_dir: str, tokenizer, fmt: ChatFormat, s: OnlineSettings, seed: int):
        from vllm import LLM

        self.fmt, self.s = fmt, s
        self.llm = LLM(model=model_dir, seed=seed, trust_remote_code=False, tensor_parallel_size=s.tensor_parallel_size)

    def sample(self, prompts: list[list[dict]], seeds: list[list[int]]) -> list[list[str]]:
        from vllm import SamplingParams

        k = self.s.samples_per_prompt
        requests, params = [], []
        for messages, prompt_seeds in zip(prompts, seeds):
            ids = self.fmt.encode_prompt(messages)
            for j in range(k):
                requests.append({"prompt_token_ids": ids})
                params.append(SamplingParams(n=1, temperature=self.s.temperature, top_p=self.s.top_p,
                                             max_tokens=self.s.max_new_tokens, seed=prompt_seeds[j]))
        outs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        texts = [o.outputs[0].text.strip() for o in outs]
        return [texts[i * k:(i + 1) * k] for i in range(len(prompts))]

    def close(self) -> None:
        del self.llm


class OpenAISampler:
    def __init__(self, s: OnlineSettings, model_name: str):
        if not s.sampler_url:
            raise PrideError("online.sampler=openai needs online.sampler_url (an OpenAI-compatible base URL)")
        from pride.chat_client import ChatClient

        self.s = s
        self.client = ChatClient(s.sampler_url, s.sampler_model or model_name, s.sampler_api_key_env)

    def sample(self, prompts: list[list[dict]], seeds: list[list[int]]) -> list[list[str]]:
        out = []
        for messages, prompt_seeds in zip(prompts, seeds):
            answers = []
            for j in range(self.s.samples_per_prompt):
                answers.append(self.client.text(messages, temperature=self.s.temperature, top_p=self.s.top_p,
                                                max_tokens=self.s.max_new_tokens, seed=prompt_seeds[j]).strip())
            out.append(answers)
        return out

    def close(self) -> None:
        pass


def stream_samples(sampler: Sampler, prompts: list[list[dict]], seeds: list[list[int]], chunk_size: int):
    """(i, K responses) per prompt as they are done: pride's engine streams them out of one
    continuous batch; the other samplers answer `chunk_size` prompts at a time."""
    if hasattr(sampler, "stream"):
        yield from sampler.stream(prompts, seeds)
        return
    for start in range(0, len(prompts), chunk_size):
        for j, texts in enumerate(sampler.sample(prompts[start:start + chunk_size], seeds[start:start + chunk_size])):
            yield start + j, texts


def make_sampler(s: OnlineSettings, model_dir: str, model_name: str, load, device, seed: int) -> Sampler:
    """auto: vLLM when installed and on a GPU, else pride's engine. `load()` gives (model, tok, fmt)."""
    kind = s.sampler
    if kind == "auto":
        kind = "vllm" if gpu_server() == "vllm" else "transformers"
    if s.tensor_parallel_size > 1 and kind != "vllm":
        raise PrideError(f"online.tensor_parallel_size={s.tensor_parallel_size} shards a vLLM sampler; "
                         f"the {kind} sampler cannot (set online.sampler=vllm)")
    if kind == "openai":
        return OpenAISampler(s, model_name)
    model, tok, fmt = load()
    if kind == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise PrideError("online.sampler=vllm but vllm is not installed (pip install vllm), or use transformers")
        del model
        return VllmSampler(model_dir, tok, fmt, s, seed)
    return EngineSampler(model.to(device), tok, fmt, s)
