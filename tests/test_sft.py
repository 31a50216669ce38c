"""SFT stage: accumulation equivalence, exact resume after SIGKILL, 2 processes, end to end."""

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pride.config import ModelSettings, load_config
from pride.errors import PrideError
from pride.models import load_model_and_tokenizer
from pride.train.sft import run_sft
from tests.conftest import write_jsonl


def mixed_conversations(n, seed=0):
    """Multi-turn conversations of very different lengths (like real chat data)."""
    rng = random.Random(seed)
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex".split()
    rows = []
    for _ in range(n):
        msgs = []
        if rng.random() < 0.3:
            msgs.append({"role": "system", "content": "You are terse."})
        for _ in range(rng.choice([1, 1, 2, 3])):
            msgs.append({"role": "user", "content": " ".join(rng.choices(words, k=rng.randint(2, 25)))})
            msgs.append({"role": "assistant", "content": " ".join(rng.choices(words, k=rng.randint(1, 60)))})
        rows.append({"messages": msgs})
    return rows


def config(tmp_path, data, out, *overrides):
    base = ["model.path=tiny:llama", f"data.sources.0.path={data}", f"output_dir={out}",
            "train.learning_rate=1e-3", "train.max_length=256", "train.warmup_ratio=0", "seed=0"]
    return load_config(None, base + list(overrides))


def empty_config(tmp_path):
    """A YAML file with nothing in it: everything comes from the key=value overrides."""
    path = tmp_path / "empty.yaml"
    path.write_text("# all settings come from the command line\n")
    return path


def weights(run_dir):
    return load_file(str(Path(run_dir) / "model" / "model.safetensors"))


def losses(run_dir):
    return [json.loads(l)["loss"] for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "chat.jsonl", mixed_conversations(96))


def test_microbatch_times_accumulation_equals_big_batch(tmp_path, data):
    run_sft(config(tmp_path, data, tmp_path / "big", "train.micro_batch_size=8", "train.max_steps=3"))
    run_sft(config(tmp_path, data, tmp_path / "acc", "train.micro_batch_size=2",
                   "train.gradient_accumulation_steps=4", "train.max_steps=3"))
    # one batch of 8 vs 4 micro-batches of 2: fp32 sums in another order, through 3 AdamW steps
    assert losses(tmp_path / "big") == pytest.approx(losses(tmp_path / "acc"), rel=1e-5)
    big, acc = weights(tmp_path / "big"), weights(tmp_path / "acc")
    for k in big:
        torch.testing.assert_close(big[k], acc[k], atol=1e-5, rtol=1e-5, msg=k)


KILLER = textwrap.dedent("""
    import os, signal, sys
    import pride.train.loop as loop
    original = loop.train
    def train(*args, **kwargs):
        def hook(step):
            if step == int(os.environ["KILL_AT"]):
                os.kill(os.getpid(), signal.SIGKILL)
        kwargs["on_step_end"] = hook
        return original(*args, **kwargs)
    loop.train = train
    from pride.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_resume_after_sigkill_ends_with_identical_weights(tmp_path, data):
    cfg_path = tmp_path / "sft.yaml"
    cfg_path.write_text(f"model: {{path: tiny:llama}}\ndata: {{sources: [{{path: {data}}}]}}\n"
                        "train: {learning_rate: 1.0e-3, max_length: 256, micro_batch_size: 4, max_steps: 8, "
                        "save_steps: 2, save_total_limit: 2}\nseed: 0\n")
    (tmp_path / "killer.py").write_text(KILLER)
    killed = subprocess.run([sys.executable, str(tmp_path / "killer.py"), "sft", str(cfg_path),
                             f"output_dir={tmp_path / 'run'}"], env={**os.environ, "KILL_AT": "5"},
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["checkpoint-2", "checkpoint-4"] and not (tmp_path / "run" / "model").exists()
    resumed = subprocess.run([sys.executable, "-m", "pride", "sft", str(cfg_path), f"output_dir={tmp_path / 'run'}"],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr and "checkpoint-4" in resumed.stderr
    run_sft(load_config(cfg_path, [f"output_dir={tmp_path / 'straight'}"]))
    a, b = weights(tmp_path / "run"), weights(tmp_path / "straight")
    for k in a:
        # resume reloads the exact fp32 weights and optimizer state: the runs agree to rounding of
        # the checkpoint's identical arithmetic; 1e-6 absolute on weights of magnitude ~0.02-1
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)
    steps = [json.loads(l)["step"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # no duplicated or missing metric lines
    assert losses(tmp_path / "run") == pytest.approx(losses(tmp_path / "straight"), rel=1e-6)


def sft_on_two_cpu_processes(tmp_path, args: list[str], out) -> None:
    """`pride sft` under accelerate launch: 2 CPU processes (gloo), plain data parallel."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "pride", "sft",
              str(empty_config(tmp_path)), *args, f"output_dir={out}"]
    two = subprocess.run(launch, capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert two.returncode == 0, two.stderr[-3000:]


def test_two_processes_match_one_process_with_double_accumulation(tmp_path, data):
    """2 CPU processes (gloo) x accumulation 1 == 1 process x accumulation 2, step by step.

    Tolerance: relative 1e-5 on each logged loss (only the order of float sums differs).
    """
    common = ["model.path=tiny:llama", f"data.sources.0.path={data}", "train.learning_rate=1e-3",
              "train.max_length=256", "train.micro_batch_size=2", "train.max_steps=6", "seed=0"]
    sft_on_two_cpu_processes(tmp_path, common, tmp_path / "two")
    run_sft(load_config(None, common + [f"output_dir={tmp_path / 'one'}", "train.gradient_accumulation_steps=2"]))
    # gloo's all-reduce sums the two ranks' gradients in another order than one process does
    two_ran = json.loads((tmp_path / "two" / "summary.json").read_text())["distributed"]
    assert two_ran == {"type": "MULTI_CPU", "world_size": 2, "gradient_accumulation_steps": 1,
                       "mixed_precision": "no", "device": "cpu"}
    assert json.loads((tmp_path / "one" / "summary.json").read_text())["distributed"]["type"] == "none"
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    a, b = weights(tmp_path / "two"), weights(tmp_path / "one")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)


