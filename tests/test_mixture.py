from pride.config import DataSettings, SourceSettings
from pride.data import load_rows
from tests.conftest import write_jsonl


def make(tmp_path, name, n, prefix):
    return write_jsonl(tmp_path / name, [{"messages": [{"role": "user", "content": f"{prefix}{i}"},
                                                       {"role": "assistant", "content": "ok"}]} for i in range(n)])


def test_fractions_mix_sources(tmp_path):
    a, b = make(tmp_path, "a.jsonl", 100, "a"), make(tmp_path, "b.jsonl", 40, "b")
    data = DataSettings(sources=[SourceSettings(path=str(a), fraction=0.3), SourceSettings(path=str(b))])
    rows = load_rows(data, "conversation", seed=1)
    firsts = [r.messages[0]["content"][0] for r in rows.train]
    assert firsts.count("a") == 30 and firsts.count("b") == 40
    assert rows.stats["sources"] == [{"path": str(a), "rows": 100, "used": 30}, {"path": str(b), "rows": 40, "used": 40}]


def test_shuffle_is_deterministic_by_seed(tmp_path):
    a = make(tmp_path, "a.jsonl", 50, "a")
    data = DataSettings(sources=[SourceSettings(path=str(a), fraction=0.5)])
    one = [r.messages[0]["content"] for r in load_rows(data, "conversation", seed=3).train]
    two = [r.messages[0]["content"] for r in load_rows(data, "conversation", seed=3).train]
    other = [r.messages[0]["content"] for r in load_rows(data, "conversation", seed=4).train]
    assert one == two and one != other


def test_dedup_exact_duplicates(tmp_path):
    a = make(tmp_path, "a.jsonl", 10, "x")
    data = DataSettings(sources=[SourceSettings(path=str(a)), SourceSettings(path=str(a))], dedup=True)
    rows = load_rows(data, "conversation", seed=0)
    assert len(rows.train) == 10 and rows.stats["duplicates_removed"] == 10
    data.dedup = False
    assert len(load_rows(data, "conversation", seed=0).train) == 20


def test_eval_split(tmp_path):
    a = make(tmp_path, "a.jsonl", 20, "x")
    rows = load_rows(DataSettings(sources=[SourceSettings(path=str(a))], eval_fraction=0.25), "conversation", seed=0)
    assert len(rows.eval) == 5 and len(rows.train) == 15
    assert not {r.messages[0]["content"] for r in rows.eval} & {r.messages[0]["content"] for r in rows.train}
