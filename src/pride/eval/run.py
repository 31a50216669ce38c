"""`pride eval`: host the model, generate answers, judge them, score, report.

Benchmark files come from `eval.data_dir` (pride ships none):
  mt_bench/question.jsonl, mt_bench/judge_prompts.jsonl,
  mt_bench/reference_answer/gpt-4.jsonl (or mt_bench/reference_answer_gpt-4.jsonl)
  mt_bench/reference_answer/<judge model>.jsonl (FastChat looks references up by the judge's name),
  mt_bench/model_answer/<baseline>.jsonl (pairwise-baseline mode)
  alpaca_eval/alpaca_eval.json (instructions with the baseline's outputs),
  alpaca_eval/df_gamed.csv (for the LC win rate)
  arena_hard_v0.1/question.jsonl, arena_hard_v0.1/model_answer/gpt-4-0314.jsonl (or .../gpt-4-0314.jsonl)
Everything is written under eval.output_dir/<model>/run-<r>/<benchmark>/.
"""

from __future__ import annotations

import statistics
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console

from pride.chat_client import ChatClient, map_concurrently
from pride.config import Config
from pride.errors import PrideError
from pride.io import make_dir, read_json, read_record, write_json, write_jsonl
from pride.export import checkpoint_paths, exported
from pride.rundir import WANDB_RUN, is_checkpoint, saved_models
from pride.eval import alpaca_eval, arena_hard, mt_bench, open_llm, reward_accuracy, task_metrics
from pride.eval.hosting import hosted
from pride.eval.report import headline, score_table, write_report
from pride.models import is_tiny


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


def _judge(cfg: Config, out: Path) -> ChatClient:
    j = cfg.eval.judge
    if not j.url or not j.model:
        raise PrideError("eval.judge.url and eval.judge.model must name an OpenAI-compatible judge endpoint")
    client = ChatClient(j.url, j.model, j.api_key_env, cache_path=out / "judge_cache.sqlite",
                        max_retries=j.max_retries, requests_per_second=j.requests_per_second)
    client.max_tokens_cap = j.max_tokens
    return client


def generation(cfg: Config, bench: str) -> dict:
    """The benchmark's generation settings, `eval.max_new_tokens` capping them when set."""
    g = getattr(cfg.eval.generation, bench)
    cap = cfg.eval.max_new_tokens
    return {"max_tokens": min(g.max_new_tokens, cap) if cap else g.max_new_tokens, "temperature": g.temperature,
            "top_p": g.top_p}


def run_mt_bench(cfg: Config, answerer: ChatClient, judge: ChatClient, name: str, out: Path, seed: int) -> dict:
    ev = cfg.eval
    root = _data_dir(cfg) / "mt_bench"
    questions = mt_bench.load_questions(_first(root / "question.jsonl"))[: ev.max_questions]
    gen = generation(cfg, "mt_bench")
    answers = mt_bench.generate_answers(answerer, questions, name, gen["max_tokens"], gen["temperature"], gen["top_p"],
                                        seed, ev.generation_concurrency)
    write_jsonl(out / "model_answer" / f"{name}.jsonl", answers)
    texts = {a["question_id"]: a["choices"][0]["turns"] for a in answers}
    if ev.mt_bench_mode == "pairwise-all":  # judged with every other model once all have answered
        return {"pending": "pairwise-all", "answers": texts}
    prompts = {p["name"]: p for p in mt_bench.read_jsonl(_first(root / "judge_prompts.jsonl"))}
    refs = mt_bench.load_answers(mt_bench.reference_file(root, ev.judge.model))
    if ev.mt_bench_mode == "pairwise-baseline":
        base = mt_bench.load_answers(_first(root / "model_answer" / f"{ev.mt_bench_baseline}.jsonl"))
        judgments = mt_bench.judge_pairs(judge, questions, {name: texts, ev.mt_bench_baseline: base},
                                         [(name, ev.mt_bench_baseline)], refs, prompts, ev.judge.model,
                                         ev.judge_concurrency)
        write_jsonl(out / "model_judgment" / f"{ev.judge.model}_pair.jsonl", judgments)
        return mt_bench.score_pairwise(judgments, ev.mt_bench_baseline).get(name, {})
    judgments = mt_bench.judge(judge, questions, texts, refs, prompts, name, ev.judge.model, ev.judge_concurrency)
    write_jsonl(out / "model_judgment" / f"{ev.judge.model}_single.jsonl", judgments)
    return mt_bench.score(judgments)


