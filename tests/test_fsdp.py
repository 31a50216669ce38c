"""Sharded training on CPU (issue 24): `accelerate launch --config_file configs/accelerate/fsdp.yaml`
with 2 CPU processes (gloo) runs accelerate's FSDP2 path, the one GPUs run (`shard_on_cpu`).

Each rank holds half of every sharded parameter; SFT and DPO follow the loss curve of one
process with the same global batch; a run killed after a checkpoint resumes to the weights of
an uninterrupted one; `model/` is one full HF directory; `eval.checkpoints` exports an FSDP
checkpoint; reference log-probs equal one process's. Slow: each launch starts two processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.conftest import write_jsonl
from tests.test_dpo import uf_rows
from tests.test_sft import empty_config, losses, mixed_conversations, weights

ROOT = Path(__file__).resolve().parents[1]
FSDP = ["--config_file", str(ROOT / "configs" / "accelerate" / "fsdp.yaml"), "--num_processes", "2"]
CPU = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


def launch(tmp_path, script: list[str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", *FSDP, *script, *map(str, args)],
                          capture_output=True, text=True, cwd=tmp_path, env=CPU)


def pride(tmp_path, *args):
    return launch(tmp_path, ["-m", "pride"], *args)


KILLED_AFTER_STEP_3 = textwrap.dedent("""
    import os, signal, sys
    import pride.train.loop as loop
    real = loop.train
    def train(*args, **kwargs):
        def hook(done):
            if done == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **{**kwargs, "on_step_end": hook})
    loop.train = train
    from pride.cli import main
    sys.exit(main(sys.argv[1:]))
""")

SHARDS = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from pride.config import TrainSettings
    from pride.logps import TokenLogps
    from pride.tiny import tiny_model
    from pride.train.loop import make_accelerator
    import torch
    acc = make_accelerator(TrainSettings(), Path(sys.argv[1]))
    wrapper = TokenLogps(tiny_model("llama", seed=0))
    wrapper, _ = acc.prepare(wrapper, torch.optim.AdamW(wrapper.parameters(), lr=1e-3))
    out = {n: [type(p).__name__, list(p.shape), list(p.to_local().shape)] for n, p in wrapper.named_parameters()}
    Path(sys.argv[1], f"shards-{acc.process_index}.json").write_text(json.dumps(out))
""")


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("fsdp-data") / "chat.jsonl", mixed_conversations(64))


@pytest.mark.slow
def test_every_rank_holds_half_of_each_parameter(tmp_path):
    (tmp_path / "shards.py").write_text(SHARDS)
    done = launch(tmp_path, [str(tmp_path / "shards.py")], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"shards-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and len(ranks[0]) > 10
    for name in ranks[0]:
        (kind0, full, local0), (kind1, _, local1) = ranks[0][name], ranks[1][name]
        assert kind0 == kind1 == "DTensor", name
        assert local0[0] + local1[0] == full[0] and local0[0] == (full[0] + 1) // 2, (name, full, local0, local1)
        assert local0[1:] == full[1:], name  # sharded by rows (dim 0), as FSDP2 does


@pytest.mark.slow
def test_fsdp_sft_matches_one_process_resumes_and_saves_a_full_model(tmp_path, chats):
    common = [str(empty_config(tmp_path)), "model.path=tiny:llama", f"data.sources.0.path={chats}",
              "train.learning_rate=1e-3", "train.max_length=256", "train.micro_batch_size=2", "train.max_steps=6",
              "train.save_steps=2", "train.mask_embed_grad=[200,null]", "seed=0"]
    (tmp_path / "killed.py").write_text(KILLED_AFTER_STEP_3)
    killed = launch(tmp_path, [str(tmp_path / "killed.py"), "sft"], *common, f"output_dir={tmp_path / 'resumed'}")
    assert killed.returncode != 0
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["checkpoint-2"]
    resumed = pride(tmp_path, "sft", *common, f"output_dir={tmp_path / 'resumed'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "checkpoint-2" in resumed.stderr
    straight = pride(tmp_path, "sft", *common, f"output_dir={tmp_path / 'straight'}")
    assert straight.returncode == 0, straight.stderr[-3000:]
    from pride.config import load_config
    from pride.train.sft import run_sft

    run_sft(load_config(None, common[1:] + [f"output_dir={tmp_path / 'one'}", "train.gradient_accumulation_steps=2"]))

    ran = json.loads((tmp_path / "straight" / "summary.json").read_text())["distributed"]
    assert ran == {"type": "FSDP", "world_size": 2, "gradient_accumulation_steps": 1, "mixed_precision": "no",
                   "device": "cpu"}
    a, b, one = weights(tmp_path / "resumed"), weights(tmp_path / "straight"), weights(tmp_path / "one")
    assert a.keys() == b.keys() == one.keys()
    for k in a:
        # resume reloads the gathered fp32 weights and optimizer state: only rounding of identical
        # arithmetic remains (as for one process, test_sft)
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)
        # gloo's reduce-scatter sums the two ranks' gradients in another order than one process: the
        # same tolerance as the DDP test (test_two_processes_match_one_process_with_double_accumulation)
        torch.testing.assert_close(b[k], one[k], atol=1e-5, rtol=1e-4, msg=k)
    assert losses(tmp_path / "straight") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    assert losses(tmp_path / "resumed") == pytest.approx(losses(tmp_path / "straight"), rel=1e-6)
    # mask_embed_grad under FSDP: the hooks sit on the sharded parameters, rows below 200 never move
    from pride.tiny import tiny_model

    start = tiny_model("llama", seed=0).state_dict()["model.embed_tokens.weight"]
    assert torch.equal(b["model.embed_tokens.weight"][:200], start[:200])
    assert not torch.equal(b["model.embed_tokens.weight"][200:], start[200:])

    # model/ is one full HF directory
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "straight" / "model")
    assert sum(p.numel() for p in loaded.parameters()) == sum(v.numel() for v in one.values())

    # eval.checkpoints exports the FSDP checkpoint (full state dict) to an HF directory
    from pride.export import checkpoint_weights, exported

    ckpt = tmp_path / "straight" / "checkpoints" / "checkpoint-4"
    assert (ckpt / "pytorch_model_fsdp.bin").is_file()
    stored = checkpoint_weights(ckpt)
    with exported(ckpt) as out:
        model = AutoModelForCausalLM.from_pretrained(out)
        for name, p in model.state_dict().items():
            assert torch.equal(p, stored[f"model.{name}"]), name


