"""Regenerate tests/data/arena_hard_official.json: the official arena-hard-auto code's results
on the inputs of tests/arena_hard_inputs.py (v2 = HEAD, v0.1 = commit 0489bf3); for v2 also
a two-category set (hard_prompt, creative_writing), scored a category at a time as its
`show_result.py --category` does, and the judge requests its `pairwise_judgment` builds.

    python tests/arena_hard_reference.py --repo /path/to/arena-hard-auto (a clone: its git directory)

The official code is read from that clone at run time and never copied into this repository.
It runs unchanged; only its printing helper is intercepted (format_confidence_interval) to
take the unrounded numbers, and v0.1's `__main__` steps are called in their order. numpy
is seeded with 42 before each bootstrap (v0.1 seeds 42 itself; v2 does not seed).
Token lengths use tiktoken's algorithm with the cl100k/o200k ranks quicktok-v1 ships.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.arena_hard_inputs import BASELINE, JUDGMENT_TEXTS, build, build_v2_categories, v01_judgments  # noqa: E402

V2_COMMIT, V01_COMMIT = "HEAD", "0489bf3"
OUT = Path(__file__).parent / "data" / "arena_hard_official.json"


def git_files(repo: str, commit: str, paths: list[str], dest: Path) -> None:
    for p in paths:
        target = dest / p
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(subprocess.run(["git", "-C", repo, "show", f"{commit}:{p}"], capture_output=True,
                                          check=True).stdout)


def tiktoken_encoding(name: str):
    """tiktoken's Encoding from quicktok's rank files and quicktok's copy of tiktoken's pattern."""
    import quicktok
    import tiktoken
    from quicktok import _import_core as core

    data = Path(quicktok.__file__).parent / "data"
    short = {"cl100k_base": "cl100k", "o200k_base": "o200k"}[name]
    raw = (data / f"{short}.vocab").read_bytes()
    (n,), at, ranks = struct.unpack_from("<I", raw), 4, {}
    for _ in range(n):
        (length,) = struct.unpack_from("<H", raw, at)
        ranks[raw[at + 2:at + 2 + length]] = struct.unpack_from("<I", raw, at + 2 + length)[0]
        at += 6 + length
    pattern = core.CL100K_PAT_POSSESSIVE if short == "cl100k" else core.O200K_PAT
    return tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": n})


def function_from(source: str, name: str):
    """Execute one top-level function of an official file (the label parsers live in gen_judgment.py,
    whose imports need API clients)."""
    tree = ast.parse(source)
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    scope: dict = {"re": re}
    exec(compile(ast.Module(body=[node], type_ignores=[]), name, "exec"), scope)
    return scope[name]


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def write_answers(amd, encoder, answers: dict, out_dir: Path, make_row, column: str, meta_column: str) -> None:
    """One answer file per model, its markdown/length metadata added by the official code
    (`add_markdown_info`), as each version's gen_answer does."""
    import pandas as pd

    for model, texts in answers.items():
        df = pd.DataFrame([make_row(u, model, t) for u, t in texts.items()])
        key = df.columns[0]
        temp = df[[key, column]].copy()
        temp["markdown_meta"] = amd.get_element_counts(df, column=column)
        df[meta_column] = temp.apply(lambda row: amd.add_markdown_meta(row, encoder), axis=1)
        write_jsonl(out_dir / f"{model.split('/')[-1]}.jsonl", df.to_dict("records"))


V2_ANSWER = lambda u, model, t: {"uid": u, "model": model, "messages": [  # noqa: E731
    {"role": "user", "content": "q"}, {"role": "assistant", "content": {"answer": t}}]}


def v2_code(repo: str, work: Path) -> Path:
    code = work / "v2"
    git_files(repo, V2_COMMIT, ["show_result.py", "utils/judge_utils.py", "utils/math_utils.py",
                                "utils/add_markdown_info.py", "gen_judgment.py", "config/arena-hard-v2.0.yaml"], code)
    return code


@contextlib.contextmanager
def v2_imported(code: Path, data_root: Path):
    """show_result (and its utils) imported from the official files, run inside `data_root`."""
    sys.path.insert(0, str(code))
    here = os.getcwd()
    os.chdir(data_root)
    try:
        import show_result  # noqa: E402

        yield show_result
    finally:
        os.chdir(here)
        sys.path.remove(str(code))
        for mod in [m for m in sys.modules if m == "show_result" or m == "utils" or m.startswith("utils.")]:
            del sys.modules[mod]


