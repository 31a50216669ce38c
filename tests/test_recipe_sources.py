"""Each recipe that names a source reproduces it value for value (issue 15).

The expected values, each with the file and line of the source that states it, are recorded by
tests/recipe_sources.py from a clone of the source repository (tests/data/recipe_sources/).
"""

import json
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


@pytest.mark.parametrize("table,name", CASES, ids=[n for _, n in CASES])
def test_recipe_equals_its_source(table, name):
    expected = json.loads(table.read_text())["recipes"][name]
    _, stages = load_recipe(ROOT / "recipes" / f"{name}.yaml")
    resolved = stages[0].config.model_dump(mode="json")
    wrong = {k: (lookup(resolved, k), e["value"], e["source"]) for k, e in expected.items()
             if lookup(resolved, k) != e["value"]}
    assert not wrong, "recipe value, source value, where the source states it: " + json.dumps(wrong, indent=1)


def test_every_custompos_setting_has_a_recipe():
    names = {n for t, n in CASES if t.stem == "customPOs"}
    assert len(names) == 10 and names == {p.stem for p in (ROOT / "recipes").glob("customPOs-*.yaml")}
