"""Each recipe that names a source reproduces it value for value (issue 15).

The expected values, each with the file and line of the source that states it, are recorded by
tests/recipe_sources.py from a clone of the source repository (tests/data/recipe_sources/).
"""

import itertools
import json
import math
import re
from pathlib import Path

import pytest

from pride.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
TABLES = sorted((ROOT / "tests" / "data" / "recipe_sources").glob("*.json"))
CASES = [(t, name) for t in TABLES for name in json.loads(t.read_text())["recipes"]]


def lookup(tree, dotted: str):
    for part in dotted.split("."):
        tree = tree[int(part)] if isinstance(tree, list) else tree[part]
    return tree


def resolved_value(stages, key: str):
    """`stage:dotted.key` in that stage's resolved config, a plain dotted key in the first stage's."""
    name, _, dotted = key.rpartition(":")
    stage = next(s for s in stages if s.name == name) if name else stages[0]
    try:
        return lookup(stage.config.model_dump(mode="json"), dotted)
    except (KeyError, IndexError, TypeError):
        return "<not set>"


@pytest.mark.parametrize("table,name", CASES, ids=[n for _, n in CASES])
def test_recipe_equals_its_source(table, name):
    expected = json.loads(table.read_text())["recipes"][name]
    _, stages = load_recipe(ROOT / "recipes" / f"{name}.yaml")
    wrong = {k: (resolved_value(stages, k), e["value"], e["source"]) for k, e in expected.items()
             if resolved_value(stages, k) != e["value"]}
    assert not wrong, "recipe value, source value, where the source states it: " + json.dumps(wrong, indent=1)


def test_every_recipe_has_a_source_table():
    assert {n for _, n in CASES} == {p.stem for p in (ROOT / "recipes").glob("*.yaml")}


def test_every_custompos_setting_has_a_recipe():
    names = {n for t, n in CASES if t.stem == "customPOs"}
    assert len(names) == 10 and names == {p.stem for p in (ROOT / "recipes").glob("customPOs-*.yaml")}


NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def states(value, cited: list[str], product: bool) -> bool:
    """Whether the cited source lines state `value`: a number among the line's numbers (or, for
    a value cited as a product "a x b x c", one number of each line multiplying to it), true or
    false as a word, a string verbatim, every item of a list (None, an open slice end, aside)."""
    if isinstance(value, bool):
        return any(re.search(rf"\b{str(value).lower()}\b", line.lower()) for line in cited)
    if isinstance(value, (int, float)):
        numbers = [[float(x) for x in NUMBER.findall(line)] for line in cited]
        if product:
            return any(math.isclose(math.prod(c), value) for c in itertools.product(*numbers))
        return any(math.isclose(n, value) for ns in numbers for n in ns)
    if isinstance(value, str):
        return any(value in line for line in cited)
    if isinstance(value, list) and value:
        return all(states(v, cited, False) for v in value if v is not None)
    return False  # None, [] and {}: the source's own spelling must be given (stated_as)


@pytest.mark.parametrize("table,name", CASES, ids=[n for _, n in CASES])
def test_each_cited_line_states_its_value(table, name):
    """A wrong citation (the key's line, a neighbour, a comment) cannot pass: the lines a table
    cites, stored with it, must hold the value, or the source's own spelling of it
    (`stated_as`: "bfloat16" for bf16, "hinge" for slic_dpo, ...)."""
    wrong = {}
    for key, e in json.loads(table.read_text())["recipes"][name].items():
        found = (any(e["stated_as"] in line for line in e["cited"]) if "stated_as" in e
                 else states(e["value"], e["cited"], " x " in e["source"]))
        if not found:
            wrong[key] = {"value": e["value"], "stated_as": e.get("stated_as"), "cited": e["cited"]}
    assert not wrong, json.dumps(wrong, indent=1)


def test_the_citation_check_catches_the_wrong_line():
    """The citations issue 25 found wrong: the key's line instead of the list item under it, a
    neighbouring line, one factor of a product."""
    assert not states("train", ["dataset_splits:"], False) and states("train", ["- train"], False)
    assert not states(0.3, ['"data/lion-dpo-online/...": 0.1,'], False)
    assert states(0.3, ['"Columbia-NLP/DPO-Nectar": 0.3,'], False)
    assert not states(1.375, ["gamma_beta_ratio: 0.55"], False)
    assert states(1.375, ["gamma_beta_ratio: 0.55", "beta: 2.5"], True)
    assert not states(None, ["mask_embed_grad: false"], False)
