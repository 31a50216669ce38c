"""The `pride` command: one subcommand per stage. Parsing and dispatch only."""

from __future__ import annotations

import argparse
import sys

from pride import __version__
from pride.errors import PrideError
from pride.stages import STAGES

COMMANDS = [name for name, kind in STAGES.items() if kind.command]


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override any field, e.g. train.learning_rate=1e-5")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pride", description="Align Hugging Face causal LMs: "
                                     "SFT -> offline DPO family -> online DPO / SPPO -> evaluation.")
    parser.add_argument("--version", action="version", version=f"pride {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        _add_config_args(sub.add_parser(name, help=STAGES[name].help, description=STAGES[name].help))
    ev = sub.add_parser("eval", help=STAGES["eval"].help,
                        description="pride eval CONFIG [key=value ...] [--num-runs N]   or   "
                                    "pride eval score mt-bench|alpaca-eval|arena-hard FILE... (re-score saved judgments)")
    ev.add_argument("config", help="YAML config, or 'score'")
    ev.add_argument("overrides", nargs="*", metavar="key=value | FILE")
    ev.add_argument("--num-runs", type=_ranged(1), default=None, help="repeat generation; report mean and std")
    ev.add_argument("--gamed", default=None, help="score alpaca-eval: alpaca_eval's df_gamed.csv (LC win rate)")
    ev.add_argument("--difficulty", default=None,
                    help="score alpaca-eval: instruction_difficulty.csv, checked against df_gamed.csv")
    ev.add_argument("--baseline", default=None,
                    help="score arena-hard / mt-bench pairwise-baseline: baseline model name")
    ev.add_argument("--rounds", type=int, default=100, help="score arena-hard: bootstrap rounds")
    ev.add_argument("--version", default="v2", choices=["v2", "v0.1"], help="score arena-hard: whose official code")
    ev.add_argument("--answers", nargs="+", action="extend", default=None, metavar="FILE",
                    help="score arena-hard: answer files of the model(s) and the baseline: style control")
    ev.add_argument("--mode", default="single", choices=["single", "pairwise-baseline", "pairwise-all"],
                    help="score mt-bench: FastChat's judgment mode")
    srv = sub.add_parser("serve", help="OpenAI-compatible server for a model directory (127.0.0.1 by default)")
    srv.add_argument("model", help="model directory (or tiny:<arch>)")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=_ranged(0, 65535), default=8000)
    srv.add_argument("--model-name", default=None, help="name reported by /v1/models")
    srv.add_argument("--api-key-env", default=None, help="environment variable holding the required API key")
    srv.add_argument("--max-batch-size", type=_ranged(1), default=64,
                     help="sequences generated together (new ones join the running batch at every step)")
    srv.add_argument("--max-prefill-tokens", type=_ranged(1), default=512,
                     help="prompt tokens fed per step: running sequences wait at most this long for new ones")
    srv.add_argument("--max-model-len", type=_ranged(1), default=None,
                     help="context length (default: the model's; at most its positions)")
    srv.add_argument("--max-tokens", type=_ranged(1), default=4096, help="cap on max_tokens of any request")
    srv.add_argument("--max-body-bytes", type=_ranged(1), default=4 * 2**20,
                     help="larger request bodies get a 413 (default 4 MiB)")
    srv.add_argument("--shutdown-timeout", type=float, default=5.0,
                     help="seconds running requests get to finish after SIGTERM or Ctrl-C")
    srv.add_argument("--threads", type=_ranged(1), default=None,
                     help="CPU threads for generation (torch.set_num_threads; on a shared machine 1 can be fastest)")
    srv.add_argument("--strict-seeds", action="store_true",
                     help="run each seeded request in a batch of its own: its text then does not depend on what "
                          "else runs, not even through padding (default: seeded requests batch with the others)")
    run = sub.add_parser("run", help="run the stages a recipe lists (sft, dpo, online, sppo, eval)")
    run.add_argument("config", help="recipe YAML (see recipes/)")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="shared key=value, or STAGE.key=value")
    run.add_argument("--dry-run", action="store_true",
                     help="print what would run, resume or be skipped, the checks the run makes first, and each "
                          "setting that differs from pride's defaults with its origin; run nothing")
    run.add_argument("--all-settings", action="store_true", help="--dry-run: every setting, defaults too")
    demo = sub.add_parser("demo", help="the main job: the whole pipeline on a toy task, on CPU")
    demo.add_argument("--output", default="runs/demo", help="directory for the demo's run")
    demo.add_argument("--quick", action="store_true", help="a smaller run (the test suite's)")
    demo.add_argument("--seed", type=int, default=0)
    talk = sub.add_parser("chat", help="talk to a model in the terminal, through its chat template")
    talk.add_argument("model", metavar="MODEL_DIR")
    talk.add_argument("--system", default=None, help="a system message to start every conversation with")
    talk.add_argument("--temperature", type=float, default=0.7)
    talk.add_argument("--max-new-tokens", type=_ranged(1), default=512)
    talk.add_argument("--seed", type=_ranged(0), default=0)
    plot = sub.add_parser("plot", help="training curves of one or several runs, overlaid (from metrics.jsonl)")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, or a recipe's output directory")
    plot.add_argument("-o", "--output", default="curves.png", help="the PNG to write (default: curves.png)")
    data = sub.add_parser("data", help="data tools")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    insp = data_sub.add_parser("inspect", help="show rendered rows with trained tokens highlighted, plus counts")
    _add_config_args(insp)
    insp.add_argument("-n", "--rows", type=int, default=3, help="rows to show")
    insp.add_argument("--export", default=None, metavar="FILE.jsonl",
                      help="write every kept row as training sees it (token ids, labels)")
    insp.add_argument("--stage", choices=["sft", "dpo", "rm", "kto"], default=None,
                      help="whose rows: preference pairs as dpo or rm trains them, labelled rows (or pairs split) as "
                           "kto trains them (default: rm or kto when the config has a reward or kto section)")
    insp.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                      help="trained tokens in colour (auto: on a terminal), else between ⟦ ⟧")
    return parser