def mt_bench_all_pairs(cfg: Config, judge: ChatClient, answers: dict, out: Path) -> dict:
    """pairwise-all: every pair of the evaluated models (FastChat's make_match_all_pairs)."""
    ev = cfg.eval
    root = _data_dir(cfg) / "mt_bench"
    questions = mt_bench.load_questions(_first(root / "question.jsonl"))[: ev.max_questions]
    prompts = {p["name"]: p for p in mt_bench.read_jsonl(_first(root / "judge_prompts.jsonl"))}
    refs = mt_bench.load_answers(mt_bench.reference_file(root, ev.judge.model))
    models = list(answers)
    if len(models) < 2:
        raise PrideError("eval.mt_bench_mode=pairwise-all compares the evaluated models with each other: "
                         "evaluate at least two (eval.checkpoints=true on a run directory)")
    pairs = [(models[i], models[j]) for i in range(len(models)) for j in range(i + 1, len(models))]
    judgments = mt_bench.judge_pairs(judge, questions, answers, pairs, refs, prompts, ev.judge.model,
                                     ev.judge_concurrency)
    write_jsonl(out / "mt_bench" / "model_judgment" / f"{ev.judge.model}_pair.jsonl", judgments)
    return mt_bench.score_pairwise(judgments)


def run_alpaca_eval(cfg: Config, answerer: ChatClient, judge: ChatClient, name: str, out: Path, seed: int) -> dict:
    ev = cfg.eval
    root = _data_dir(cfg) / "alpaca_eval"
    eval_set = alpaca_eval.load_eval_set(_first(root / "alpaca_eval.json", root / "alpaca_eval.jsonl"))
    eval_set = eval_set[: ev.max_questions]
    gen = generation(cfg, "alpaca_eval")

    def answer(e: dict) -> dict:
        text = answerer.text([{"role": "user", "content": e["instruction"]}], temperature=gen["temperature"] or 0,
                             top_p=gen["top_p"], max_tokens=gen["max_tokens"], seed=seed).strip()
        return {"instruction": e["instruction"], "output": text, "generator": name, "dataset": e.get("dataset", "")}

    outputs = map_concurrently(answer, eval_set, ev.generation_concurrency, "alpaca_eval answers")
    make_dir(out)
    write_json(out / "model_outputs.json", outputs)
    rows = [{"instruction": e["instruction"], "output_1": e.get("output", ""), "generator_1": e.get("generator", "baseline"),
             "output_2": o["output"], "generator_2": name, "dataset": e.get("dataset", "")}
            for e, o in zip(eval_set, outputs)]
    annotations = [a for chunk in map_concurrently(lambda r: alpaca_eval.judge(judge, [r]), rows,
                                                   ev.judge_concurrency, "alpaca_eval judging") for a in chunk]
    write_json(out / "annotations.json", annotations)
    result = alpaca_eval.get_winrate(annotations)
    gamed = root / "df_gamed.csv"
    if gamed.exists():
        gamed_rows = alpaca_eval.load_gamed(gamed)
        result.update(alpaca_eval.length_controlled_winrate(annotations, gamed_rows))
        difficulty = root / "instruction_difficulty.csv"
        if difficulty.exists():
            warnings = alpaca_eval.check_difficulty(alpaca_eval.load_difficulty(difficulty), gamed_rows, len(rows))
            if warnings:
                result["warnings"] = warnings
    else:
        result["length_controlled_winrate"] = None
        result["note"] = f"no LC win rate: {gamed} is missing (alpaca_eval's df_gamed.csv)"
    return result


