"""`pride eval`: host the model, generate answers, judge them, score, report.

Benchmark files come from `eval.data_dir` (pride ships none):
  mt_bench/question.jsonl, mt_bench/judge_prompts.jsonl,
  mt_bench/reference_answer/gpt-4.jsonl (or mt_bench/reference_answer_gpt-4.jsonl)
  alpaca_eval/alpaca_eval.json (instructions with the baseline's outputs),
  alpaca_eval/instruction_difficulty.csv and alpaca_eval/df_gamed.csv (for the LC win rate)
  arena_hard_v0.1/question.jsonl, arena_hard_v0.1/model_answer/gpt-4-0314.jsonl (or .../gpt-4-0314.jsonl)
Everything is written under eval.output_dir/<model>/run-<r>/<benchmark>/.
"""

from __future__ import annotations

import json
import statistics
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console

from pride.api import ChatClient
from pride.config import Config
from pride.errors import PrideError
from pride.eval import alpaca_eval, arena_hard, mt_bench, open_llm
from pride.eval.hosting import hosted
from pride.eval.report import headline, write_report


def _first(*paths: Path) -> Path:
    for p in paths:
        if p.exists():
            return p
    raise PrideError(f"benchmark file not found: {paths[0]} (put the official file there; see the README's "
                     "evaluation section for the layout)")


def _data_dir(cfg: Config) -> Path:
    if not cfg.eval.data_dir:
        raise PrideError("eval.data_dir is not set: pride does not ship benchmark files; download them "
                         "(see the README's evaluation section) and set eval.data_dir=DIR")
    return Path(cfg.eval.data_dir)


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _judge(cfg: Config, out: Path) -> ChatClient:
    j = cfg.eval.judge
    if not j.url or not j.model:
        raise PrideError("eval.judge.url and eval.judge.model must name an OpenAI-compatible judge endpoint")
    client = ChatClient(j.url, j.model, j.api_key_env, cache_path=out / "judge_cache.sqlite",
                        max_retries=j.max_retries, requests_per_second=j.requests_per_second)
    client.max_tokens_cap = j.max_tokens
    return client


def run_mt_bench(cfg: Config, answerer: ChatClient, judge: ChatClient, name: str, out: Path) -> dict:
    root = _data_dir(cfg) / "mt_bench"
    questions = mt_bench.load_questions(_first(root / "question.jsonl"))[: cfg.eval.max_questions]
    prompts = {p["name"]: p for p in mt_bench.read_jsonl(_first(root / "judge_prompts.jsonl"))}
    refs_path = _first(root / "reference_answer" / "gpt-4.jsonl", root / "reference_answer_gpt-4.jsonl")
    refs = {r["question_id"]: r["choices"][0]["turns"] for r in mt_bench.read_jsonl(refs_path)}
    answers = mt_bench.generate_answers(answerer, questions, name, cfg.eval.max_new_tokens)
    _jsonl(out / "model_answer" / f"{name}.jsonl", answers)
    judgments = mt_bench.judge(judge, questions, {a["question_id"]: a["choices"][0]["turns"] for a in answers},
                               refs, prompts, name, cfg.eval.judge.model)
    _jsonl(out / "model_judgment" / f"{cfg.eval.judge.model}_single.jsonl", judgments)
    return mt_bench.score(judgments)


def run_alpaca_eval(cfg: Config, answerer: ChatClient, judge: ChatClient, name: str, out: Path) -> dict:
    root = _data_dir(cfg) / "alpaca_eval"
    eval_set = alpaca_eval.load_eval_set(_first(root / "alpaca_eval.json", root / "alpaca_eval.jsonl"))
    eval_set = eval_set[: cfg.eval.max_questions]
    outputs = [{"instruction": e["instruction"], "output": answerer.text(
        [{"role": "user", "content": e["instruction"]}], temperature=0, max_tokens=cfg.eval.max_new_tokens).strip(),
        "generator": name, "dataset": e.get("dataset", "")} for e in eval_set]
    out.mkdir(parents=True, exist_ok=True)
    (out / "model_outputs.json").write_text(json.dumps(outputs, indent=2, ensure_ascii=False))
    rows = [{"instruction": e["instruction"], "output_1": e.get("output", ""), "generator_1": e.get("generator", "baseline"),
             "output_2": o["output"], "generator_2": name, "dataset": e.get("dataset", "")}
            for e, o in zip(eval_set, outputs)]
    annotations = alpaca_eval.judge(judge, rows)
    (out / "annotations.json").write_text(json.dumps(annotations, indent=2, ensure_ascii=False))
    result = alpaca_eval.get_winrate(annotations)
    gamed = root / "df_gamed.csv"
    if gamed.exists():
        result.update(alpaca_eval.length_controlled_winrate(annotations, alpaca_eval.load_gamed(gamed)))
    else:
        result["length_controlled_winrate"] = None
        result["note"] = f"no LC win rate: {gamed} is missing (alpaca_eval's df_gamed.csv)"
    return result


