"""`pride chat MODEL_DIR`: talk to a model in the terminal, through its own chat template.

For a quick look at what a stage made: each turn is rendered exactly as training and `pride
serve` render it (`ChatFormat`), answered by pride's engine. `/reset` starts over, `/exit` or
end of input (Ctrl-D) ends.
"""

from __future__ import annotations

import sys


def chat(model_ref: str, system: str | None = None, temperature: float = 0.7, max_new_tokens: int = 512,
         seed: int = 0, stdin=None, stdout=None) -> int:
    from pride.config import ModelSettings
    from pride.engine import Engine
    from pride.models import load_model_and_tokenizer

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    model, tok, fmt = load_model_and_tokenizer(ModelSettings(path=model_ref), seed=seed)
    context = getattr(model.config, "max_position_embeddings", None) or 4096  # as pride serve takes it
    engine = Engine(model, tok, max_batch_size=1, offline=True)
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    interactive = stdin.isatty()
    turn = 0
    print(f"pride chat: {model_ref} (temperature {temperature}; /reset, /exit)", file=stdout, flush=True)
    while True:
        if interactive:
            print("you> ", end="", file=stdout, flush=True)
        raw = stdin.buffer.readline() if hasattr(stdin, "buffer") else stdin.readline()
        try:  # a line that is not UTF-8 is refused alone, the next one is read as usual
            line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError as e:
            print(f"pride chat: that line is not UTF-8 text (byte {e.start}); type it again", file=stdout, flush=True)
            continue
        if not line or line.strip() == "/exit":
            return 0
        text = line.rstrip("\n")
        if text.strip() == "/reset":
            messages = list(start)
            print("(new conversation)", file=stdout, flush=True)
            continue
        if not text.strip():
            continue
        messages.append({"role": "user", "content": text})
        ids = fmt.encode_prompt(messages)
        if len(ids) >= context:  # as pride serve refuses it: the model has no positions past its context
            messages.pop()
            print(f"pride chat: the conversation would be {len(ids)} tokens; this model's context is {context} "
                  "tokens. Say less, or /reset", file=stdout, flush=True)
            continue
        (answer,), = engine.complete([ids], 1, [[seed * 1_000_003 + turn]], temperature=temperature,
                                     max_tokens=min(max_new_tokens, context - len(ids)))
        turn += 1
        messages.append({"role": "assistant", "content": answer})
        print(f"model> {answer}", file=stdout, flush=True)


__all__ = ["chat"]
