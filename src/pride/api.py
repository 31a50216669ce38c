"""Client for OpenAI-compatible chat endpoints (judges, samplers, answer generation).

Retries transient failures (connection errors, 429, 5xx) with exponential backoff, keeps
an optional request rate, and caches responses on disk (sqlite) keyed by the request, so
re-running an evaluation never pays twice for the same judgment. The API key comes from
an environment variable and is only ever put in the Authorization header.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from pride.errors import PrideError


class ChatClient:
    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, cache_path: str | Path | None = None,
                 max_retries: int = 5, requests_per_second: float | None = None, timeout: float = 600):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.key = os.environ.get(api_key_env, "") if api_key_env else ""
        self.max_retries, self.timeout = max_retries, timeout
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
        if self.max_tokens_cap and params.get("max_tokens"):
            params["max_tokens"] = min(params["max_tokens"], self.max_tokens_cap)
        body = {"model": self.model, "messages": messages, **{k: v for k, v in params.items() if v is not None}}
        key = hashlib.sha256(json.dumps([self.url, body], sort_keys=True).encode()).hexdigest()
        if self._db is not None:
            with self._lock:
                row = self._db.execute("SELECT body FROM responses WHERE key = ?", (key,)).fetchone()
            if row:
                return json.loads(row[0])
        response = self._post(body)
        if self._db is not None:
            with self._lock:
                self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?)", (key, json.dumps(response)))
                self._db.commit()
        return response

    def text(self, messages: list[dict], **params) -> str:
        return self.complete(messages, **params)["choices"][0]["message"]["content"] or ""

    def _post(self, body: dict) -> dict:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {self.key}"} if self.key else {})}
        last_error = ""
        for attempt in range(self.max_retries + 1):
            self._pace()
            try:
                req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    self.calls += 1
                    return json.loads(resp.read())
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode("utf-8", "replace")
                if e.code not in (408, 409, 429) and e.code < 500:
                    raise PrideError(f"{self.url}: HTTP {e.code}: {detail}") from None
                last_error = f"HTTP {e.code}: {detail}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last_error = str(getattr(e, "reason", e))
            time.sleep(min(30.0, 0.5 * 2 ** attempt))
        raise PrideError(f"{self.url}: failed after {self.max_retries + 1} tries ({last_error})")

    def _pace(self) -> None:
        if not self.interval:
            return
        with self._lock:
            wait = self._last + self.interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last = time.monotonic()
