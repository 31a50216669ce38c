"""Open LLM through lm-eval (issue 25): `pride eval` with lm-eval task YAMLs over local files,
offline, gives every metric lm-eval's own CLI gives on the same model and tasks."""

import json
import os
import subprocess
import sys

import pytest

from pride.eval import open_llm
from pride.tiny import tiny_model, tiny_tokenizer

OFFLINE = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


def local_tasks(folder):
    """Three lm-eval tasks over local JSONL files, one per request type: multiple choice (ARC's
    config with 2 shots), rolling log-likelihood (perplexities) and generation (GSM8K-like)."""
    folder.mkdir()
    mc = [{"question": f"Which number comes after {i}?", "choices": {"text": [str(i + k) for k in (3, 1, 2, 4)],
                                                                     "label": list("ABCD")}, "answerKey": "B"}
          for i in range(12)]
    texts = ["The quick brown fox jumps over the lazy dog.", "Alignment trains language models on preferences.",
             "Numbers: 12, 345 and 6789 are here.", "A short line."]
    sums = [{"question": f"What is {a} plus {b}?", "answer": str(a + b)} for a, b in [(1, 2), (3, 4), (10, 5), (7, 7)]]
    for name, rows in (("mc", mc), ("ppl", [{"text": t} for t in texts]), ("gen", sums)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = lambda name: f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    train: {folder / name}.jsonl\n" \
                        f"    test: {folder / name}.jsonl\ntraining_split: train\ntest_split: test\n"  # noqa: E731
    (folder / "local_arc.yaml").write_text(
        "task: local_arc\n" + data("mc") + "output_type: multiple_choice\nnum_fewshot: 2\n"
        "doc_to_text: \"Question: {{question}}\\nAnswer:\"\ndoc_to_target: \"{{choices.label.index(answerKey)}}\"\n"
        "doc_to_choice: \"{{choices.text}}\"\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n"
        "metadata:\n  version: 1.0\n")
    (folder / "local_ppl.yaml").write_text(
        "task: local_ppl\n" + data("ppl") + "output_type: loglikelihood_rolling\ndoc_to_text: \"\"\n"
        "doc_to_target: \"{{text}}\"\nmetric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n"
        "  - metric: bits_per_byte\nmetadata:\n  version: 1.0\n")
    (folder / "local_gsm.yaml").write_text(
        "task: local_gsm\n" + data("gen") + "output_type: generate_until\nnum_fewshot: 2\n"
        "doc_to_text: \"Question: {{question}}\\nAnswer:\"\ndoc_to_target: \" {{answer}}\"\n"
        "generation_kwargs:\n  until: [\"\\n\"]\n  do_sample: false\n  max_gen_toks: 8\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n")
    return ["local_arc", "local_ppl", "local_gsm"]


@pytest.mark.slow
def test_open_llm_suite_equals_the_lm_eval_cli(tmp_path):
    tokenizer = tiny_tokenizer("llama")
    model_dir = tmp_path / "model"
    tiny_model("llama", tokenizer=tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    tasks = local_tasks(tmp_path / "tasks")
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"model: {{path: '{model_dir}'}}\neval:\n  benchmarks: [open_llm_v1]\n  open_llm_tasks: {tasks}\n"
                   f"  open_llm_include_path: '{tmp_path / 'tasks'}'\n  open_llm_batch_size: 1\n"
                   f"  output_dir: '{tmp_path / 'out'}'\n")
    ours = subprocess.run([sys.executable, "-m", "pride", "eval", str(cfg)], capture_output=True, text=True,
                          env=OFFLINE, timeout=600)
    assert ours.returncode == 0, ours.stderr[-3000:]
    theirs = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                             f"pretrained={model_dir},dtype=auto,trust_remote_code=False", "--tasks", ",".join(tasks),
                             "--include_path", str(tmp_path / "tasks"), "--batch_size", "1",
                             "--output_path", str(tmp_path / "cli")], capture_output=True, text=True, env=OFFLINE,
                            timeout=600)
    assert theirs.returncode == 0, theirs.stderr[-3000:]
    (cli_file,) = (tmp_path / "cli").rglob("results_*.json")
    cli = json.loads(cli_file.read_text())["results"]
    (run,) = json.loads((tmp_path / "out" / "scores.json").read_text())[model_dir.parent.name]["open_llm_v1"]["runs"]
    # The same lm-eval code on the same model, CPU, thread count (torch's default in both
    # processes) and batch size (1: no padding), both run here and now: the two runs are
    # bit-identical on any CPU, so every metric is compared exactly, perplexities included.
    assert set(cli) == set(tasks) and run["lm_eval"] == cli
    assert cli["local_ppl"]["bits_per_byte,none"] > 0 and 0 < cli["local_arc"]["acc,none"] < 1
    assert (run["local_arc"], run["local_gsm"]) == (cli["local_arc"]["acc_norm,none"],
                                                    cli["local_gsm"]["exact_match,none"])
    assert run["local_ppl"] is None and run["average"] is None and "local_ppl report none of" in run["note"]


def test_leaderboard_headline_metrics():
    """Each leaderboard task's metric: acc_norm before acc (ARC, HellaSwag), GSM8K's strict match,
    TruthfulQA's mc2; a task with none of them gives no headline, never its sample count."""
    assert open_llm._headline({"acc,none": 0.5, "acc_norm,none": 0.6}) == 0.6
    assert open_llm._headline({"exact_match,strict-match": 0.3, "exact_match,flexible-extract": 0.4}) == 0.3
    assert open_llm._headline({"mc2,none": 0.41, "mc2_stderr,none": 0.01}) == 0.41
    assert open_llm._headline({"sample_len": 4, "bits_per_byte,none": 8.2}) is None
