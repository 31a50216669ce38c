"""`pride online`: sample K answers per prompt, judge them, pair them, train, repeat.

Each iteration n writes `iteration-n/`:
  generations.jsonl  {prompt_id, prompt, responses[K], seeds[K]}
  scores.jsonl       {prompt_id, scores[K], matrix[K][K] for pairwise judges}
  pairs.jsonl        {prompt_id, prompt, chosen, rejected, chosen_score, rejected_score
                      (+ chosen_win_prob, rejected_win_prob for SPPO)}
then trains one DPO-family stage on the pairs (reference log-probs precomputed from the
iteration's starting model) into `iteration-n/model`, which the next iteration samples.

Generation and judging append one line per prompt, chunk by chunk, to per-rank part files,
so a killed run resumes without redoing finished prompts (a torn last line is dropped);
parts are merged in prompt order when complete. A finished iteration is not redone while its
identity (`pride.identity.round_identity`: settings, inputs, the previous round) is unchanged;
a changed one is redone from scratch, and every round after it.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

from rich.table import Table

from pride.config import Config, DataSettings, SourceSettings, urls as urls_of
from pride.data import Conversation, Rows, load_rows, read_rows
from pride.data.rows import normalize
from pride.errors import PrideError
from pride.io import append_jsonl, make_dir, read_jsonl, read_jsonl_tolerant, write_jsonl
from pride.models import load_chat, load_model_and_tokenizer, load_tokenizer
from pride.online.judges import check_judge, check_judgement, make_judge
from pride.online.pairs import make_pair
from pride.online.policy_servers import check_reloadable, check_serving, round_servers
from pride.online.samplers import make_sampler, sampler_kind, stream_samples
from pride.identity import round_identity
from pride.rundir import ITERATIONS, iteration_dir, model_dir, read_iteration, start_round, write_iteration
from pride.train.stage import StageContext
from pride.train.unpaired import train_unpaired


# ------------------------------------------------------------------ resumable work


def resumable_map(acc, it_dir: Path, name: str, prompts: list[dict], chunk_size: int, work,
                  console=None, tokens=None) -> list[dict]:
    """Run `work(todo_prompts) -> rows` (an iterable, one row per prompt, in any order) over this
    rank's prompts not done yet, appending to `name.part-<rank>.jsonl` every `chunk_size` rows;
    return all rows in prompt order once every rank is done. `console`: the main process's
    progress (prompts done, and the rate; `tokens(row)`: the tokens a row holds, shown per second)."""
    from pride.progress import Phase

    final = it_dir / f"{name}.jsonl"
    if final.exists():
        return read_jsonl(final)
    part = it_dir / f"{name}.part-{acc.process_index}.jsonl"
    done = {r["prompt_id"] for r in read_jsonl_tolerant(part, repair=True)}
    todo = [p for p in prompts[acc.process_index::acc.num_processes] if p["prompt_id"] not in done]
    pending: list[dict] = []
    mine = len(prompts[acc.process_index::acc.num_processes])
    label = {"generations": "sampling", "scores": "judging"}.get(name, name)
    with Phase(console, label, mine, "prompts", enabled=console is not None and acc.is_main_process,
               completed=mine - len(todo)) as progress:
        counted, started = 0, time.perf_counter()
        for row in work(todo) if todo else []:
            pending.append(row)
            if tokens is not None:
                counted += tokens(row)
            progress.advance(info=f"{counted / max(time.perf_counter() - started, 1e-9):.0f} tok/s"
                             if tokens is not None else None)
            if len(pending) >= chunk_size:
                append_jsonl(part, pending)
                pending = []
    if pending:
        append_jsonl(part, pending)
    acc.wait_for_everyone()
    if acc.is_main_process:
        rows = {}
        for p in sorted(it_dir.glob(f"{name}.part-*.jsonl")):
            for r in read_jsonl_tolerant(p, repair=True):
                rows.setdefault(r["prompt_id"], r)  # never a duplicate
        missing = [p["prompt_id"] for p in prompts if p["prompt_id"] not in rows]
        if missing:
            raise PrideError(f"{it_dir}: {name} missing for prompts {missing[:5]}")
        write_jsonl(final, [rows[p["prompt_id"]] for p in prompts])
        for p in it_dir.glob(f"{name}.part-*.jsonl"):
            p.unlink()
    acc.wait_for_everyone()
    return read_jsonl(final)


# ------------------------------------------------------------------ prompts


def load_prompts(cfg: Config) -> list[dict]:
    """The prompts of data.sources; with prompt_split=per_source each carries its source's index."""
    s = cfg.online
    if s.prompt_split != "per_source":
        groups = [load_rows(cfg.data, want="any", seed=cfg.seed).train]
    elif len(cfg.data.sources) != s.iterations:
        raise PrideError(f"online.prompt_split=per_source: {len(cfg.data.sources)} data.sources for "
                         f"{s.iterations} iterations (one source per iteration)")
    else:
        groups = [load_rows(cfg.data.model_copy(update={"sources": [src]}), want="any", seed=cfg.seed).train
                  for src in cfg.data.sources]
    prompts = []
    for source, rows in enumerate(groups):
        for row in rows:
            if isinstance(row, Conversation):
                msgs = row.messages
                last_user = max(k for k, m in enumerate(msgs) if m["role"] == "user")
                msgs = msgs[:last_user + 1]
            else:
                msgs = row.prompt
            prompts.append({"prompt_id": f"p{len(prompts)}", "prompt": msgs, "source": source})
    if not prompts:
        raise PrideError("no prompts in data.sources")
    return prompts