@pytest.mark.slow
def test_fsdp_dpo_matches_one_process_with_the_same_reference_logps(tmp_path):
    import pyarrow.parquet as pq

    data = write_jsonl(tmp_path / "uf.jsonl", uf_rows(32))
    common = [str(empty_config(tmp_path)), "model.path=tiny:llama", f"data.sources.0.path={data}",
              "train.learning_rate=1e-3", "train.micro_batch_size=4", "train.warmup_ratio=0", "train.max_steps=3",
              "seed=0"]
    two = pride(tmp_path, "dpo", *common, f"output_dir={tmp_path / 'two'}")
    assert two.returncode == 0, two.stderr[-3000:]
    from pride.config import load_config
    from pride.train.preference import run_preference

    run_preference(load_config(None, common[1:] + [f"output_dir={tmp_path / 'one'}",
                                                   "train.gradient_accumulation_steps=2"]))
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["distributed"]["type"] == "FSDP"
    ref_two = pq.read_table(tmp_path / "two" / "reference_logps.parquet").to_pydict()
    ref_one = pq.read_table(tmp_path / "one" / "reference_logps.parquet").to_pydict()
    assert ref_two["pair_key"] == ref_one["pair_key"] and ref_two["chosen_tokens"] == ref_one["chosen_tokens"]
    for col in ("ref_chosen_logps", "ref_rejected_logps"):
        # the same model and tokens, batched per rank instead of all together: fp32 sums in another order
        assert ref_two[col] == pytest.approx(ref_one[col], rel=1e-6), col
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)


@pytest.mark.slow
def test_a_sharded_state_dict_checkpoint_resumes_and_exports(tmp_path, chats):
    """fsdp_state_dict_type SHARDED_STATE_DICT: each rank writes its shard (torch.distributed.checkpoint);
    a resumed run continues from it, and eval's export merges it with accelerate's merge_fsdp_weights."""
    common = [str(empty_config(tmp_path)), "model.path=tiny:llama", f"data.sources.0.path={chats}",
              "train.max_length=256", "train.micro_batch_size=2", "train.save_steps=2", "seed=0",
              f"output_dir={tmp_path / 'run'}"]
    sharded = ["--fsdp_state_dict_type", "SHARDED_STATE_DICT", "-m", "pride", "sft"]
    first = launch(tmp_path, sharded, *common, "train.max_steps=3")
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = tmp_path / "run" / "checkpoints" / "checkpoint-2"
    assert (ckpt / "pytorch_model_fsdp_0").is_dir() and not (ckpt / "pytorch_model_fsdp.bin").exists()
    from transformers import AutoModelForCausalLM

    from pride.export import exported

    with exported(ckpt) as out:
        model = AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) == sum(v.numel() for v in weights(tmp_path / "run").values())
    # the same run again, as if killed after checkpoint-2 (a finished run would be left as it is),
    # resumes from its newest checkpoint, reading the sharded model and optimizer state
    (tmp_path / "run" / "summary.json").unlink()
    more = launch(tmp_path, sharded, *common, "train.max_steps=3", "train.resume=auto")
    assert more.returncode == 0 and "resumed from" in more.stderr and "checkpoint-2" in more.stderr, more.stderr[-3000:]