def run_arena_hard(cfg: Config, answerer: ChatClient, judge: ChatClient, name: str, out: Path) -> dict:
    root = _data_dir(cfg) / cfg.eval.arena_hard_set
    base = cfg.eval.arena_hard_baseline
    questions = arena_hard.load_questions(_first(root / "question.jsonl"))[: cfg.eval.max_questions]
    baseline = arena_hard.load_answers(_first(root / "model_answer" / f"{base}.jsonl", root / f"{base}.jsonl"))
    records, answers = [], {}
    for q in questions:
        resp = answerer.complete([{"role": "user", "content": q["prompt"]}], temperature=0,
                                 max_tokens=cfg.eval.max_new_tokens)
        text = resp["choices"][0]["message"]["content"].strip()
        answers[q["id"]] = text
        tokens = (resp.get("usage") or {}).get("completion_tokens") or len(text.split())
        records.append(arena_hard.answer_record(q, name, text, tokens))
    _jsonl(out / "model_answer" / f"{name}.jsonl", records)
    judgments = arena_hard.judge(judge, questions, answers, baseline, name, base)
    _jsonl(out / "model_judgment" / cfg.eval.judge.model / f"{name}.jsonl", judgments)
    style = None
    if cfg.eval.style_control:
        battles = arena_hard.battles_from_judgments(judgments, base)
        style = arena_hard.style_features(battles, {name: answers}, baseline)
    return arena_hard.score(judgments, base, cfg.eval.bootstrap_rounds, seed=cfg.seed, style=style)[name]


RUNNERS = {"mt_bench": run_mt_bench, "alpaca_eval": run_alpaca_eval, "arena_hard": run_arena_hard}


def models_to_evaluate(cfg: Config) -> list[tuple[str, str]]:
    """model.path, or with eval.checkpoints every saved model of a run directory
    (`model/`, `iteration-<n>/model/`, in that order)."""
    ref = cfg.model.path
    name = cfg.eval.model_name or ref.rstrip("/").split("/")[-1].replace(":", "-")
    if not cfg.eval.checkpoints:
        return [(name, ref)]
    root = Path(ref)
    found = [root / "model"] if (root / "model" / "config.json").exists() else []
    found += sorted((p / "model" for p in root.glob("iteration-*") if (p / "model" / "config.json").exists()),
                    key=lambda p: int(p.parent.name.split("-")[1]))
    if not found:
        raise PrideError(f"eval.checkpoints: no saved model (model/ or iteration-*/model/) under {ref}")
    return [(f"{name}-{p.parent.name}" if p.parent != root else name, str(p)) for p in found]


def run_eval(cfg: Config, console: Console | None = None) -> dict:
    console = console or Console(stderr=True, soft_wrap=True)
    ev = cfg.eval
    out_root = Path(ev.output_dir)
    scores: dict = {}
    for name, ref in models_to_evaluate(cfg):
        per_bench: dict = {b: [] for b in ev.benchmarks}
        judge = None
        for r in range(ev.num_runs):
            run_dir = out_root / name / f"run-{r}"
            chat_benches = [b for b in ev.benchmarks if b in RUNNERS]
            if chat_benches:
                judge = judge or _judge(cfg, out_root)
                with ExitStack() as stack:
                    base = ev.server_url or stack.enter_context(hosted(ref, name, ev.server, run_dir / "server.log"))
                    answerer = ChatClient(base, name)
                    for b in chat_benches:
                        console.print(f"[bold]{name}[/] run {r}: {b}")
                        per_bench[b].append(RUNNERS[b](cfg, answerer, judge, name, run_dir / b))
            for b in ev.benchmarks:
                if b.startswith("open_llm"):
                    console.print(f"[bold]{name}[/] run {r}: {b} (lm-eval)")
                    per_bench[b].append(open_llm.run(ref, b, ev.open_llm_tasks, limit=ev.open_llm_limit))
        scores[name] = {b: aggregate(b, runs) for b, runs in per_bench.items() if runs}
    write_report(out_root, scores)
    _log_trackers(cfg, scores)
    console.print(f"[bold green]done[/]: {out_root / 'report.md'}, {out_root / 'scores.json'}, {out_root / 'scores.png'}")
    return scores


def aggregate(bench: str, runs: list[dict]) -> dict:
    heads = [headline(bench, r) for r in runs]
    heads = [h for h in heads if h is not None]
    mean = {k: statistics.fmean(r[k] for r in runs) for k, v in runs[0].items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and all(isinstance(r.get(k), (int, float)) for r in runs)}
    mean.update({k: v for k, v in runs[0].items() if k not in mean and not isinstance(v, (int, float))})
    return {"mean": mean, "runs": runs, "headline_mean": statistics.fmean(heads) if heads else None,
            "headline_std": statistics.stdev(heads) if len(heads) > 1 else 0.0}


def _log_trackers(cfg: Config, scores: dict) -> None:
    flat = {f"eval/{m}/{b}": v["headline_mean"] for m, res in scores.items() for b, v in res.items()
            if v["headline_mean"] is not None}
    if "tensorboard" in cfg.eval.report_to:
        from torch.utils.tensorboard import SummaryWriter

        w = SummaryWriter(str(Path(cfg.eval.output_dir) / "tensorboard"))
        for k, v in flat.items():
            w.add_scalar(k, v)
        w.close()
    if "wandb" in cfg.eval.report_to:
        import wandb

        wandb.init(project="pride", job_type="eval").log(flat)
