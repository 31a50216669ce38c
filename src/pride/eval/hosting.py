"""Host a model behind an OpenAI-compatible API for the length of an evaluation.

vLLM or sglang when installed and on a GPU, otherwise `pride serve`; always on 127.0.0.1
and a free port, logs in the eval directory, stopped afterwards, and stopped too when the
process that started it dies (`die_with_parent`). Online rounds host theirs here too.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from pride.errors import PrideError
from pride.io import make_dir
from pride.models import gpu_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(kind: str, model_ref: str, name: str, port: int, extra_args: list[str] = ()) -> list[str]:
    return _command(kind, model_ref, name, port) + list(extra_args)


def _command(kind: str, model_ref: str, name: str, port: int) -> list[str]:
    if kind == "auto":
        kind = gpu_server() or "pride"
    if kind == "vllm":
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_ref, "--host",
                "127.0.0.1", "--port", str(port), "--served-model-name", name]
    if kind == "sglang":
        return [sys.executable, "-m", "sglang.launch_server", "--model-path", model_ref, "--host", "127.0.0.1",
                "--port", str(port), "--served-model-name", name]
    return [sys.executable, "-m", "pride", "serve", model_ref, "--host", "127.0.0.1", "--port", str(port),
            "--model-name", name]


@contextmanager
def hosted(model_ref: str, name: str, kind: str, log_path: Path, timeout: float = 900, extra_args: list[str] = ()):
    """Yield the base URL (`http://127.0.0.1:PORT/v1`) of a freshly started server (`extra_args`
    go to its command line)."""
    port = free_port()
    cmd = server_command(kind, model_ref, name, port, extra_args)
    make_dir(log_path.parent)
    log = open(log_path, "w")
    guarded = [sys.executable, "-m", "pride.eval.die_with_parent", str(os.getpid()), *cmd]  # no orphan server
    proc = subprocess.Popen(guarded, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise PrideError(f"model server exited ({proc.returncode}); log: {log_path}\n"
                                 + log_path.read_text()[-2000:])
            try:
                with urllib.request.urlopen(base + "/models", timeout=5) as r:
                    json.loads(r.read())
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise PrideError(f"model server did not come up within {timeout:.0f}s; log: {log_path}") from None
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
