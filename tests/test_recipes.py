"""Every published recipe validates, and runs once in tiny form (override keys only, no edits)."""

from pathlib import Path

import pytest

from pride.errors import PrideError
from pride.recipe import load_recipe, run_recipe
from tests.conftest import write_jsonl
from tests.test_online import tiny_pairrm

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
ARCH = {"google/gemma-2b": "tiny:gemma", "meta-llama/Meta-Llama-3-8B": "tiny:llama",
        "meta-llama/Meta-Llama-3-8B-Instruct": "tiny:llama", "mistralai/Mistral-7B-Instruct-v0.2": "tiny:mistral",
        "HuggingFaceH4/mistral-7b-sft-beta": "tiny:mistral", "allenai/tulu-2-13b": "tiny:llama",
        "google/gemma-2-9b-it": "tiny:gemma2",
        "utter-project/EuroLLM-1.7B-Instruct": "tiny:llama", "martimfasantos/gemma-2-2b-it-MT-SFT": "tiny:gemma2",
        "martimfasantos/TinyLlama-1.1B-MT-SFT": "tiny:llama"}


def test_recipes_exist_and_name_their_source():
    assert len(RECIPES) >= 8
    for path in RECIPES:
        recipe, stages = load_recipe(path)
        assert recipe.source and recipe.reproduces and stages, path
        assert stages[0].config.model.path in ARCH, f"{path}: add its architecture to ARCH"


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tinydata")
    chats = [{"messages": [{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i} it is."}]}
             for i in range(12)]
    prefs = [{"prompt": f"Say {i}.", "chosen": f"{i}.", "rejected": f"No, {i + 1}."} for i in range(12)]
    return {"chat": write_jsonl(d / "chat.jsonl", chats), "pref": write_jsonl(d / "pref.jsonl", prefs),
            "prompts": write_jsonl(d / "prompts.jsonl", [{"prompt": f"Count to {i}."} for i in range(8)]),
            "pairrm": tiny_pairrm(d / "pairrm")}


def tiny_overrides(path: Path, files: dict, out: Path) -> list[str]:
    _, stages = load_recipe(path)
    over = [f"model.path={ARCH[stages[0].config.model.path]}", "model.tokenizer=null", "model.dtype=fp32",
            f"output_dir={out}", "train.report_to=[]"]
    for s in stages:
        data = {"sft": files["chat"], "dpo": files["pref"]}.get(s.type, files["prompts"])
        sources = 2 if s.config.online.prompt_split == "per_source" and s.type in ("online", "sppo") else 1
        evaluates = s.config.train.eval_strategy == "epoch" or s.config.train.eval_steps  # needs held-out rows
        held_out = files["pref"] if s.type in ("online", "sppo") else data  # a round evaluates preference pairs
        over += [f"{s.name}.data.sources=[{', '.join([f'{{path: {data}}}'] * sources)}]",
                 f"{s.name}.data.eval_sources=[{f'{{path: {held_out}}}' if evaluates else ''}]",
                 f"{s.name}.train.max_steps=2", f"{s.name}.train.max_length=256",
                 f"{s.name}.train.save_steps=null", f"{s.name}.train.report_to=[]"]
        if s.config.train.mask_embed_grad:  # the tiny vocabulary's rows
            over.append(f"{s.name}.train.mask_embed_grad=[0, 64]")
        if s.type in ("online", "sppo"):
            over += [f"{s.name}.online.max_new_tokens=6", f"{s.name}.online.iterations=2",
                     f"{s.name}.online.temperature=1.0"]
            if s.config.online.judge.type == "pairrm":
                over.append(f"{s.name}.online.judge.path={files['pairrm']}")
            if s.config.online.mix_offline is not None:
                over.append(f"{s.name}.online.mix_offline.path={files['pref']}")
    return over


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_runs_in_tiny_form(path, tiny_files, tmp_path):
    done = run_recipe(path, tiny_overrides(path, tiny_files, tmp_path / "run"))
    _, stages = load_recipe(path)
    assert [d["stage"] for d in done] == [s.name for s in stages]
    for d in done:
        assert Path(d["model"], "config.json").exists(), d


def test_rerun_skips_finished_stages_and_reruns_changed_ones(tiny_files, tmp_path, capsys):
    path = Path(__file__).resolve().parents[1] / "recipes" / "llm_dpo-tulu2-13b.yaml"
    over = tiny_overrides(path, tiny_files, tmp_path / "run")
    first = run_recipe(path, over)
    stamp = (tmp_path / "run" / "dpo" / "model" / "model.safetensors").stat().st_mtime_ns
    again = run_recipe(path, over)
    assert again[0]["config_hash"] == first[0]["config_hash"]
    assert (tmp_path / "run" / "dpo" / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    changed = run_recipe(path, over + ["dpo.preference.beta=0.2"])
    assert changed[0]["config_hash"] != first[0]["config_hash"]


def test_recipe_errors_name_the_stage(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {path: tiny:llama}\nstages:\n  - {name: a, type: sft, train: {lerning_rate: 1}}\n")
    with pytest.raises(PrideError, match=r"stage 'a'.*unknown key 'train.lerning_rate'"):
        load_recipe(bad)
    bad.write_text("model: {path: tiny:llama}\nstages:\n  - {name: a, type: dpo, from: z}\n")
    with pytest.raises(PrideError, match="starts from 'z'"):
        load_recipe(bad)


def test_a_rerun_follows_the_bytes_of_every_input(tiny_files, tmp_path):
    """Same paths, other bytes: a data file edited in place re-runs its stage and everything
    downstream; a replaced model re-runs the stages that start from it; unchanged inputs skip."""
    import shutil

    from tests.conftest import write_jsonl

    data = {k: shutil.copy(v, tmp_path / Path(v).name) for k, v in tiny_files.items() if k != "pairrm"}
    recipe = tmp_path / "two.yaml"
    recipe.write_text(f"model: {{path: 'tiny:llama'}}\noutput_dir: {tmp_path / 'run'}\ntrain: {{max_steps: 2}}\n"
                      f"stages:\n  - {{name: sft, type: sft, data: {{sources: [{{path: {data['chat']}}}]}}}}\n"
                      f"  - {{name: dpo, type: dpo, data: {{sources: [{{path: {data['pref']}}}]}}}}\n")
    first = [d["config_hash"] for d in run_recipe(recipe)]
    assert [d["config_hash"] for d in run_recipe(recipe)] == first  # unchanged: both skipped
    rows = [{"messages": [{"role": "user", "content": "Say 0."}, {"role": "assistant", "content": "Zero."}]}]
    write_jsonl(data["chat"], rows * 12)  # the same path, other bytes
    second = [d["config_hash"] for d in run_recipe(recipe)]
    assert second[0] != first[0] and second[1] != first[1]
    weights = tmp_path / "run" / "sft" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + bytes(8))  # sft/model replaced behind pride's back
    third = [d["config_hash"] for d in run_recipe(recipe)]
    assert third[0] == second[0] and third[1] != second[1]


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_dry_run_shows_every_stage_key_and_origin_of_every_shipped_recipe(path, tmp_path):
    from pride.recipe import dry_run, flatten, load_recipe

    _, stages = load_recipe(path)
    text = dry_run(path, [f"output_dir={tmp_path}"], world_size=4, all_settings=True)
    for stage in stages:
        block = text.split(f"== {stage.name} ({stage.type})")[1].split("\n== ")[0]
        assert "run (not finished yet)" in block or "runs first" in block
        assert "process(es) x accumulation" in block or "cannot run with 4 process(es)" in block
        for key in flatten(stage.config.model_dump(mode="json")):
            assert f"   {key} " in block, (stage.name, key)
    assert "(override)" in text  # output_dir came from the command line


def test_dry_run_says_skip_run_or_resume_and_where_values_come_from(tmp_path):
    from pride.recipe import dry_run, run_recipe
    from tests.test_run_dirs import recipe

    data = tmp_path / "chat.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n')
    path = recipe(tmp_path, data, 1e-3)
    run_recipe(path)
    text = dry_run(path)
    assert text.count("skip: finished earlier with the same settings and inputs") == 2
    text = dry_run(path, ["sft.train.learning_rate=2e-3", "train.global_batch_size=8"], world_size=2)
    sft, dpo = text.split("== dpo (dpo)")
    assert "run (its settings or inputs changed since it finished)" in sft
    assert "run: the stage it starts from (sft) runs first" in dpo
    assert "global batch 8 rows = 2 process(es) x accumulation 1 x micro-batch 4 (from train.global_batch_size)" in sft
    assert 'train.learning_rate ' in sft and "= 0.002   (override)" in sft
    assert "= 1   (recipe (shared))" in sft  # train.max_steps, from the shared section
    assert '(default)' not in dpo and "settings at pride's defaults not shown" in dpo  # only what differs
    dpo_all = dry_run(path, ["sft.train.learning_rate=2e-3"], all_settings=True).split("== dpo (dpo)")[1]
    assert '= "sigmoid"   (default)' in dpo_all  # preference.loss_type, with --all-settings
    assert "model.path" in dpo and "(the previous stage's model)" in dpo
    assert "cannot run with 3 process(es)" in dry_run(path, ["train.global_batch_size=8"], world_size=3)