def v2_leaderboards(show_result, bench: str, categories: list[str]) -> dict:
    """{category: {"scores": ..., "style": ...}} as `show_result.py -c CATEGORY [-f length markdown]`
    prints them (the unrounded numbers), numpy seeded with 42 before each bootstrap."""
    import pandas as pd

    captured = []
    show_result.format_confidence_interval = lambda mean, lower, upper, baseline=None: captured.append(
        {r["model"]: {"score": r["scores"] * 100, "ci_lower": r["lower"] * 100, "ci_upper": r["upper"] * 100}
         for r in mean.merge(lower, on="model").merge(upper, on="model").to_dict("records")}) or pd.DataFrame()
    out = {}
    for category in categories:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            battles = show_result.load_judgments(["gpt-4-1106-preview"], bench)
            battles = battles[battles.category == category].reset_index(drop=True)  # its __main__'s filter
            np.random.seed(42)
            show_result.print_leaderboard(battles.copy(), category)
            np.random.seed(42)
            show_result.print_leaderboard_with_style_features(battles.copy(), bench, category, ["length", "markdown"])
        baseline = show_result.JUDGE_SETTINGS[category]["baseline"]
        out[category] = {"scores": captured[-2], "style": {m: v for m, v in captured[-1].items() if m != baseline}}
    return out


def write_v2_data(code: Path, root: Path, bench: str, answers: dict, judgments: list) -> Path:
    data = root / "data" / bench
    write_jsonl(data / "model_judgment" / "gpt-4-1106-preview" / "all.jsonl", judgments)
    sys.path.insert(0, str(code))
    from utils import add_markdown_info as amd  # noqa: E402

    write_answers(amd, tiktoken_encoding("o200k_base"), answers, data / "model_answer", V2_ANSWER, "messages",
                  "metadata")
    sys.path.remove(str(code))
    for mod in [m for m in sys.modules if m == "utils" or m.startswith("utils.")]:
        del sys.modules[mod]
    return data


def run_v2(repo: str, work: Path) -> dict:
    code = v2_code(repo, work)
    questions, answers, judgments = build()
    data = write_v2_data(code, work / "v2data", "arena-hard-v0.1", answers, judgments)
    with v2_imported(code, work / "v2data") as show_result:
        board = v2_leaderboards(show_result, "arena-hard-v0.1", ["arena-hard-v0.1"])["arena-hard-v0.1"]
    get_score = function_from((code / "gen_judgment.py").read_text(), "get_score")
    patterns = [r"\[\[([AB<>=]+)\]\]", r"\[([AB<>=]+)\]"]
    metadata = {m: {r["uid"]: r["metadata"] for r in map(json.loads, (data / "model_answer" / f"{m.split('/')[-1]}.jsonl")
                                                          .read_text().splitlines())} for m in answers}
    return {"scores": board["scores"], "style": board["style"],
            "labels": [get_score(t, patterns) for t in JUDGMENT_TEXTS], "metadata": metadata}