def run_arena_hard(cfg: Config, answerer: ChatClient, judge: ChatClient, name: str, out: Path, seed: int) -> dict:
    """Answer, judge each question against its category's baseline, score a table per category.
    The result's top-level numbers are the headline table's (`arena_hard.headline_table`);
    `categories` holds every table."""
    ev = cfg.eval
    v = arena_hard.version(ev.arena_hard_version)
    root = _data_dir(cfg) / ev.arena_hard_set
    questions = arena_hard.load_questions(_first(root / "question.jsonl"))[: ev.max_questions]
    needed = dict.fromkeys(arena_hard.judge_setting(q.get("category"), v, ev.arena_hard_baseline)[0] for q in questions)
    baselines, baseline_meta = {}, {}
    for base in needed:  # every baseline is read before the first answer is generated
        _, baselines[base], baseline_meta[base] = arena_hard.load_answers(
            _first(root / "model_answer" / f"{base}.jsonl", root / f"{base}.jsonl"))
    gen = generation(cfg, "arena_hard")

    def answer(q: dict) -> str:
        return answerer.text([{"role": "user", "content": q["prompt"]}], temperature=gen["temperature"] or 0,
                             top_p=gen["top_p"], max_tokens=gen["max_tokens"], seed=seed).strip()

    texts = map_concurrently(answer, questions, ev.generation_concurrency, "arena_hard answers")
    answers = {q["id"]: t for q, t in zip(questions, texts)}
    records = [arena_hard.answer_record(q, name, t, v) for q, t in zip(questions, texts)]
    write_jsonl(out / "model_answer" / f"{name}.jsonl", records)
    judgments = [j for chunk in map_concurrently(
        lambda q: arena_hard.judge(judge, [q], answers, baselines, name, v, ev.arena_hard_baseline), questions,
        ev.judge_concurrency, "arena_hard judging") for j in chunk]
    write_jsonl(out / "model_judgment" / ev.judge.model / f"{name}.jsonl", judgments)
    meta = None
    if ev.style_control:
        meta = {name: {r.get("uid", r.get("question_id")): r.get("metadata", r.get("conv_metadata")) for r in records}}
        for base, texts_of in baselines.items():
            meta[base] = {q: baseline_meta[base][q] or arena_hard.style_metadata(t, v.encoding)
                          for q, t in texts_of.items()}
    per_table = {key: table[name] for key, table in
                 arena_hard.score(judgments, ev.arena_hard_baseline, ev.bootstrap_rounds, 42, v.name, meta).items()}
    head = arena_hard.headline_table(list(per_table))
    return {**per_table[head], "category": head, "categories": per_table}


def run_task_metrics(cfg: Config, answerer: ChatClient, judge: ChatClient | None, name: str, out: Path,
                     seed: int) -> dict:
    """Answer each reference row's prompt, then score the answers (no judge)."""
    ev = cfg.eval
    if not ev.task_metrics.references:
        raise PrideError("eval.task_metrics.references is not set: a JSONL file of prompt + reference rows")
    rows = task_metrics.load_references(ev.task_metrics.references)[: ev.max_questions]
    gen = generation(cfg, "task_metrics")
    params = dict(temperature=gen["temperature"] or 0, top_p=gen["top_p"], max_tokens=gen["max_tokens"], seed=seed)
    raw = ev.task_metrics.prompt_format == "raw"

    def answer(row: dict) -> str:
        prompt = row["prompt"]
        if raw and isinstance(prompt, str):
            return answerer.raw_text(prompt, **params).strip()
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return answerer.text(messages, **params).strip()

    outputs = map_concurrently(answer, rows, ev.generation_concurrency, "task_metrics answers")
    write_jsonl(out / "outputs.jsonl", [{"prompt": r["prompt"], "output": o, "references": r["references"]}
                                   for r, o in zip(rows, outputs)])
    return task_metrics.score(outputs, rows, ev.task_metrics.metrics)


RUNNERS = {"mt_bench": run_mt_bench, "alpaca_eval": run_alpaca_eval, "arena_hard": run_arena_hard,
           "task_metrics": run_task_metrics}
JUDGED = ("mt_bench", "alpaca_eval", "arena_hard")


def default_name(ref: str) -> str:
    """A model's name in answer files and reports: its run's, not a bare `model` (pride saves every
    model as RUN/model): `runs/example-dpo/model` -> example-dpo, a recipe stage `runs/demo/dpo/model`
    -> demo-dpo, an online round `runs/demo/online_dpo/iteration-2/model` -> online_dpo-iteration-2."""
    path = Path(ref.rstrip("/"))
    if path.name != "model" or is_tiny(ref):
        return path.name.replace(":", "-")
    run = path.parent
    if run.name.startswith("iteration-") or (run / "stage.json").exists():
        return f"{run.parent.name}-{run.name}"
    return run.name or "model"


def models_to_evaluate(cfg: Config) -> list[tuple[str, str]]:
    """model.path, or with eval.checkpoints every saved model of a run directory
    (`model/`, `iteration-<n>/model/`, in that order)."""
    ref = cfg.model.path
    name = cfg.eval.model_name or default_name(ref)
    if not cfg.eval.checkpoints:
        return [(name, ref)]
    found = saved_models(ref) + [(p.name, p) for p in checkpoint_paths(ref)]
    if not found:
        raise PrideError(f"eval.checkpoints: no saved model (model/, iteration-*/model/, checkpoints/checkpoint-N) "
                         f"under {ref}")
    return [(f"{name}-{where}" if where else name, str(path)) for where, path in found]


