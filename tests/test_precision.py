"""Issue 17, point 1: bf16 weights are trained with fp32 master weights, so small updates survive."""

import torch
from safetensors.torch import load_file

from pride.config import ModelSettings
from pride.models import load_model_and_tokenizer
from pride.train.preference import run_preference
from pride.train.sft import run_sft
from tests.conftest import write_jsonl
from tests.test_dpo import dpo_config, uf_rows


def bf16_model_dir(tmp_path):
    """A model saved in bf16, as real checkpoints are."""
    model, tok, _ = load_model_and_tokenizer(ModelSettings(path="tiny:llama", tiny={"hidden_size": 128}), seed=0)
    out = tmp_path / "bf16-model"
    model.to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def changed_fraction(start: dict, run_dir) -> float:
    end = load_file(str(run_dir / "model" / "model.safetensors"))
    changed = total = 0
    for k, v in start.items():
        changed += int((end[k].float() != v.float()).sum())
        total += v.numel()
    return changed / total


def test_dpo_at_seed_learning_rate_moves_a_bf16_model_like_fp32(tmp_path):
    model_dir = bf16_model_dir(tmp_path)
    start = load_file(str(model_dir / "model.safetensors"))
    data = write_jsonl(tmp_path / "uf.jsonl", uf_rows(40))
    frac = {}
    for name, extra in (("fp32", ["model.dtype=fp32"]), ("bf16", ["model.dtype=bf16"]),
                        ("pure", ["model.dtype=bf16", "train.precision=pure"])):
        run_preference(dpo_config(tmp_path, model_dir, data, tmp_path / name, "train.max_steps=10",
                           "train.learning_rate=5e-7", *extra))
        frac[name] = changed_fraction(start, tmp_path / name)
    print("changed fraction", frac)
    assert frac["fp32"] > 0.5, frac
    assert frac["bf16"] >= 0.5 * frac["fp32"], frac  # main: 0.5% of elements vs 87% in fp32
    assert frac["pure"] < 0.1 * frac["fp32"], frac  # what pure low-precision training loses, on request only


def test_mixed_precision_computes_in_bf16_and_updates_in_fp32(tmp_path, monkeypatch):
    """The optimizer holds fp32 weights; the forward runs under bf16 autocast."""
    import pride.train.loop as loop

    seen = {}
    real_train = loop.train

    def spy(cfg, *, accelerator, model, **kw):
        seen["param_dtypes"] = {p.dtype for p in model.parameters() if p.requires_grad}
        seen["autocast"] = accelerator.mixed_precision
        return real_train(cfg, accelerator=accelerator, model=model, **kw)

    monkeypatch.setattr("pride.train.loop.train", spy)
    chats = write_jsonl(tmp_path / "chat.jsonl", [{"messages": r["chosen"]} for r in uf_rows(8)])
    run_sft(dpo_config(tmp_path, bf16_model_dir(tmp_path), chats, tmp_path / "sft", "train.max_steps=1",
                       "model.dtype=bf16"))
    assert seen == {"param_dtypes": {torch.float32}, "autocast": "bf16"}