def run_v2_categories(repo: str, work: Path) -> dict:
    """The two-category set: each category's leaderboards, and the judge requests of one question
    per category (both games) as gen_judgment's pairwise_judgment sends them."""
    import yaml

    code = v2_code(repo, work)
    questions, answers, judgments = build_v2_categories()
    write_v2_data(code, work / "v2cat", "arena-hard-v2.0", answers, judgments)
    with v2_imported(code, work / "v2cat") as show_result:
        boards = v2_leaderboards(show_result, "arena-hard-v2.0", ["hard_prompt", "creative_writing"])
        settings = show_result.JUDGE_SETTINGS
    sent = []
    scope = {"JUDGE_SETTINGS": settings, "get_endpoint": lambda endpoints: None,
             "registered_api_completion": {"openai": lambda **kw: sent.append(
                 {"messages": kw["messages"], "temperature": kw["temperature"], "max_tokens": kw["max_tokens"]})}}
    tree = ast.parse((code / "gen_judgment.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "pairwise_judgment")
    exec(compile(ast.Module(body=[node], type_ignores=[]), "pairwise_judgment", "exec"), scope)
    configs = yaml.safe_load((code / "config" / "arena-hard-v2.0.yaml").read_text())
    requests = {}
    for category in ("hard_prompt", "creative_writing"):
        q = next(q for q in questions if q["category"] == category)
        base = V2_ANSWER(q["uid"], settings[category]["baseline"], answers[settings[category]["baseline"]][q["uid"]])
        mine = V2_ANSWER(q["uid"], "model-x", answers["model-x"][q["uid"]])
        for a, b in ((base, mine), (mine, base)):  # judgment(): round 1, then round 2 with the answers swapped
            scope["pairwise_judgment"](question=q, baseline=a, answer=b, reference=None, configs=configs,
                                       settings={"api_type": "openai", "endpoints": None})
        requests[q["uid"]] = sent[-2:]
    return {"categories": boards, "requests": requests}


def run_v01(repo: str, work: Path) -> dict:
    code = work / "v01"
    git_files(repo, V01_COMMIT, ["show_result.py", "utils.py", "utils_math.py", "add_markdown_info.py",
                                 "gen_judgment.py"], code)
    _, answers, judgments = build()
    data = work / "v01data" / "data" / "arena-hard-v0.1"
    write_jsonl(data / "model_judgment" / "gpt-4-1106-preview" / "all.jsonl", v01_judgments(judgments))
    sys.path.insert(0, str(code))
    import add_markdown_info as amd  # noqa: E402

    write_answers(amd, tiktoken_encoding("cl100k_base"), answers, data / "model_answer",
                  lambda u, model, t: {"question_id": u, "model_id": model,
                                       "choices": [{"index": 0, "turns": [{"content": t}]}]},
                  "choices", "conv_metadata")
    os.chdir(work / "v01data")
    np.NAN = np.nan  # the 2024 code predates numpy 2, which dropped this alias of the same value
    import show_result  # noqa: E402
    import utils_math as um  # noqa: E402

    out = {}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        for style in (False, True):
            battles = show_result.get_battles_from_judgment("arena-hard-v0.1", "gpt-4-1106-preview", False, 3, BASELINE,
                                                            style)
            np.random.seed(42)
            if style:
                X, Y, models = um.construct_style_matrices(battles)
                bt, _ = um.fit_bt(X, Y, models, baseline_model=BASELINE)
                boot, _ = um.get_bootstrap_result_style_control(X, Y, battles, models, um.fit_bt, num_round=100,
                                                                baseline_model=BASELINE)
            else:
                bt = um.compute_mle_elo(battles, baseline_model=BASELINE)
                boot = um.get_bootstrap_result(battles, um.compute_mle_elo, 100, BASELINE)
            # show_result's stats table: score = full fit, lower/upper = 2.5/97.5 percentiles per model,
            # each turned into the win rate against the baseline (get_win_rate_column, here unrounded)
            columns = {"score": dict(bt), "ci_lower": {m: np.percentile(boot[m], 2.5) for m in bt.index},
                       "ci_upper": {m: np.percentile(boot[m], 97.5) for m in bt.index}}
            result = {}
            for column, values in columns.items():
                table = um.predict_win_rate(values)
                for m in values:
                    if m != BASELINE:
                        result.setdefault(m, {})[column] = float(table[BASELINE][m]) * 100
            out["style" if style else "scores"] = result
    get_score = function_from((code / "gen_judgment.py").read_text(), "get_score")
    out["labels"] = [list(get_score(t, re.compile(r"\[\[([AB<>=]+)\]\]"))) for t in JUDGMENT_TEXTS]
    out["metadata"] = {m: {r["question_id"]: r["conv_metadata"] for r in map(
        json.loads, (data / "model_answer" / f"{m.split('/')[-1]}.jsonl").read_text().splitlines())} for m in answers}
    sys.path.remove(str(code))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", required=True, help="a clone of lmarena/arena-hard-auto (its git directory)")
    args = ap.parse_args()
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        result = {"v2": run_v2(args.repo, Path(tmp)), "v2_categories": run_v2_categories(args.repo, Path(tmp)),
                  "v0.1": run_v01(args.repo, Path(tmp))}
    os.chdir(here)
    commit = subprocess.run(["git", "-C", args.repo, "rev-parse", V2_COMMIT], capture_output=True, text=True).stdout
    result["source"] = {"repository": "lmarena/arena-hard-auto", "v2": commit.strip(), "v0.1": V01_COMMIT}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
