"""pride's one generation engine, below its three callers: `pride serve` (the HTTP face in
`pride.serve`), online sampling (`pride.online`) and the demo's evaluation (`pride.demo`).

* `requests`: what a caller asks for (`Request`) and how generated tokens become its text,
  logprobs and finish reasons (`Row`, detokenized token by token);
* `sampling`: greedy or top-p sampling per row, each row from its own generator;
* `cache`: the KV cache of a batch whose rows come and go;
* `scheduler`: continuous batching (`Lane`): waiting rows join the running batch at every
  decode step, their prompts prefilled beside it in chunks, finished rows leave at once;
* `engine`: the worker thread and the calls (`submit`, `generate`, `complete`).
"""

from pride.engine.engine import Engine, decode_attention
from pride.engine.requests import Request
from pride.engine.sampling import sampling_scores

__all__ = ["Engine", "Request", "decode_attention", "sampling_scores"]
