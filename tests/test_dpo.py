"""Offline preference stage: reference log-probs, padding-free pairs, end to end."""

import json
import random

import pyarrow.parquet as pq
import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from pride.config import ModelSettings, load_config
from pride.errors import PrideError
from pride.data.packing import collate
from pride.data.preference import tokenize_pairs
from pride.data.rows import PreferencePair
from pride.logps import TokenLogps, sequence_logps
from pride.models import load_model_and_tokenizer
from pride.reference import compute_pair_logps
from pride.train.preference import run_preference
from pride.train.sft import run_sft
from tests.conftest import write_jsonl


def uf_rows(n, seed=0):
    """UltraFeedback-binarized layout; chosen answers the question, rejected rambles off-topic."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        q = f"What is {a}+{b}?"
        bad = rng.choice(["I like turtles.", "No idea, sorry!", "Ask someone else.", "Maybe tomorrow."])
        rows.append({"prompt": q, "prompt_id": f"{a}-{b}", "score_chosen": 9.0, "score_rejected": 1.0,
                     "chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": f"{a}+{b} = {a + b}."}],
                     "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": bad}]})
    return rows


def pairs_for(fmt, n=6):
    """Pairs with prompts of very different lengths (so re-packing has something to remove)."""
    rows = uf_rows(n)
    pairs = [PreferencePair(prompt=[{"role": "user", "content": "Please. " * (i * 5 % 11) + r["prompt"]}],
                            chosen=r["chosen"][1]["content"], rejected=r["rejected"][1]["content"])
             for i, r in enumerate(rows)]
    return tokenize_pairs(pairs, fmt, max_length=256, max_prompt_length=192)


def test_precomputed_reference_equals_live_forward():
    model, tok, fmt = load_model_and_tokenizer(ModelSettings(path="tiny:llama"), seed=0)
    data = pairs_for(fmt)
    pre = compute_pair_logps(Accelerator(cpu=True), model, data.rows, tok.pad_token_id, batch_size=4)
    with torch.no_grad():
        for i, (c, r) in enumerate(data.rows):
            for sample, value, count in ((c, pre.chosen[i], pre.chosen_tokens[i]), (r, pre.rejected[i], pre.rejected_tokens[i])):
                logits = model(input_ids=torch.tensor([sample.input_ids]), use_cache=False).logits[0]
                logp = torch.log_softmax(logits.float(), -1)
                live = sum(logp[t, y] for t, y in enumerate(sample.labels) if y != -100)
                assert count == sample.n_targets
                # fp32 sums of up to ~100 token log-probs of magnitude ~5, batched vs one by one:
                # ~1e-6 relative each, 1e-4 on the sum covers the accumulation
                torch.testing.assert_close(torch.tensor(float(value)), live.double().float(), atol=1e-4, rtol=1e-5)


def test_padding_free_pairs_equal_padded():
    model, tok, fmt = load_model_and_tokenizer(ModelSettings(path="tiny:gemma"), seed=0)
    data = pairs_for(fmt, 8)
    wrapper = TokenLogps(model, chunk_size=16)
    results = []
    for layout in ("repack", "split"):
        batch = collate(data.rows, tok.pad_token_id, layout=layout)
        with torch.no_grad():
            seq = sequence_logps(wrapper(**batch.inputs()), batch.target_seq, batch.n_seqs)
        order = sorted(range(batch.n_seqs), key=lambda j: (int(batch.seq_example[j]), int(batch.seq_kind[j])))
        results.append((seq[order], batch.n_slots))
    (packed, packed_slots), (padded, padded_slots) = results
    # fp32, same weights, another layout or order of work: only the order of float sums differs;
    # log-probs agree to ~1e-6 here, and the suite passes with these on AVX2, AVX-512 and ATen
    # without SIMD + MKL_CBWR=COMPATIBLE; a leaked or dropped token moves them by > 1e-2.
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
    assert packed_slots < padded_slots


def test_truncation_and_skips():
    _, tok, fmt = load_model_and_tokenizer(ModelSettings(path="tiny:llama"), seed=0)
    long_prompt = [{"role": "user", "content": "x" * 200}]
    pairs = [PreferencePair(prompt=long_prompt, chosen="good answer", rejected="bad answer"),
             PreferencePair(prompt=[{"role": "user", "content": "q"}], chosen="same", rejected="same"),
             PreferencePair(prompt=long_prompt, chosen="a", rejected="b")]
    data = tokenize_pairs(pairs, fmt, max_length=80, max_prompt_length=70)
    assert data.status == ["ok", "identical", "ok"] and data.stats["truncated"] == 2
    chosen = data.rows[0][0]
    assert len(chosen) <= 80 and chosen.input_ids[0] == tok.bos_token_id  # keep-end prompt keeps its BOS
    assert tok.decode([t for t in chosen.labels if t != -100]).startswith("good answ")  # keep-start completion
    data = tokenize_pairs(pairs[:1], fmt, max_length=70, max_prompt_length=70)
    assert data.status == ["empty_completion"] and not data.rows


def dpo_config(tmp_path, model, data, out, *extra):
    return load_config(None, [f"model.path={model}", f"data.sources.0.path={data}", f"output_dir={out}",
                              "train.learning_rate=1e-3", "train.micro_batch_size=4", "train.warmup_ratio=0",
                              "seed=0", *extra])


def test_precomputed_and_live_reference_train_to_the_same_weights(tmp_path):
    data = write_jsonl(tmp_path / "uf.jsonl", uf_rows(24))
    run_preference(dpo_config(tmp_path, "tiny:llama", data, tmp_path / "pre", "train.max_steps=4"))
    run_preference(dpo_config(tmp_path, "tiny:llama", data, tmp_path / "live", "train.max_steps=4", "preference.reference=live"))
    assert not (tmp_path / "live" / "reference_logps.parquet").exists()
    a, b = load_file(str(tmp_path / "pre/model/model.safetensors")), load_file(str(tmp_path / "live/model/model.safetensors"))
    for k in a:
        # 4 AdamW steps from reference log-probs that differ in the last fp32 bits (stored vs live)
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5, msg=k)


def test_dpo_on_sft_output_with_ultrafeedback_layout(tmp_path):
    chats = write_jsonl(tmp_path / "chat.jsonl", [{"messages": r["chosen"]} for r in uf_rows(64, seed=1)])
    run_sft(load_config(None, ["model.path=tiny:llama", f"data.sources.0.path={chats}", f"output_dir={tmp_path / 'sft'}",
                               "train.learning_rate=2e-3", "train.max_steps=10", "seed=0"]))
    data = write_jsonl(tmp_path / "uf.jsonl", uf_rows(64))
    cfg = dpo_config(tmp_path, tmp_path / "sft" / "model", data, tmp_path / "dpo", "train.epochs=2",
                     "preference.beta=0.1", "train.learning_rate=5e-4")
    summary = run_preference(cfg)
    metrics = [json.loads(x) for x in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected", "loss", "grad_norm", "lr", "tokens_per_s"):
        assert key in metrics[-1]
    late = [m["rewards/accuracies"] for m in metrics[len(metrics) // 2:]]
    assert sum(late) / len(late) > 0.5, late
    assert metrics[-1]["loss"] < 0.6931
    table = pq.read_table(tmp_path / "dpo" / "reference_logps.parquet")
    assert {"ref_chosen_logps", "ref_rejected_logps", "chosen_tokens", "rejected_tokens"} <= set(table.column_names)
    assert table.num_rows == 64 and summary["steps"] == len(metrics)
    cols = table.to_pydict()
    assert all(c > 0 for c in cols["chosen_tokens"]) and all(v < 0 for v in cols["ref_chosen_logps"])
    # A second run with the same inputs reuses the stored values (cache hit).
    stamp = (tmp_path / "dpo" / "reference_logps.parquet").stat().st_mtime_ns
    again = run_preference(cfg.model_copy(update={"train": cfg.train.model_copy(update={"resume": "never"})}))
    assert again["steps"] == summary["steps"]
    assert (tmp_path / "dpo" / "reference_logps.parquet").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "dpo_gamma", "slic_dpo", "simpo", "sppo",
                                       "sppo_single", "sppo_hard", "robust", "bco_pair", "nca_pair", "apo_zero",
                                       "apo_down"])
def test_every_loss_trains_through_the_stage(tmp_path, loss_type):
    rows = uf_rows(8)
    for i, r in enumerate(rows):  # scored rows (SPPO)
        r["chosen_win_prob"], r["rejected_win_prob"] = 0.6 + 0.01 * i, 0.3
        r["chosen_probs"] = 0.7 + 0.01 * i
    data = write_jsonl(tmp_path / "scored.jsonl", rows)
    summary = run_preference(dpo_config(tmp_path, "tiny:llama", data, tmp_path / "run", "train.max_steps=2",
                                 f"preference.loss_type={loss_type}", "preference.gamma=0.5",
                                 "preference.label_smoothing=0.1", "preference.nll_weight=0.2"))
    assert summary["steps"] == 2 and torch.isfinite(torch.tensor(summary["final"]["loss"]))
    assert (tmp_path / "run" / "reference_logps.parquet").exists() == (loss_type != "simpo")


def test_sppo_single_without_chosen_probs_names_the_row(tmp_path):
    rows = uf_rows(4)
    for r in rows:
        r["chosen_probs"] = 0.8
    del rows[2]["chosen_probs"]
    data = write_jsonl(tmp_path / "scored.jsonl", rows)
    with pytest.raises(PrideError, match=r"scored.jsonl line 3: loss_type 'sppo_single' needs chosen_probs"):
        run_preference(dpo_config(tmp_path, "tiny:llama", data, tmp_path / "run", "train.max_steps=1",
                                  "preference.loss_type=sppo_single", "data.shuffle=false"))


def test_reference_cache_survives_a_new_skipped_pair_and_a_torn_file(tmp_path, monkeypatch):
    """Issue 17, point 4: the cache is read by content; a broken file is recomputed."""
    import pride.reference as reference

    computed = []
    real = reference.compute_pair_logps
    monkeypatch.setattr(reference, "compute_pair_logps", lambda *a, **k: computed.append(1) or real(*a, **k))
    rows = uf_rows(12)
    data = write_jsonl(tmp_path / "uf.jsonl", rows)
    cfg = dpo_config(tmp_path, "tiny:llama", data, tmp_path / "run", "train.max_steps=1", "train.resume=never")
    run_preference(cfg)
    ref = tmp_path / "run" / "reference_logps.parquet"
    first = pq.read_table(ref).to_pydict()
    before = {k: v for k, v in zip(first["pair_key"], first["ref_chosen_logps"])}
    same = {"prompt": "Q", "chosen": "same", "rejected": "same"}  # skipped: identical completions
    write_jsonl(data, [same] + rows + [same])  # shifts every input position (main: IndexError)
    run_preference(cfg)
    assert len(computed) == 1  # a cache hit
    after = pq.read_table(ref).to_pydict()
    assert after["status"].count("identical") == 2 and len(after["status"]) == 14
    assert {k: v for k, v in zip(after["pair_key"], after["ref_chosen_logps"]) if k} == before
    ref.write_bytes(ref.read_bytes()[:100])  # torn
    run_preference(cfg)  # recomputed with a warning, no traceback
    assert len(computed) == 2 and pq.read_table(ref).num_rows == 14
