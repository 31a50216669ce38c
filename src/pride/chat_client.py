"""Client for OpenAI-compatible chat endpoints (judges, samplers, answer generation).

The official `openai` client does the HTTP: retries with exponential backoff on connection
errors, 408/409/429 and 5xx, and timeouts. Around it: an optional request rate, and an
on-disk response cache (sqlite) keyed by the request, so re-running an evaluation never
pays twice for the same judgment. The API key comes from an environment variable and is
only ever sent in the Authorization header (never logged or cached).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path

from pride.errors import PrideError


class ChatClient:
    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, cache_path: str | Path | None = None,
                 max_retries: int = 5, requests_per_second: float | None = None, timeout: float = 600,
                 connections: int | None = None):
        """`connections`: how many requests this client may have in flight at once (threads
        sharing it); httpx's default pool keeps 100 connections and 20 alive."""
        import httpx
        import openai

        self.url = base_url.rstrip("/")
        self.model = model
        key = api_key(api_key_env)
        # servers without a key ignore the header; the client insists on some value
        http = None
        if connections:
            http = openai.DefaultHttpxClient(limits=httpx.Limits(max_connections=connections,
                                                                 max_keepalive_connections=connections))
        self.client = openai.OpenAI(base_url=self.url, api_key=key or "no-key", max_retries=max_retries,
                                    timeout=timeout, http_client=http)
        self.max_retries = max_retries
        self.interval = 1.0 / requests_per_second if requests_per_second else 0.0
        self._last = 0.0
        self._lock = threading.Lock()
        self._db = None
        if cache_path is not None:
            Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(cache_path), check_same_thread=False)
            self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, body TEXT)")
            self._db.commit()
        self.calls = 0  # requests actually sent (cache hits excluded)
        self.max_tokens_cap: int | None = None  # lowers any max_tokens asked for

    def complete(self, messages: list[dict], **params) -> dict:
        """The chat completion response as a dict (OpenAI's layout), from the cache when there."""
        return self._request("chat/completions", {"messages": messages}, params)

    def text(self, messages: list[dict], **params) -> str:
        return self.complete(messages, **params)["choices"][0]["message"]["content"] or ""

    def raw_text(self, prompt: str, **params) -> str:
        """A plain completion of `prompt` (/v1/completions: no chat template; models trained on raw text)."""
        return self._request("completions", {"prompt": prompt}, params)["choices"][0]["text"] or ""

    def _request(self, route: str, inputs: dict, params: dict) -> dict:
        if self.max_tokens_cap and params.get("max_tokens"):
            params["max_tokens"] = min(params["max_tokens"], self.max_tokens_cap)
        body = {"model": self.model, **inputs, **{k: v for k, v in params.items() if v is not None}}
        key = hashlib.sha256(json.dumps([f"{self.url}/{route}", body], sort_keys=True).encode()).hexdigest()
        if self._db is not None:
            with self._lock:
                row = self._db.execute("SELECT body FROM responses WHERE key = ?", (key,)).fetchone()
            if row:
                return json.loads(row[0])
        response = self._send(route, body)
        if self._db is not None:
            with self._lock:
                self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?)", (key, json.dumps(response)))
                self._db.commit()
        return response

    def _send(self, route: str, body: dict) -> dict:
        import openai

        self._pace()
        try:
            create = self.client.chat.completions.create if route == "chat/completions" else \
                self.client.completions.create
            response = create(**body)
        except openai.APIStatusError as e:
            detail = json.dumps(e.body)[:300] if e.body is not None else e.message
            tried = f" after {self.max_retries + 1} tries" if _retried(e.status_code) else ""
            raise PrideError(f"{self.url}: HTTP {e.status_code}{tried}: {detail}") from None
        except openai.APIConnectionError as e:  # includes timeouts
            raise PrideError(f"{self.url}: failed after {self.max_retries + 1} tries ({e.__cause__ or e})") from None
        except openai.APIError as e:  # an answer the client could not read as the API's
            raise PrideError(f"{self.url}: not an OpenAI-compatible answer ({e})") from None
        if not hasattr(response, "model_dump"):  # a 200 whose body is not JSON (an HTML page: a proxy, a login)
            raise PrideError(f"{self.url}: HTTP 200 but not an OpenAI-compatible answer: {str(response)[:200]!r}; is "
                             "this the API's base URL (ending in /v1)?")
        with self._lock:
            self.calls += 1
        answer = response.model_dump(mode="json", exclude_none=False)
        if not answer.get("choices"):
            raise PrideError(f"{self.url}: the answer has no choices: {json.dumps(answer)[:200]}")
        first, part = answer["choices"][0], "message" if route == "chat/completions" else "text"
        if not isinstance(first, dict) or (not isinstance(first.get("message"), dict) if part == "message"
                                           else not isinstance(first.get("text"), str)):
            raise PrideError(f"{self.url}: not an OpenAI-compatible answer: its first choice has no {part}: "
                             f"{json.dumps(first)[:200]}")
        return answer

    def _pace(self) -> None:
        if not self.interval:
            return
        with self._lock:
            wait = self._last + self.interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last = time.monotonic()


def api_key(api_key_env: str | None) -> str:
    """The key in the named environment variable ("" when none is named or set)."""
    return os.environ.get(api_key_env, "") if api_key_env else ""


def auth_headers(api_key_env: str | None) -> dict:
    """The Authorization header for plain HTTP calls beside the client (a server's own routes)."""
    key = api_key(api_key_env)
    return {"Authorization": f"Bearer {key}"} if key else {}


def listed_models(url: str, api_key_env: str | None, timeout: float = 30):
    """`GET {url}/models` with the key (httpx's response; httpx.HTTPError when nothing answers)."""
    import httpx

    return httpx.get(url.rstrip("/") + "/models", headers=auth_headers(api_key_env), timeout=timeout)


def _retried(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


def map_concurrently(fn, items: list, workers: int, label: str | None = None) -> list:
    """fn over items with up to `workers` requests in flight; results in input order. The first
    error (after the client's own retries) stops the rest and is raised. `label`: show progress
    (`pride.progress.Phase`) under that name."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from pride.progress import Phase

    with Phase(None, label or "", len(items), "requests", enabled=label is not None) as progress:
        if workers <= 1 or len(items) <= 1:
            out = []
            for x in items:
                out.append(fn(x))
                progress.advance()
            return out
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(fn, x) for x in items]
            try:
                for f in as_completed(futures):
                    f.result()
                    progress.advance()
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise