"""Task metrics (issue 15): scores equal the defining libraries called directly; `pride eval` answers and scores."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from pride.errors import PrideError
from pride.eval import task_metrics
from tests.conftest import write_jsonl

MT = Path(__file__).parent / "data" / "mt_small.jsonl"


def mt_rows():
    return [json.loads(line) for line in MT.read_text(encoding="utf-8").splitlines()]


def test_bleu_and_chrf_equal_sacrebleu():
    rows = mt_rows()
    hyps, refs = [r["output"] for r in rows], [r["reference"] for r in rows]
    got = task_metrics.score(hyps, task_metrics.load_references(MT), ["chrf", "bleu"])
    assert got["bleu"] == sacrebleu.corpus_bleu(hyps, [refs]).score
    assert got["chrf"] == sacrebleu.corpus_chrf(hyps, [refs]).score
    assert 20 < got["bleu"] < 90 and 40 < got["chrf"] < 95  # a real, non-trivial score


def test_several_references_per_item_and_rouge(tmp_path):
    rows = mt_rows()
    refs2 = ["The cat sits on the mat.", "Today it is raining in Berlin.", "I missed the train as my alarm failed.",
             "Please pass me the salt.", "Yesterday the report came out."]
    path = write_jsonl(tmp_path / "two.jsonl", [{"prompt": r["prompt"], "reference": [r["reference"], b]}
                                                for r, b in zip(rows, refs2)])
    hyps = [r["output"] for r in rows]
    got = task_metrics.score(hyps, task_metrics.load_references(path), ["bleu", "rouge"])
    assert got["bleu"] == sacrebleu.corpus_bleu(hyps, [[r["reference"] for r in rows], refs2]).score
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=False)
    per = [scorer.score_multi([r["reference"], b], h) for r, b, h in zip(rows, refs2, hyps)]
    # rouge-score's own F-measures averaged in float64 by both: summation order only
    assert got["rougeL"] == pytest.approx(100 * sum(p["rougeL"].fmeasure for p in per) / len(per), abs=1e-12)


def test_bad_reference_rows_name_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "reference": "b"}, {"prompt": "c", "reference": 3}])
    with pytest.raises(PrideError, match=r"bad.jsonl line 2: field 'reference'"):
        task_metrics.load_references(path)
    path = write_jsonl(tmp_path / "n.jsonl", [{"prompt": "a", "reference": "b"}, {"prompt": "c", "reference": ["d", "e"]}])
    with pytest.raises(PrideError, match=r"n.jsonl line 2: field 'reference': 2 references, line 1 has 1"):
        task_metrics.load_references(path)


def test_optional_metric_without_its_package_says_what_to_install():
    if any(__import__("importlib").util.find_spec(m) for m in ("comet",)):
        pytest.skip("unbabel-comet is installed")
    with pytest.raises(PrideError, match="needs the unbabel-comet package"):
        task_metrics.score(["x"], [{"references": ["y"], "source": "z"}], ["comet"])


@pytest.mark.parametrize("fmt", ["raw", "chat"])
def test_pride_eval_answers_and_scores(tmp_path, fmt):
    """A tiny model hosted by `pride serve` answers the file's prompts (raw: /v1/completions as they are);
    the scores written are sacrebleu's on the outputs written."""
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"model: {{path: 'tiny:llama'}}\neval:\n  benchmarks: [task_metrics]\n"
                   f"  output_dir: {tmp_path / 'out'}\n  server: pride\n"
                   f"  generation: {{task_metrics: {{max_new_tokens: 6}}}}\n"
                   f"  task_metrics: {{references: '{MT}', metrics: [chrf, bleu, rouge], prompt_format: {fmt}}}\n")
    run = subprocess.run([sys.executable, "-m", "pride", "eval", str(cfg)], capture_output=True, text=True,
                         env=dict(os.environ), timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "out"
    written = [json.loads(x) for x in (out / "tiny-llama" / "run-0" / "task_metrics" / "outputs.jsonl").read_text().splitlines()]
    assert len(written) == 5 and all(w["output"] for w in written)
    hyps, refs = [w["output"] for w in written], [r["reference"] for r in mt_rows()]
    result = json.loads((out / "scores.json").read_text())["tiny-llama"]["task_metrics"]["runs"][0]
    assert result["chrf"] == sacrebleu.corpus_chrf(hyps, [refs]).score
    assert result["bleu"] == sacrebleu.corpus_bleu(hyps, [refs]).score
    assert "| model | task metrics: chrF |" in (out / "report.md").read_text()  # the metric the column holds
    assert "pride eval: headline scores" in run.stdout and f"{result['chrf']:.2f}" in run.stdout  # printed


def test_a_model_is_named_after_its_run_not_model(tmp_path):
    from pride.eval.run import default_name

    for rel in ("runs/example-dpo/model", "runs/demo/dpo/model", "runs/demo/online_dpo/iteration-2/model"):
        (tmp_path / rel).mkdir(parents=True)
    (tmp_path / "runs/demo/dpo/stage.json").write_text("{}")
    assert default_name(str(tmp_path / "runs/example-dpo/model")) == "example-dpo"
    assert default_name(str(tmp_path / "runs/demo/dpo/model/")) == "demo-dpo"
    assert default_name(str(tmp_path / "runs/demo/online_dpo/iteration-2/model")) == "online_dpo-iteration-2"
    assert default_name("tiny:llama") == "tiny-llama" and default_name("meta-llama/Llama-3-8B") == "Llama-3-8B"


def test_a_second_model_evaluated_into_the_same_directory_keeps_the_first_and_one_eval_at_a_time(tmp_path):
    """Issue 35: scores.json and report.md keep every model evaluated into eval.output_dir (the
    first model's scores are not lost to the second's); a second pride eval on a directory in
    use stops in one line, naming the setting to change."""
    from pride.config import load_config
    from pride.errors import PrideError
    from pride.eval.run import run_eval
    from pride.rundir import exclusive

    out = tmp_path / "out"
    base = ["model.path=tiny:llama", "eval.benchmarks=[task_metrics]", f"eval.output_dir={out}", "eval.server=pride",
            "eval.generation.task_metrics.max_new_tokens=4", f"eval.task_metrics.references={MT}",
            "eval.task_metrics.metrics=[chrf]"]
    first = run_eval(load_config(None, [*base, "eval.model_name=first"]))
    run_eval(load_config(None, [*base, "eval.model_name=second"]))
    scores = json.loads((out / "scores.json").read_text())
    assert list(scores) == ["first", "second"] and scores["first"] == json.loads(json.dumps(first["first"]))
    report = (out / "report.md").read_text()
    assert "| first |" in report and "| second |" in report
    with exclusive(out, "eval.output_dir"), pytest.raises(PrideError, match="is in use by another pride process.*"
                                                                           "choose another eval.output_dir"):
        run_eval(load_config(None, [*base, "eval.model_name=third"]))
    assert list(json.loads((out / "scores.json").read_text())) == ["first", "second"]
