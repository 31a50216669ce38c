"""The servers an online round samples from, always serving that round's own model.

A round samples the model the previous round trained. In process that is a matter of loading
it; behind an HTTP server it is not, and a server that keeps its starting model makes every
round sample a stale policy without a word (TRL issue 5312). So:

* `sampler: openai` (running servers, `sampler_url`): before each round the main process
  tells every server to load the round's model directory with sglang's
  `POST /update_weights_from_disk` (`pride serve` has it too), and every process then checks
  with `GET /get_model_info` that the server names that directory before it sends a request.
  A server without these routes (vLLM's OpenAI server has no reload from disk: vLLM issue
  12774) is refused before round 1 when there is more than one round.
* `sampler: server`: the local main process of every node starts a server on the round's
  model (`pride.eval.hosting`: vLLM or sglang on a GPU, else `pride serve`; 127.0.0.1), the
  node's processes send their prompts to it, and it is stopped when every process is done,
  before training.
"""

from __future__ import annotations

import socket
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

from pride.chat_client import auth_headers
from pride.config import OnlineSettings
from pride.errors import PrideError

TIMEOUT = httpx.Timeout(30.0, read=1800.0)  # a reload of a large model takes minutes


def root(url: str) -> str:
    """The server's root (sglang's native routes live there, not under /v1)."""
    return url.rstrip("/").removesuffix("/v1")


def model_ref_for_server(model_ref: str) -> str:
    """A local directory as an absolute path (the server resolves it, not this process's cwd)."""
    p = Path(model_ref).expanduser()
    return str(p.resolve()) if p.exists() else model_ref


def served_model(url: str, api_key_env: str | None = None, listed: bool = False) -> str | None:
    """The model directory the server says it serves, or None when it cannot say (no such route).
    `listed`: else the `root` GET /models gives (vLLM's OpenAI server: the path or id it was started on)."""
    try:
        r = httpx.get(root(url) + "/get_model_info", headers=auth_headers(api_key_env), timeout=TIMEOUT)
    except httpx.HTTPError as e:
        raise PrideError(f"{url}: cannot reach the sampling server ({e})") from None
    if r.status_code in (404, 405, 501):  # no such route (501: a server that has no GET at all)
        if listed:
            from pride.chat_client import listed_models

            try:
                found = listed_models(url, api_key_env).json()["data"][0].get("root")
            except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError, AttributeError):
                return None
            return found if isinstance(found, str) else None
        return None
    if r.status_code != 200:
        raise PrideError(f"{url}: GET /get_model_info answered HTTP {r.status_code}: {r.text[:200]}")
    try:
        return r.json()["model_path"]
    except (ValueError, KeyError, TypeError):
        raise PrideError(f"{url}: GET /get_model_info gave no model_path: {r.text[:200]}") from None


def check_reloadable(s: OnlineSettings) -> None:
    """Before round 1: with more than one round, every sampling server must be able to load the
    next round's model (and say what it serves), or the run stops here."""
    if s.sampler != "openai" or s.iterations == 1:
        return
    for url in s.sampler_urls():
        if served_model(url, s.sampler_api_key_env) is None:
            raise PrideError(
                f"online.sampler_url {url}: this server cannot load a new model from disk (no /get_model_info and "
                f"/update_weights_from_disk, sglang's routes, which pride serve has too; vLLM's OpenAI server has "
                f"none), so rounds 2-{s.iterations} would sample the starting model. Use online.sampler=server "
                f"(pride starts a server on each round's model), a server that reloads, or online.iterations=1")


def load_round_model(urls: list[str], model_ref: str, api_key_env: str | None) -> None:
    """Every server loads `model_ref` (requests already running there finish first)."""
    path = model_ref_for_server(model_ref)
    for url in urls:
        try:
            r = httpx.post(root(url) + "/update_weights_from_disk", json={"model_path": path},
                           headers=auth_headers(api_key_env), timeout=TIMEOUT)
        except httpx.HTTPError as e:
            raise PrideError(f"{url}: cannot reach the sampling server to load {path} ({e})") from None
        try:
            ok = r.status_code == 200 and r.json().get("success", False)
        except ValueError:
            ok = False
        if not ok:
            raise PrideError(f"{url}: the server did not load {path}: HTTP {r.status_code}: {r.text[:300]}")


def check_serving(urls: list[str], model_ref: str, api_key_env: str | None) -> None:
    """Every server says it serves `model_ref`: else this process must not sample from it (and a
    server that cannot say is not sampled either: it may serve anything)."""
    path = model_ref_for_server(model_ref)
    for url in urls:
        now = served_model(url, api_key_env, listed=True)
        if now is None:
            raise PrideError(f"{url}: cannot tell which model it serves (no /get_model_info, and GET /models names "
                             f"no root), so it may not serve this round's model {path}; serve {path} with pride "
                             "serve, sglang or vLLM, or use online.sampler=server")
        if model_ref_for_server(now) != path:
            raise PrideError(f"{url}: serves {now}, not this round's model {path}; a round never samples "
                             "another round's model")


@contextmanager
def round_servers(acc, s: OnlineSettings, model_ref: str, it_dir: Path):
    """The URLs this process sends the round's requests to, serving `model_ref`; see the module."""
    if s.sampler == "openai":
        urls = s.sampler_urls()
        if s.iterations > 1:
            if acc.is_main_process:
                load_round_model(urls, model_ref, s.sampler_api_key_env)
            acc.wait_for_everyone()
        check_serving(urls, model_ref, s.sampler_api_key_env)  # every round, one round too: never a stale policy
        yield urls
        return
    with ExitStack() as stack:
        url, problem = None, None
        if acc.is_local_main_process:
            from pride.eval.hosting import hosted

            free_accelerator_memory()
            try:
                url = stack.enter_context(hosted(model_ref, "policy", s.server, it_dir / f"server-{acc.process_index}.log",
                                                 extra_args=s.server_args))
            except PrideError as e:
                problem = str(e)
        node = socket.gethostname()
        found = [(node, url, problem)]
        if acc.num_processes > 1:
            from accelerate.utils import gather_object

            found = gather_object(found)
        problems = [p for _, _, p in found if p]
        if problems:
            raise PrideError(f"the round's sampling server did not start: {problems[0]}")
        yield [u for n, u, _ in found if n == node and u]  # started on model_ref by this round
        acc.wait_for_everyone()  # the node's server stops only when every process is done with it


def free_accelerator_memory() -> None:
    """What this training process cached on the GPU goes back before a server takes the GPU."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