def run_eval(cfg: Config, console: Console | None = None) -> dict:
    """Evaluate, one `pride eval` per `eval.output_dir` at a time (the lock the training run
    directories use); the directory's scores.json and report.md keep every model evaluated
    into it (a model evaluated again replaces its earlier entry). Returns this run's scores."""
    from pride.config import input_paths
    from pride.io import check_not_input, mark_inputs
    from pride.rundir import exclusive

    # nothing it writes lands on what it reads: the model (a run directory with eval.checkpoints,
    # which may hold its evaluations), the benchmark files and references
    mark_inputs(*input_paths(cfg.eval), *([] if cfg.eval.checkpoints or is_tiny(cfg.model.path) else
                                          [p for p in [cfg.model.path] if Path(p).exists()]))
    check_not_input(Path(cfg.eval.output_dir), may_hold=True)
    with exclusive(Path(cfg.eval.output_dir), "eval.output_dir"):
        return _evaluate(cfg, console)


def earlier_scores(out_root: Path) -> dict:
    """What scores.json already holds: models evaluated into this directory before."""
    path = out_root / "scores.json"
    if not path.exists():
        return {}
    scores = read_json(path)
    if not isinstance(scores, dict) or not all(isinstance(v, dict) for v in scores.values()):
        raise PrideError(f"{path}: not pride's scores ({{model: {{benchmark: ...}}}}); move it away or choose "
                         "another eval.output_dir")
    return scores


MODELS = "models.json"  # in eval.output_dir: each name's model, so one name never stands for two models


def model_identity(ref: str) -> str:
    """What a name stands for: a local model's absolute path, else the hub id or tiny: spec."""
    return str(Path(ref).resolve()) if Path(ref).exists() else ref


def claim_names(out_root: Path, models: list[tuple[str, str]], named_by: str | None) -> dict:
    """{name: model} of the directory with these models added, or one line when a name already
    stands for another model there: its scores and answers would be replaced without a word (two
    runs called x: a/x/model and b/x/model). `named_by`: the setting that chose the name."""
    path = out_root / MODELS
    known = read_json(path) if path.exists() else {}
    if not isinstance(known, dict):
        raise PrideError(f"{path}: not pride's {{name: model}} record; move it away or choose another "
                         "eval.output_dir")
    for name, ref in models:
        mine = model_identity(ref)
        if known.get(name, mine) != mine:
            fix = (f"choose another {named_by}" if named_by else
                   f"set eval.model_name to a name of its own (e.g. {Path(mine).parent.parent.name}-{name})")
            raise PrideError(f"{out_root}: the name {name!r} already holds the scores of {known[name]}; evaluating "
                             f"{mine} under it would replace them: {fix}, or use another eval.output_dir")
        known[name] = mine
    return known


