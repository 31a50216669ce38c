"""Samplers: K responses per prompt from the current policy, behind one interface.

`sample(prompts, seeds) -> [[K responses], ...]` where `seeds[i][k]` seeds prompt i's sample k;
`stream_samples` gives (i, K responses, K truncated flags) as each prompt is done (truncated: the
sample stopped at online.max_new_tokens, finish reason "length").

* `VllmSampler`: offline batched vLLM (GPU), one request per sample with its own seed.
* `EngineSampler`: pride's own generation engine (`pride.engine`) in process: all prompts
  of a call in one continuous batch (`generation_batch_size` x K samples at a time, a new
  prompt's samples taking the slots of finished ones), sample k of prompt i drawn with its
  own seed; `stream` hands each prompt back as soon as its K samples are done.
* `OpenAISampler`: OpenAI-compatible chat endpoints (`pride serve`, vLLM, sglang, ...), one
  request per sample with its seed, `sampler_concurrency` of them in flight, a prompt's samples
  on one server and the prompts spread over the servers; the API key comes from an
  environment variable. `pride.online.policy_servers` makes sure they serve the round's model.
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
        out = {i: texts for i, texts, _ in self.stream(prompts, seeds)}
        return [out[i] for i in range(len(prompts))]

    def stream(self, prompts: list[list[dict]], seeds: list[list[int]]):
        """(i, K responses, K truncated) for each prompt, as soon as its samples are done."""
        for i, texts, why in self.engine.answers([self.fmt.encode_prompt(m) for m in prompts],
                                                 self.s.samples_per_prompt, seeds, temperature=self.s.temperature,
                                                 top_p=self.s.top_p, max_tokens=self.s.max_new_tokens, reasons=True):
            yield i, [t.strip() for t in texts], [w == "length" for w in why]

    def close(self) -> None:
        self.engine = None


class VllmSampler:
    def __init__(self, model_dir: str, tokenizer, fmt: ChatFormat, s: OnlineSettings, seed: int):
        from vllm import LLM

        self.fmt, self.s = fmt, s
        self.llm = LLM(model=model_dir, seed=seed, trust_remote_code=False, tensor_parallel_size=s.tensor_parallel_size)

    def sample(self, prompts: list[list[dict]], seeds: list[list[int]]) -> list[list[str]]:
        return [texts for texts, _ in self.sample_cut(prompts, seeds)]

    def sample_cut(self, prompts: list[list[dict]], seeds: list[list[int]]) -> list[tuple[list[str], list[bool]]]:
        """(K responses, K truncated) per prompt."""
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
        cut = [o.outputs[0].finish_reason == "length" for o in outs]
        return [(texts[i * k:(i + 1) * k], cut[i * k:(i + 1) * k]) for i in range(len(prompts))]

    def close(self) -> None:
        del self.llm


class OpenAISampler:
    """Sample j of prompt i is one request with seed seeds[i][j], sent to server i mod the servers'
    count; `sampler_concurrency` requests in flight (each with the client's retries). What comes
    back does not depend on the concurrency: every request carries its own seed."""

    def __init__(self, s: OnlineSettings, urls: list[str], model_name: str | None = None):
        from pride.chat_client import ChatClient

        if not urls:
            raise PrideError("online.sampler=openai needs online.sampler_url (an OpenAI-compatible base URL)")
        self.s = s
        key_env = s.sampler_api_key_env
        self.clients = [ChatClient(u, model_name or s.sampler_model or served_name(u, key_env), key_env,
                                   connections=s.sampler_concurrency) for u in urls]

    def sample(self, prompts: list[list[dict]], seeds: list[list[int]]) -> list[list[str]]:
        out = {i: texts for i, texts, _ in self.stream(prompts, seeds)}
        return [out[i] for i in range(len(prompts))]

    def stream(self, prompts: list[list[dict]], seeds: list[list[int]]):
        """(i, K responses, K truncated) for each prompt as soon as its K requests are answered."""
        from concurrent.futures import ThreadPoolExecutor, as_completed

        k = self.s.samples_per_prompt
        texts: list[list[str]] = [[""] * k for _ in prompts]
        cut: list[list[bool]] = [[False] * k for _ in prompts]
        left = [k] * len(prompts)

        def one(i: int, j: int) -> tuple[int, int, str, bool]:
            client = self.clients[i % len(self.clients)]
            response = client.complete(prompts[i], temperature=self.s.temperature, top_p=self.s.top_p,
                                       max_tokens=self.s.max_new_tokens, seed=seeds[i][j])
            choice = response["choices"][0]
            return i, j, (choice["message"]["content"] or "").strip(), choice.get("finish_reason") == "length"

        with ThreadPoolExecutor(max_workers=self.s.sampler_concurrency, thread_name_prefix="pride-sample") as pool:
            futures = [pool.submit(one, i, j) for i in range(len(prompts)) for j in range(k)]
            try:
                for future in as_completed(futures):
                    i, j, text, truncated = future.result()
                    texts[i][j], cut[i][j] = text, truncated
                    left[i] -= 1
                    if not left[i]:
                        yield i, texts[i], cut[i]
            finally:  # an error (after the client's retries), or the caller stopped: send no more
                for future in futures:
                    future.cancel()

    def close(self) -> None:
        pass


def served_name(url: str, api_key_env: str | None) -> str:
    """The first model a server lists (`online.sampler_model` unset): the name it answers to,
    whichever directory it was told to load."""
    import httpx

    from pride.chat_client import listed_models

    try:
        return listed_models(url, api_key_env).json()["data"][0]["id"]
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
        raise PrideError(f"{url}: cannot read the served model's name from GET /models ({e!r}); set "
                         "online.sampler_model") from None


def stream_samples(sampler: Sampler, prompts: list[list[dict]], seeds: list[list[int]], chunk_size: int):
    """(i, K responses, K truncated) per prompt as they are done: pride's engine and the servers stream
    them; vLLM in process answers `chunk_size` prompts at a time."""
    if hasattr(sampler, "stream"):
        yield from sampler.stream(prompts, seeds)
        return
    for start in range(0, len(prompts), chunk_size):
        chunk = sampler.sample_cut(prompts[start:start + chunk_size], seeds[start:start + chunk_size])
        for j, (texts, cut) in enumerate(chunk):
            yield start + j, texts, cut


def sampler_kind(s: OnlineSettings) -> str:
    """auto: vLLM when installed and on a GPU, else pride's engine (transformers)."""
    if s.sampler == "auto":
        return "vllm" if gpu_server() == "vllm" else "transformers"
    return s.sampler


def make_sampler(s: OnlineSettings, model_dir: str, load, device, seed: int, urls: list[str] | None = None) -> Sampler:
    """`load()` gives (model, tok, fmt); `urls`: the servers of the openai and server samplers."""
    kind = sampler_kind(s)
    if s.tensor_parallel_size > 1 and kind != "vllm":
        raise PrideError(f"online.tensor_parallel_size={s.tensor_parallel_size} shards a vLLM sampler; "
                         f"the {kind} sampler cannot (set online.sampler=vllm)")
    if kind in ("openai", "server"):
        return OpenAISampler(s, urls or [], "policy" if kind == "server" else None)
    model, tok, fmt = load()
    if kind == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise PrideError("online.sampler=vllm but vllm is not installed (pip install vllm), or use transformers")
        del model
        return VllmSampler(model_dir, tok, fmt, s, seed)
    return EngineSampler(model.to(device), tok, fmt, s)
