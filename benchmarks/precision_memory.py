"""Bytes per trainable parameter that training holds, for each precision policy.

    python benchmarks/precision_memory.py

Loads a Llama-3-like model the way pride does for training (`load_for_training`'s
`apply_precision`), runs one AdamW step through accelerate (autocast as `make_accelerator` sets
it; the loop's AdamW is fused where it can be, which keeps the same state tensors: exp_avg and
exp_avg_sq in the weights' dtype), then counts the bytes of what stays alive between
steps: weights, gradients (before `zero_grad`) and optimizer state. Counted from the
tensors themselves, so the numbers are exact and the same on any machine; autocast's
transient low-precision copies of the weights during a forward are not included.
Prints a markdown table (BENCHMARKS.md, "Precision").
"""

from __future__ import annotations

import argparse

import torch

from pride.config import ModelSettings, TrainSettings
from pride.models import load_model_and_tokenizer
from pride.train.loop import _param_groups, make_accelerator
from pride.train.stage import apply_precision

POLICIES = [  # (name, model.dtype, train.precision)
    ("fp32 weights", "fp32", "mixed"),
    ("bf16 weights, precision=mixed (default)", "bf16", "mixed"),
    ("bf16 weights, precision=pure", "bf16", "pure"),
]


def measure(dtype: str, precision: str, shape: dict, tmp: str) -> dict:
    settings = ModelSettings(path="tiny:llama", dtype=dtype, tiny=shape)
    train = TrainSettings(precision=precision)
    acc = make_accelerator(train, tmp, dtype)
    model, _, _ = load_model_and_tokenizer(settings, seed=0, device=acc.device)
    apply_precision(model, precision)
    optimizer = torch.optim.AdamW(_param_groups(model, 0.0), lr=1e-5)
    model, optimizer = acc.prepare(model, optimizer)
    ids = torch.randint(0, 256, (2, 64))
    with acc.autocast():
        loss = model(input_ids=ids, labels=ids).loss
    acc.backward(loss)
    optimizer.step()
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)

    def size(ts):
        return sum(t.numel() * t.element_size() for t in ts)

    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.numel() > 1]
    out = {"weights": size(params) / n, "gradients": size(p.grad for p in params) / n, "adamw_state": size(state) / n,
           "autocast": acc.mixed_precision, "params": n}
    out["total"] = out["weights"] + out["gradients"] + out["adamw_state"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=256)
    args = ap.parse_args()
    import tempfile

    shape = dict(hidden_size=args.hidden, intermediate_size=3 * args.hidden, num_hidden_layers=2)
    print("| policy | autocast | weights | gradients | AdamW state | total bytes / parameter |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name, dtype, precision in POLICIES:
            m = measure(dtype, precision, shape, tmp)
            print(f"| {name} | {m['autocast']} | {m['weights']:g} | {m['gradients']:g} | {m['adamw_state']:g} | "
                  f"**{m['total']:g}** |")


if __name__ == "__main__":
    main()