def prompts_for_iteration(prompts: list[dict], cfg: Config, n: int) -> list[dict]:
    s = cfg.online
    if s.prompt_split == "per_source":
        prompts = [p for p in prompts if p["source"] == n - 1]
    elif s.prompt_split == "split":
        size = len(prompts) // s.iterations
        if size == 0:
            raise PrideError(f"online.prompt_split=split: {len(prompts)} prompts for {s.iterations} iterations")
        prompts = prompts[(n - 1) * size:n * size]
    return prompts[: s.max_prompts] if s.max_prompts else prompts


# ------------------------------------------------------------------ one iteration


def sample_seed(seed: int, iteration: int, prompt_id: str, j: int) -> int:
    """The seed of sample j of a prompt in an iteration: the same whatever the ranks, chunks or
    resumes (recorded in generations.jsonl, and what the sampler really draws with)."""
    digest = hashlib.sha256(f"{seed}/{iteration}/{prompt_id}/{j}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # 63 bits: torch, vLLM and OpenAI-style seeds take it


def run_iteration(ctx: StageContext, n: int, prompts: list[dict], model_ref: str, live: tuple | None = None,
                  save: bool = True) -> tuple[dict, tuple | None]:
    """Round n from `model_ref` (or `live`: the round before's (model, tokenizer, format), in memory);
    returns its summary and, when its model is not saved (`save`), that model in memory."""
    from pride.train.preference import train_preference

    cfg, acc = ctx.cfg, ctx.acc
    s = cfg.online
    it_dir = iteration_dir(ctx.run_dir, n)
    make_dir(it_dir)
    # sampling loads the round's model plainly; training keeps every model setting of the user's
    # a round's model directory carries its tokenizer; model.tokenizer is the starting model's
    tokenizer = cfg.model.tokenizer if model_ref == cfg.model.path else None
    sample_settings = cfg.model.model_copy(update={"path": model_ref, "tokenizer": tokenizer, "lora": None,
                                                   "gradient_checkpointing": False})
    train_settings = cfg.model.model_copy(update={"path": model_ref, "tokenizer": tokenizer})
    k = s.samples_per_prompt
    timing = {}

    t = time.perf_counter()
    state: dict = {}

    def generate(todo: list[dict]):
        if "sampler" not in state:
            load = (lambda: live) if live is not None else \
                (lambda: load_model_and_tokenizer(sample_settings, seed=cfg.seed, device=acc.device))
            state["sampler"] = make_sampler(s, model_ref, load, acc.device, cfg.seed, state.get("urls"))
        seeds = [[sample_seed(cfg.seed, n, p["prompt_id"], j) for j in range(k)] for p in todo]
        started = time.perf_counter()
        for i, rs, cut in stream_samples(state["sampler"], [p["prompt"] for p in todo], seeds,
                                         s.generation_batch_size):
            timing["generate_s"] = timing.get("generate_s", 0.0) + time.perf_counter() - started
            yield {"prompt_id": todo[i]["prompt_id"], "prompt": todo[i]["prompt"], "responses": rs, "seeds": seeds[i],
                   "truncated": cut}
            started = time.perf_counter()

    kind, sampled = sampler_kind(s), (it_dir / "generations.jsonl").exists()
    judge_waits = judges_with_policy(s) and not (it_dir / "scores.jsonl").exists()  # it reads what the servers serve
    served = (kind == "server" and not sampled) or (kind == "openai" and (not sampled or judge_waits))
    with round_servers(acc, s, model_ref, it_dir) if served else nullcontext() as urls:
        state["urls"] = urls
        tokenizer_ = (live[1] if live is not None else load_tokenizer(sample_settings)) if acc.is_main_process \
            else None

        def sampled_tokens(row: dict) -> int:  # what the progress line's tok/s counts
            return sum(len(tokenizer_.encode(r, add_special_tokens=False)) for r in row["responses"])

        generations = resumable_map(acc, it_dir, "generations", prompts, s.generation_batch_size, generate,
                                    ctx.console, sampled_tokens if acc.is_main_process else None)
        if "sampler" in state:
            state.pop("sampler").close()
    timing["sample_s"] = time.perf_counter() - t

    t = time.perf_counter()
    by_id = {g["prompt_id"]: g for g in generations}

    def score(todo: list[dict]):
        for start in range(0, len(todo), s.judge.batch_size):
            yield from score_batch(todo[start:start + s.judge.batch_size])

    def score_batch(todo: list[dict]) -> list[dict]:
        if "judge" not in state:
            fmt = (live[2] if live is not None else load_chat(sample_settings)[1]) \
                if s.judge.prompt_format == "chat_template" else None
            state["judge"] = make_judge(s.judge, acc.device, fmt)
            if judges_with_policy(s):  # self-rewarding: the judge must be this round's model too
                check_serving(urls_of(s.judge.url), model_ref, s.judge.api_key_env)
        gens = [by_id[p["prompt_id"]] for p in todo]
        judged = state["judge"].judge([g["prompt"] for g in gens], [g["responses"] for g in gens])
        for g, j in zip(gens, judged):
            check_judgement(j, len(g["responses"]), f"{it_dir / 'scores'}: prompt {g['prompt_id']} "
                                                    f"({s.judge.type} judge)")
        return [{"prompt_id": g["prompt_id"], "scores": j.scores, **({"matrix": j.matrix} if j.matrix else {}),
                 **({"verdicts": j.verdicts} if j.verdicts else {})} for g, j in zip(gens, judged)]

    scores = resumable_map(acc, it_dir, "scores", prompts, s.judge.batch_size, score, ctx.console)
    state.pop("judge", None)
    timing["judge_s"] = time.perf_counter() - t

    train_cfg = cfg.model_copy(update={"model": train_settings, "output_dir": str(it_dir), "seed": cfg.seed + n})
    if s.objective in ("grpo", "rloo"):
        from pride.online.groups import sample_rewards
        from pride.train.policy_gradient import train_groups

        groups = [{"prompt_id": g["prompt_id"], "prompt": g["prompt"], "responses": g["responses"],
                   "rewards": sample_rewards(sc), "truncated": g.get("truncated") or [False] * k}
                  for g, sc in zip(generations, scores)]
        t = time.perf_counter()
        round_ctx = ctx.within(train_cfg, it_dir, live, save)
        trained = train_groups(round_ctx, groups)
        timing["train_s"] = time.perf_counter() - t
        return ({**round_summary(n, prompts, k, scores, timing, it_dir, round_ctx), **trained["round"]},
                handed_on(round_ctx))

    if s.objective == "kto":
        rows, records, ties = labelled_samples(generations, scores, it_dir / FEEDBACK)
        if acc.is_main_process:
            write_jsonl(it_dir / FEEDBACK, records)
        acc.wait_for_everyone()
        if not rows:
            raise PrideError(f"iteration {n}: every sample scored its group's mean, so none is labelled: "
                             f"{no_pairs(generations, scores, s, state.get('urls'))}")
        t = time.perf_counter()
        round_ctx = ctx.within(train_cfg, it_dir, live, save)
        train_unpaired(round_ctx, Rows(rows, [], {}))
        timing["train_s"] = time.perf_counter() - t
        desirable = sum(r.label for r in rows)
        return ({**round_summary(n, prompts, k, scores, timing, it_dir, round_ctx), "desirable": desirable,
                 "undesirable": len(rows) - desirable, "dropped_tie": ties}, handed_on(round_ctx))

    pairs, dropped = [], {"identical": 0, "tie": 0}
    for g, sc in zip(generations, scores):
        pair, why = make_pair(g, sc, s.pairs, s.keep_ties)
        if pair is None:
            dropped[why] += 1
        else:
            pairs.append(pair)
    if acc.is_main_process:
        write_jsonl(it_dir / "pairs.jsonl", pairs)
    acc.wait_for_everyone()
    if not pairs:
        raise PrideError(f"iteration {n}: every prompt was dropped: {no_pairs(generations, scores, s, state.get('urls'))}")

    t = time.perf_counter()
    data, in_memory = round_data(pairs, it_dir / "pairs.jsonl", s, cfg)
    train_cfg = train_cfg.model_copy(update={"data": data})
    if s.keep_ties:  # the kept ties (an answer against itself) must reach the loss, not be skipped as identical
        train_cfg = train_cfg.model_copy(update={"preference": cfg.preference.model_copy(update={"keep_identical": True})})
    round_ctx = ctx.within(train_cfg, it_dir, live, save)
    train_preference(round_ctx, load_rows(data, "preference", train_cfg.seed, in_memory))
    timing["train_s"] = time.perf_counter() - t

    return ({**round_summary(n, prompts, k, scores, timing, it_dir, round_ctx), "pairs": len(pairs),
             "dropped_identical": dropped["identical"], "dropped_tie": dropped["tie"]}, handed_on(round_ctx))


FEEDBACK = "feedback.jsonl"  # online.objective kto: a round's labelled samples


def labelled_samples(generations: list[dict], scores: list[dict], path: Path) -> tuple[list, list[dict], int]:
    """Each sample off its group's mean reward as a row of unpaired feedback (`groups.kto_labels`),
    in prompt then sample order; the lines of `path` that record them; how many sat at the mean
    (ties, dropped)."""
    from pride.data.rows import LabeledCompletion
    from pride.online.groups import kto_labels, sample_rewards

    rows, records, ties = [], [], 0
    for g, sc in zip(generations, scores):
        rewards = sample_rewards(sc)
        for j, (answer, label) in enumerate(zip(g["responses"], kto_labels(rewards))):
            if label is None:
                ties += 1
                continue
            rows.append(LabeledCompletion(g["prompt"], answer, label, f"{path} line {len(rows) + 1}"))
            records.append({"prompt_id": g["prompt_id"], "sample": j, "prompt": g["prompt"], "completion": answer,
                            "label": label, "reward": rewards[j]})
    return rows, records, ties


def handed_on(round_ctx: StageContext) -> tuple | None:
    """What the next round starts from in memory: the model this round trained and did not save, with
    the tokenizer and format it came with (None: the next round loads this round's model/)."""
    if round_ctx.trained is None:
        return None
    return (round_ctx.trained, *round_ctx.loaded)


def no_pairs(generations: list[dict], scores: list[dict], s, urls: list[str] | None) -> str:
    """Why a round has no pair, one cause at a time: nothing was sampled, the judge never decided,
    or the answers really tied."""
    where = ", ".join(urls) if urls else f"online.sampler={sampler_kind(s)}"
    if all(r == "" for g in generations for r in g["responses"]):
        return (f"every sample came back empty ({where} answered '' to all {len(generations)} prompts x "
                f"{s.samples_per_prompt}); check that the sampler serves a model that writes (its chat template, "
                "online.max_new_tokens)")
    verdicts = [v for sc in scores for row in sc.get("verdicts") or [] for v in row]
    if verdicts and all(v is None for v in verdicts):
        return (f"the judge at {', '.join(urls_of(s.judge.url))} gave no verdict ([[A]], [[B]] or [[C]]) on any of "
                f"{len(verdicts)} comparisons; check online.judge.model and what it answers")
    return ("the answers of every prompt tied or were identical: raise online.temperature or "
            "online.samples_per_prompt")


def round_summary(n: int, prompts: list[dict], k: int, scores: list[dict], timing: dict, it_dir: Path,
                  round_ctx: StageContext) -> dict:
    """What every round reports (iteration.json): its judge's scores, its phases' seconds (sampling,
    judging, training in all; and inside them generation alone, the old / reference log-probs pass
    and the training loop), its model (saved, or kept in memory for the next round)."""
    flat = [x for sc in scores for x in sc["scores"]]
    phases = {**timing, **round_ctx.timing}
    whole = ("sample_s", "judge_s", "train_s")
    return {"iteration": n, "prompts": len(prompts), "samples": len(prompts) * k,
            "score_mean": statistics.fmean(flat), "score_std": statistics.pstdev(flat),
            "score_min": min(flat), "score_max": max(flat),
            **{key: round(v, 2) for key, v in phases.items()}, "seconds": round(sum(timing[w] for w in whole), 1),
            "model": str(model_dir(it_dir)), "saved": round_ctx.save_model}


def judges_with_policy(s) -> bool:
    """An llm judge at one of the policy's own servers (sampler=openai): it judges with the round's
    model, so it must serve that round's model when it judges."""
    return (s.judge.type == "llm" and s.sampler == "openai" and s.iterations > 1
            and bool(set(urls_of(s.judge.url)) & set(s.sampler_urls())))


def check_sampler_launch(cfg: Config, processes: int) -> None:
    """What a sampler cannot do, said before any work."""
    s = cfg.online
    kind = sampler_kind(s)
    if kind == "vllm" and processes > 1:
        raise PrideError(f"online.sampler=vllm runs vLLM inside one process; this launch has {processes}. Launch "
                         f"the stage as one process, or use online.sampler=server (a vLLM server per node, "
                         f"online.server_args for its flags)")
    if (kind == "server" or kind == "openai" and s.iterations > 1) and cfg.model.path.startswith("tiny:"):
        raise PrideError(f"model.path={cfg.model.path}: a tiny: model exists only inside this process; a "
                         f"{kind} sampler must load a directory (save it first), or use online.sampler=transformers")


def check_save_every(cfg: Config, processes: int) -> None:
    """online.save_every > 1 hands a round's model to the next in memory: only where the next round
    samples in this process (pride's engine) from the one model this process trained."""
    s, m = cfg.online, cfg.model
    if s.save_every == 1:
        return
    why = (f"online.sampler={sampler_kind(s)} samples from a model directory (servers and vLLM load from disk)"
           if sampler_kind(s) != "transformers" else
           f"this launch has {processes} processes (each would hold its own shard or copy)" if processes > 1 else
           "model.lora trains an adapter that each round merges when it saves" if m.lora is not None else
           "model.load_in_4bit: a 4-bit model is saved merged and reloaded" if m.load_in_4bit else None)
    if why:
        raise PrideError(f"online.save_every={s.save_every} keeps rounds' models in memory, but {why}: use "
                         "online.save_every=1 here")


def round_data(pairs: list[dict], path: Path, s, cfg: Config) -> tuple[DataSettings, dict]:
    """What a round trains on: the share `pair_fraction` of its pairs (all are written to `path`),
    plus `online.mix_offline` rows: that source's own fraction of them, or with `mix_fraction`
    as many as make that share of the total. Returns the data settings that say so (the
    round's config.yaml) and the pairs as rows for `load_rows` (empty answers allowed: a
    sample may be empty)."""
    rows = []
    for line, pair in enumerate(pairs, start=1):
        row = normalize(pair, "preference", allow_empty=True)
        row.where = f"{path} line {line}"
        rows.append(row)
    sources = [SourceSettings(path=str(path), fraction=s.pair_fraction)]
    if s.mix_offline is not None and s.mix_fraction is None:  # LIONs' mixer: each source's own fraction
        sources.append(s.mix_offline)
    elif s.mix_offline is not None and s.mix_fraction > 0:
        offline = len(read_rows(s.mix_offline, "preference", cfg.data.on_bad_row, {}))
        wanted = round(len(pairs) * s.pair_fraction * s.mix_fraction / (1 - s.mix_fraction))
        sources.append(s.mix_offline.model_copy(update={"fraction": min(1.0, max(wanted, 1) / offline)}))
    # held-out preference rows (data.eval_sources) are each round's eval set: its eval cadence evaluates them
    return DataSettings(sources=sources, eval_sources=cfg.data.eval_sources, on_bad_row=cfg.data.on_bad_row), \
        {str(path): rows}


def run_online(cfg: Config) -> list[dict]:
    with StageContext.open(cfg, write_config=True) as ctx:
        if cfg.online.tensor_parallel_size > 1 and ctx.acc.num_processes > 1:
            raise PrideError(f"online.tensor_parallel_size={cfg.online.tensor_parallel_size}: vLLM shards the "
                             f"sampler over the GPUs itself; launch this stage as one process, not "
                             f"{ctx.acc.num_processes}")
        prompts = load_prompts(cfg)
        check_sampler_launch(cfg, ctx.acc.num_processes)
        check_judge(cfg.online.judge)  # before any sampling: a bad judge or mix file stops now, not after round 1
        check_reloadable(cfg.online)  # and a server that would sample a stale policy in round 2
        if cfg.online.mix_offline is not None:
            read_rows(cfg.online.mix_offline, "preference", cfg.data.on_bad_row, {})
        check_save_every(cfg, ctx.acc.num_processes)
        model_ref, previous, live = cfg.model.path, "", None
        history = []
        for n in range(1, cfg.online.iterations + 1):
            it_dir = iteration_dir(ctx.run_dir, n)
            identity = round_identity(cfg, n, previous)
            summary = read_iteration(it_dir)  # finished, with its model saved
            if summary is not None and summary.get("identity") == identity:
                ctx.console.print(f"iteration {n}: finished earlier with the same settings and inputs, skipped")
                live = None
            else:
                if ctx.acc.is_main_process and start_round(it_dir, identity):
                    ctx.console.print(f"iteration {n}: its settings or inputs changed since it ran; "
                                      f"removed its earlier work from {it_dir}")
                ctx.acc.wait_for_everyone()
                ctx.console.rule(f"iteration {n}")
                # semi-online: a round's model is saved every online.save_every rounds and at the end; the
                # rounds between hand theirs on in memory (a resume redoes them from the last saved one,
                # reusing their samples and scores: the same weights give the same samples)
                save = n % cfg.online.save_every == 0 or n == cfg.online.iterations
                result, live = run_iteration(ctx, n, prompts_for_iteration(prompts, cfg, n), model_ref, live, save)
                summary = {**result, "identity": identity}
                if ctx.acc.is_main_process:
                    write_iteration(it_dir, summary)
            history.append(summary)
            model_ref, previous = summary["model"], identity
            ctx.acc.wait_for_everyone()
        if ctx.acc.is_main_process:
            write_jsonl(ctx.run_dir / ITERATIONS, history)
            ctx.console.print(iteration_table(history))
            from pride.plot import stage_curves

            stage_curves(Path(cfg.output_dir), f"{Path(cfg.output_dir).name}: rounds' training curves and judge scores")
        return history


def iteration_table(history: list[dict]) -> Table:
    table = Table(title="online iterations: judge scores of each iteration's own samples")
    kto = any("desirable" in h for h in history)  # online KTO: labelled samples, ties at the mean dropped
    groups = not kto and any("pairs" not in h for h in history)  # the GRPO family: flat groups, samples trained
    middle_cols = ("desirable", "undesirable", "ties") if kto else ("flat groups", "trained") if groups else \
        ("pairs", "dropped")
    for col in ("iteration", "prompts", "score mean", "score std", *middle_cols, "sample s", "judge s", "train s"):
        table.add_column(col, justify="right")
    for h in history:
        middle = ((str(h["desirable"]), str(h["undesirable"]), str(h["dropped_tie"])) if kto else
                  (f"{h.get('flat_group_fraction', 0):.0%}", str(h.get("trained_samples", ""))) if groups else
                  (str(h["pairs"]), str(h["dropped_identical"] + h["dropped_tie"])))
        table.add_row(str(h["iteration"]), str(h["prompts"]), f"{h['score_mean']:.4f}", f"{h['score_std']:.4f}",
                      *middle, f"{h['sample_s']:.1f}", f"{h['judge_s']:.1f}", f"{h['train_s']:.1f}")
    return table


__all__ = ["run_online", "resumable_map"]