def quiet_libraries() -> None:
    """pride's own progress and tables on the console; no library progress bars or info chatter
    (transformers' "Loading weights" / "Writing model shards", datasets, the hub). Real warnings
    and errors still show."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_SILENT", "true")  # its banner and sync hints; pride's own lines say where runs go
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()  # "Repo card metadata block was not found" on a local folder
    except ImportError:  # pragma: no cover - both are dependencies
        pass


def _ranged(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high] (argparse then names the option and exits 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is out of range ({low} to {high if high is not None else 'any'})")
        return value
    return parse


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come before or after options (`-n 3 train.epochs=2`)
    if extra and hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 2
    from pride.io import clear_inputs

    clear_inputs()  # inputs are per command (in-process callers run several)
    try:
        return _dispatch(args, parser)
    except PrideError as e:
        print(f"pride {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pride {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (`| head`): a quiet end, not a traceback
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush raises nothing
        return 0
    except OSError as e:  # a file no owner turned into a PrideError: a read-only or vanished directory
        from pride.io import write_problem

        if not e.filename or write_problem(e) is None:
            raise
        print(f"pride {args.command}: error: {e.filename}: {e.strerror} (made read-only or removed while pride "
              "ran?); fix that and run again: finished steps are kept", file=sys.stderr)
        return 2


def _dispatch(args, parser) -> int:
    if args.command in COMMANDS:
        from pride.config import load_config
        from pride.identity import finished_earlier

        cfg = load_config(args.config, args.overrides)
        if not STAGES[args.command].iterative and finished_earlier(cfg):  # online rounds skip their own
            print(f"pride {args.command}: {cfg.output_dir} finished earlier with the same settings and inputs; "
                  "nothing to do (train.resume=never trains it again)", file=sys.stderr)
            return 0
        STAGES[args.command].run(cfg)
        return 0
    if args.command == "serve":
        from pride.serve import serve

        serve(args.model, host=args.host, port=args.port, api_key_env=args.api_key_env, model_name=args.model_name,
              max_batch_size=args.max_batch_size, max_prefill_tokens=args.max_prefill_tokens,
              max_model_len=args.max_model_len, max_tokens=args.max_tokens,
              max_body_bytes=args.max_body_bytes, shutdown_timeout=args.shutdown_timeout, threads=args.threads,
              strict_seeds=args.strict_seeds)
        return 0
    if args.command == "eval":
        return _eval(args)
    if args.command == "data":
        if args.data_command != "inspect":
            parser.parse_args(["data", "--help"])
        from pride.config import load_config
        from pride.data.inspect import inspect

        inspect(load_config(args.config, args.overrides), n=args.rows, export=args.export, color=args.color,
                stage=args.stage)
        return 0
    if args.command == "demo":
        from pride.demo import run_demo

        run_demo(args.output, quick=args.quick, seed=args.seed)
        return 0
    if args.command == "chat":
        from pride.chat_terminal import chat

        return chat(args.model, args.system, args.temperature, args.max_new_tokens, args.seed)
    if args.command == "plot":
        from pride.plot import plot_runs

        drawn = plot_runs(args.runs, args.output, command=True)
        print(f"{args.output}: {', '.join(k for k in drawn)} of {len({r for v in drawn.values() for r in v})} run(s)")
        return 0
    if args.command == "run":
        from pride.recipe import dry_run, run_recipe

        if args.dry_run:
            text = dry_run(args.config, args.overrides, all_settings=args.all_settings)
            print(text)
            stops = [line.split("STOPS: ", 1)[1] for line in text.splitlines() if "   checks: STOPS: " in line]
            if stops:  # the real run would stop at once: say so, as it would
                raise PrideError(f"--dry-run: the run would stop: {stops[0]}")
            return 0
        if args.all_settings:  # it only widens what --dry-run shows: alone it would run the whole recipe
            raise PrideError("--all-settings shows every setting in a --dry-run; add --dry-run (nothing was run)")
        run_recipe(args.config, args.overrides)
        return 0
    parser.error(f"unknown command {args.command!r}")


def _finite(value):
    """NaN and infinities as null: the output stays JSON (a one-row standard error is undefined)."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _eval(args) -> int:
    import json
    from pathlib import Path

    if args.config == "score":
        if len(args.overrides) < 2:
            raise PrideError("usage: pride eval score mt-bench|alpaca-eval|arena-hard FILE...")
        bench, files = args.overrides[0].replace("_", "-"), [Path(f) for f in args.overrides[1:]]  # mt_bench too
        for f in files:
            if not f.is_file():
                raise PrideError(f"file not found: {f}")
        if bench == "alpaca-eval":
            from pride.eval.alpaca_eval import score_annotations

            for option in (args.gamed, args.difficulty):
                if option and not Path(option).is_file():
                    raise PrideError(f"file not found: {option}")
            result = score_annotations(files, Path(args.gamed) if args.gamed else None,
                                       Path(args.difficulty) if args.difficulty else None)
        elif bench == "mt-bench":
            from pride.eval.mt_bench import score_files

            result = score_files(files, args.mode, args.baseline or "gpt-3.5-turbo")
        elif bench == "arena-hard":
            from pride.eval.arena_hard import score_files

            answers = [Path(a) for a in args.answers or []]
            for a in answers:
                if not a.is_file():
                    raise PrideError(f"file not found: {a}")
            result = score_files(files, args.baseline, args.rounds, args.version, answers or None)
        else:
            raise PrideError(f"unknown benchmark {bench!r} (mt-bench, alpaca-eval, arena-hard)")
        print(json.dumps(_finite(result), allow_nan=False))
        return 0
    from pride.config import load_config
    from pride.eval.run import run_eval

    overrides = list(args.overrides) + ([f"eval.num_runs={args.num_runs}"] if args.num_runs else [])
    run_eval(load_config(args.config, overrides))
    return 0