def _evaluate(cfg: Config, console: Console | None) -> dict:
    from pride.trackers import check_trackers

    console = console or Console(stderr=True, soft_wrap=True)
    ev = cfg.eval
    check_trackers(ev.report_to, "eval.report_to")
    out_root = Path(ev.output_dir)
    earlier = earlier_scores(out_root)  # read first: a bad file stops the run before any generation
    write_json(out_root / MODELS, claim_names(out_root, models_to_evaluate(cfg),
                                              "eval.model_name" if ev.model_name else None))  # before any answer
    scores: dict = {}
    pending: dict = {}  # MT-Bench pairwise-all: run -> model -> answers
    judge = None
    for name, model_ref in models_to_evaluate(cfg):
        with ExitStack() as model_stack:  # a checkpoint-N is exported for its evaluation, then removed
            ref = str(model_stack.enter_context(exported(model_ref))) if is_checkpoint(model_ref) else model_ref
            per_bench: dict = {b: [] for b in ev.benchmarks}
            for r in range(ev.num_runs):
                run_dir = out_root / name / f"run-{r}"
                seed = cfg.seed + r  # a seed per run: sampled runs differ, and each can be repeated
                chat_benches = [b for b in ev.benchmarks if b in RUNNERS]
                if chat_benches:
                    if any(b in JUDGED for b in chat_benches):
                        judge = judge or _judge(cfg, out_root)
                    with ExitStack() as stack:
                        base = ev.server_url or stack.enter_context(hosted(ref, name, ev.server, run_dir / "server.log"))
                        answerer = ChatClient(base, name)
                        for b in chat_benches:
                            console.print(f"[bold]{name}[/] run {r}: {b}")
                            result = RUNNERS[b](cfg, answerer, judge, name, run_dir / b, seed)
                            if result.get("pending") == "pairwise-all":
                                pending.setdefault(r, {})[name] = result["answers"]
                            else:
                                per_bench[b].append(result)
                if "reward_accuracy" in ev.benchmarks:
                    console.print(f"[bold]{name}[/] run {r}: reward_accuracy")
                    per_bench["reward_accuracy"].append(reward_accuracy.run(
                        ref, ev.reward_sources, ev.bootstrap_rounds, seed, max_pairs=ev.max_questions,
                        warn=lambda line: console.print(f"[yellow]warning[/]: {line}")))
                for b in ev.benchmarks:
                    if b.startswith("open_llm"):
                        console.print(f"[bold]{name}[/] run {r}: {b} (lm-eval)")
                        per_bench[b].append(open_llm.run(ref, b, ev.open_llm_tasks, ev.open_llm_include_path,
                                                         ev.open_llm_batch_size, limit=ev.open_llm_limit))
            scores[name] = per_bench
    for r, answers in sorted(pending.items()):
        console.print(f"MT-Bench pairwise-all, run {r}: {len(answers)} models")
        for model, result in mt_bench_all_pairs(cfg, judge, answers, out_root / f"run-{r}").items():
            scores.setdefault(model, {}).setdefault("mt_bench", []).append(result)
    scores = {m: {b: aggregate(b, runs) for b, runs in res.items() if runs} for m, res in scores.items()}
    for line in failure_warnings(scores):
        console.print(f"[yellow]warning[/]: {line}")
    everything = {**{m: s for m, s in earlier.items() if m not in scores}, **scores}
    write_report(out_root, everything)
    _log_trackers(cfg, scores)
    Console(soft_wrap=True).print(score_table(everything))
    console.print(f"[bold green]done[/]: {out_root / 'report.md'}, {out_root / 'scores.json'}, {out_root / 'scores.png'}")
    return scores


def failure_warnings(scores: dict) -> list[str]:
    """Results that mostly failed, said aloud: a benchmark with no number at all, or MT-Bench with
    most ratings unparsed (a report would show '-' or a mean of a few, and look like a result)."""
    out = []
    for model, res in scores.items():
        for bench, agg in res.items():
            failed = sum(r.get("n_failed", 0) for r in agg["runs"])
            total = sum(r.get("n_judgments", 0) for r in agg["runs"])
            if agg["headline_mean"] is None:
                out.append(f"{model} {bench}: no score could be computed"
                           + (f" ({failed} of {total} judgments failed to parse)" if total else "")
                           + "; see its files under eval.output_dir")
            elif total and failed > total / 2:
                out.append(f"{model} {bench}: {failed} of {total} judgments failed to parse; the score rests on "
                           f"the {total - failed} others")
    return out


def aggregate(bench: str, runs: list[dict]) -> dict:
    heads = [headline(bench, r) for r in runs]
    heads = [h for h in heads if h is not None]
    return {"mean": _mean(runs), "runs": runs, "headline_mean": statistics.fmean(heads) if heads else None,
            "headline_std": statistics.stdev(heads) if len(heads) > 1 else 0.0}


def _mean(runs: list[dict]) -> dict:
    """Numbers averaged over runs, nested tables (Arena-Hard's categories) likewise; the rest from run 0."""
    def number(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    out = {}
    for k, v in runs[0].items():
        if number(v) and all(number(r.get(k)) for r in runs):
            out[k] = statistics.fmean(r[k] for r in runs)
        elif isinstance(v, dict) and all(isinstance(r.get(k), dict) for r in runs):
            out[k] = _mean([r[k] for r in runs])
        elif not number(v):
            out[k] = v
    return out


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

        for name, ref in models_to_evaluate(cfg):
            mine = {f"eval/{b}": v["headline_mean"] for b, v in scores.get(name, {}).items()
                    if v["headline_mean"] is not None}
            run_dir = Path(ref).parent.parent if is_checkpoint(ref) else Path(ref).parent
            trained = read_record(run_dir / WANDB_RUN)  # a model pride trained with wandb: its run
            if trained:
                run = wandb.init(project=trained["project"], group=trained["group"], id=trained["id"], resume="allow")
            else:
                run = wandb.init(project=cfg.train.wandb_project, group=cfg.train.wandb_group, name=name,
                                 job_type="eval")
            run.log(mine)
            run.finish()
