"""Every module pride imports at run time is installed by `pip install pride` (issue 44): the
`httpx` gap (openai stopped bringing it) was found by hand on a fresh install; this finds the next.

Each `import X` / `from X import ...` in src/pride is mapped to the distribution that provides it
(importlib.metadata.packages_distributions, the installed environment's own record) and must be a
runtime dependency in pyproject.toml, unless it is the standard library or one of the optional
modules below, each imported only where its feature is asked for and named in an extra or in the
README (a GPU server, a tracker, a metric)."""

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = {  # module: where it is asked for (each import sits inside the function that needs it)
    "vllm": "online.sampler=vllm, eval.server=vllm (GPU)", "sglang": "eval.server=sglang (GPU)",
    "flash_attn": "model.attn_implementation=flash_attention_2", "bitsandbytes": "model.load_in_4bit",
    "wandb": "report_to wandb (extra: wandb)", "mlflow": "report_to mlflow (extra: mlflow)",
    "trackio": "report_to trackio (extra: trackio)", "tensorboard": "report_to tensorboard (extra: tensorboard)",
    "lm_eval": "eval open_llm (extra: openllm)", "comet": "task metric comet (extra: comet)",
    "bert_score": "task metric bertscore (extra: bertscore)", "liger_kernel": "GPU kernels when installed",
}


def imported_modules() -> dict[str, str]:
    """Top-level module -> the first file that imports it, over src/pride (absolute imports only)."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "src" / "pride").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def runtime_dependencies() -> set[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {d.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].split("!")[0].strip().lower()
            .replace("_", "-") for d in deps}


def test_every_module_imported_at_run_time_is_a_runtime_dependency():
    provides = packages_distributions()
    deps = runtime_dependencies()
    missing = []
    for module, where in imported_modules().items():
        if module == "pride" or module in sys.stdlib_module_names or module in OPTIONAL or module == "__future__":
            continue
        dists = {d.lower().replace("_", "-") for d in provides.get(module, [])}
        if not dists:
            pytest.fail(f"{where} imports {module!r}, which no installed distribution provides")
        if not dists & deps:
            missing.append(f"{module} ({where}; from {', '.join(sorted(dists))})")
    assert not missing, "imported at run time but not in pyproject's dependencies: " + "; ".join(missing)


def test_the_check_finds_a_missing_dependency():
    """The check itself: a module provided by a distribution outside the dependencies is reported."""
    provides = packages_distributions()
    assert "httpx" in runtime_dependencies() and "httpx" in {d.lower() for d in provides["httpx"]}
    assert not {d.lower() for d in provides["pytest"]} & runtime_dependencies()  # what the test would flag