@pytest.mark.slow
def test_global_batch_size_gives_the_same_optimisation_on_1_and_2_processes(tmp_path, data):
    """train.global_batch_size=8 with micro-batch 2: 1 process accumulates 4, 2 processes 2 each;
    the losses agree as in the test above (relative 1e-5: only the order of float sums differs),
    and config.yaml records the launch."""
    common = ["model.path=tiny:llama", f"data.sources.0.path={data}", "train.learning_rate=1e-3",
              "train.max_length=256", "train.micro_batch_size=2", "train.global_batch_size=8", "train.max_steps=4",
              "seed=0"]
    sft_on_two_cpu_processes(tmp_path, common, tmp_path / "two")
    run_sft(load_config(None, common + [f"output_dir={tmp_path / 'one'}"]))
    assert (tmp_path / "two" / "config.yaml").read_text().startswith(
        "# launch: world_size 2, train.gradient_accumulation_steps 2, global batch 8 rows")
    assert (tmp_path / "one" / "config.yaml").read_text().startswith(
        "# launch: world_size 1, train.gradient_accumulation_steps 4, global batch 8 rows")
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["distributed"]["gradient_accumulation_steps"] == 2
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)


def test_sft_on_local_model_dir_end_to_end(tmp_path):
    model, tok, _ = load_model_and_tokenizer(ModelSettings(path="tiny:llama"), seed=0)
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    data = write_jsonl(tmp_path / "chat.jsonl", mixed_conversations(300, seed=1))
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "pride", "sft", str(empty_config(tmp_path)), f"model.path={tmp_path / 'base'}",
                             f"data.sources.0.path={data}", f"output_dir={out}", "train.max_length=1024",
                             "train.learning_rate=2e-3", "train.epochs=2", "train.micro_batch_size=2"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads((out / "data_stats.json").read_text())
    assert stats["packing_efficiency"] >= 0.95, stats
    assert set(weights(out)) == set(load_file(str(tmp_path / "base" / "model.safetensors")))  # same tensor names
    curve = losses(out)
    assert sum(curve[-3:]) / 3 < 0.8 * sum(curve[:3]) / 3, curve
    # Loads with plain transformers, pride made unimportable.
    check = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import sys; sys.modules['pride'] = None
        from transformers import AutoModelForCausalLM, AutoTokenizer
        m = AutoModelForCausalLM.from_pretrained({str(out / 'model')!r})
        t = AutoTokenizer.from_pretrained({str(out / 'model')!r})
        ids = t.apply_chat_template([{{"role": "user", "content": "hi"}}], add_generation_prompt=True,
                                    return_tensors="pt", return_dict=True)
        out = m.generate(**ids, max_new_tokens=5, do_sample=False)
        print("ok", out.shape[1] > ids["input_ids"].shape[1])
    """)], capture_output=True, text=True)
    assert check.returncode == 0 and "ok True" in check.stdout, check.stderr[-3000:]


def test_nothing_trained_fails_at_start(tmp_path, data):
    # Prompts alone fill max_length: every sample is truncated before its first assistant token.
    rows = [{"messages": [{"role": "user", "content": "x" * 300}, {"role": "assistant", "content": "y"}]}] * 4
    path = write_jsonl(tmp_path / "long_prompts.jsonl", rows)
    with pytest.raises(PrideError, match="no training rows left"):
        run_sft(config(tmp_path, path, tmp_path / "run", "train.max_length=64"))


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_non_finite_loss(tmp_path, data, monkeypatch, policy):
    import pride.train.sft as sft

    calls = {"n": 0}
    real = sft.SftObjective.__call__

    def poisoned(self, model, batch):
        calls["n"] += 1
        loss, metrics = real(self, model, batch)
        return (loss * float("nan") if calls["n"] == 3 else loss), metrics

    monkeypatch.setattr(sft.SftObjective, "__call__", poisoned)
    cfg = config(tmp_path, data, tmp_path / "run", "train.micro_batch_size=8", "train.max_steps=4",
                 "train.save_steps=2", f"train.on_nan={policy}")
    if policy == "stop":
        with pytest.raises(PrideError, match="non-finite loss at step 3.*checkpoint-2"):
            run_sft(cfg)
        assert (tmp_path / "run" / "checkpoints" / "checkpoint-2" / "trainer_state.json").exists()
    else:
        run_sft(cfg)
        last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
        assert last["skipped_steps"] == 1 and last["step"] == 4


def test_mask_embed_grad_trains_only_the_named_rows():
    """LIONs' mask_embed_grad: the embedding rows outside [start, end) get no gradient; the rest of the
    model trains as usual."""
    from pride.config import ModelSettings
    from pride.models import load_model
    from pride.train.loop import mask_embedding_grad

    model = load_model(ModelSettings(path="tiny:llama", dtype="fp32"), seed=0)
    ids = torch.arange(0, 60).reshape(3, 20)
    model(input_ids=ids, labels=ids).loss.backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    mask_embedding_grad(model, 10, 30)
    model(input_ids=ids, labels=ids).loss.backward()
    emb = model.get_input_embeddings().weight
    assert emb.grad[:10].abs().sum() == 0 and emb.grad[30:].abs().sum() == 0
    # the same backward pass with a hook that zeroes other rows: torch's default fp32 tolerance
    torch.testing.assert_close(emb.grad[10:30], full["model.embed_tokens.weight"][10:30])
    for n, p in model.named_parameters():
        if "embed_tokens" not in n and "lm_head" not in n:
            torch.testing.assert_close(p.grad, full[n])


def test_a_launch_that_would_not_shard_stops_with_one_line(tmp_path, data):
    """FSDP asked (accelerate's environment) without a process group would train unsharded: pride
    says so and stops (an FSDP launch of 1 or more CPU processes shards: tests/test_fsdp.py)."""
    proc = subprocess.run([sys.executable, "-m", "pride", "sft", str(empty_config(tmp_path)), "model.path=tiny:llama",
                           f"data.sources.0.path={data}", "train.max_steps=1", f"output_dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "ACCELERATE_USE_FSDP": "true"})
    assert proc.returncode == 2
    assert "pride sft: error: the launch asked for FSDP but accelerate runs NO with 1 process(es)" in proc.stderr
    assert not (tmp_path / "run" / "model").exists()


def test_check_launch_compares_what_was_asked_with_what_runs():
    from accelerate import Accelerator

    from pride.errors import PrideError
    from pride.train.loop import check_launch

    acc = Accelerator(cpu=True)
    check_launch(acc, env={})
    with pytest.raises(PrideError, match="DeepSpeed launches are not supported.*configs/accelerate/fsdp.yaml"):
        check_launch(acc, env={"ACCELERATE_USE_DEEPSPEED": "true"})
    with pytest.raises(PrideError, match="2 processes were started .* the process group has 1"):
        check_launch(acc, env={"WORLD_SIZE": "2"})


def test_warmup_steps_round_up_as_hf_trainer():
    from transformers import TrainingArguments

    from pride.train.loop import warmup_steps

    for ratio, total in [(0.1, 30), (0.1, 25), (0.05, 7), (0.03, 1000), (0.1, 1), (0.0, 50)]:
        hf = TrainingArguments(output_dir="unused", warmup_steps=ratio, report_to=[]).get_warmup_steps(total)
        assert warmup_steps(ratio, total) == hf, (ratio, total)


def test_evaluate_and_save_once_per_epoch(tmp_path, data):
    """eval_strategy / save_strategy epoch (HF's): evaluation at each epoch's end, a checkpoint at
    each epoch's end but the last (the final model is saved anyway)."""
    summary = run_sft(config(tmp_path, data, tmp_path / "run", "train.micro_batch_size=8", "train.epochs=3",
                             "data.eval_fraction=0.2", "train.eval_strategy=epoch", "train.save_strategy=epoch"))
    per_epoch = summary["steps"] // 3
    assert summary["steps"] == 3 * per_epoch and per_epoch > 1
    evaluated = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
                 if "eval/loss" in json.loads(x)]
    assert evaluated == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        f"checkpoint-{per_epoch}", f"checkpoint-{2 * per_epoch}"]
