"""Whether the Hugging Face hub can be reached, asked once per process.

Offline, transformers and datasets retry each hub request for about a minute before failing.
One connection attempt (3 s at most) tells pride to load from the local cache only, and to
say at once which setting names what is missing.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@functools.cache
def hub_reachable() -> bool:
    """False under HF_HUB_OFFLINE=1 or when the hub's host takes no connection (behind a proxy,
    the proxy decides: assumed reachable)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    if any(os.environ.get(v) for v in PROXIES):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=3).close()
    except OSError:
        return False
    return True
