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
