import json

import pytest

from pride.config import DataSettings, SourceSettings
from pride.data import Conversation, PreferencePair, load_rows, read_rows
from pride.errors import PrideError
from tests.conftest import write_jsonl


def rows_of(path, want="any", **source):
    return read_rows(SourceSettings(path=str(path), **source), want, "error", {})


def test_messages_layout(tmp_path, conversations):
    rows = rows_of(write_jsonl(tmp_path / "c.jsonl", conversations))
    assert isinstance(rows[0], Conversation) and len(rows) == 3
    assert rows[0].messages[0] == {"role": "system", "content": "Be brief."}
    assert rows[1].where.endswith("c.jsonl line 2")


def test_prompt_completion_layout(tmp_path):
    rows = rows_of(write_jsonl(tmp_path / "pc.jsonl", [
        {"prompt": "Say hi", "completion": "hi"},
        {"prompt": [{"role": "user", "content": "Say yo"}], "completion": [{"role": "assistant", "content": "yo"}]},
    ]))
    assert rows[0].messages == [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]
    assert rows[1].messages[-1] == {"role": "assistant", "content": "yo"}


def test_plain_preference_layout(tmp_path):
    (row,) = rows_of(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q", "chosen": "good", "rejected": "bad"}]))
    assert isinstance(row, PreferencePair)
    assert row.prompt == [{"role": "user", "content": "Q"}] and (row.chosen, row.rejected) == ("good", "bad")


def test_ultrafeedback_binarized_layout(tmp_path):
    uf = {"prompt": "Q", "prompt_id": "x", "score_chosen": 8.0, "score_rejected": 4.0,
          "chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "good"}],
          "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "bad"}],
          "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "good"}]}
    (row,) = rows_of(write_jsonl(tmp_path / "uf.jsonl", [uf]), columns={"chosen_score": "score_chosen",
                                                                      "rejected_score": "score_rejected"})
    assert (row.chosen, row.rejected, row.chosen_score, row.rejected_score) == ("good", "bad", 8.0, 4.0)
    assert row.prompt == [{"role": "user", "content": "Q"}]


def test_hh_layout_without_prompt(tmp_path):
    conv = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}]
    (row,) = rows_of(write_jsonl(tmp_path / "hh.jsonl", [{
        "chosen": conv + [{"role": "assistant", "content": "good"}],
        "rejected": conv + [{"role": "assistant", "content": "bad"}]}]))
    assert row.prompt == conv and row.chosen == "good" and row.rejected == "bad"


def test_scored_preference_layout(tmp_path):
    (row,) = rows_of(write_jsonl(tmp_path / "s.jsonl", [
        {"prompt": "Q", "chosen": "a", "rejected": "b", "chosen_win_prob": 0.7, "rejected_win_prob": 0.3}]))
    assert (row.chosen_win_prob, row.rejected_win_prob) == (0.7, 0.3)


def test_column_mapping_and_sharegpt(tmp_path):
    rows = rows_of(write_jsonl(tmp_path / "sg.jsonl", [
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}]),
        columns={"messages": "conversations"})
    assert rows[0].messages == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


@pytest.mark.parametrize("bad,expected", [
    ('{"messages": [', "line 3: bad JSON"),
    ('{"text": "no layout"}', "line 3: field 'messages': missing"),
    ('{"messages": "hi"}', "line 3: field 'messages': expected a list of messages"),
    ('{"messages": [{"role": "user", "content": 5}]}', "line 3: field 'messages[0].content': expected a string"),
    ('{"messages": [{"role": "assistant", "content": "x"}]}', "line 3: field 'messages[0].role': expected 'user'"),
    ('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "  "}]}',
     "line 3: field 'messages[1].content': empty assistant turn"),
    ('{"messages": [{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}]}',
     "line 3: field 'messages[1].role': unknown role 'robot'"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "line 3: field 'messages': no assistant turn"),
    ('[1, 2]', "line 3: expected a JSON object"),
])
def test_bad_third_line_is_named(tmp_path, conversations, bad, expected):
    path = write_jsonl(tmp_path / "bad.jsonl", conversations[:2] + [bad])
    with pytest.raises(PrideError) as e:
        rows_of(path)
    assert str(path) in str(e.value) and expected in str(e.value)


def test_bad_preference_fields(tmp_path):
    for row, expected in [
        ({"prompt": "Q", "chosen": "a", "rejected": ""}, "field 'rejected': empty completion"),
        ({"prompt": "Q", "chosen": "a", "rejected": 3}, "field 'rejected': expected a string or messages"),
        ({"prompt": "Q", "chosen": "a", "rejected": "b", "chosen_win_prob": 2.0, "rejected_win_prob": 0.1},
         "field 'chosen_win_prob': expected a probability"),
        ({"prompt": "Q", "chosen": "a", "rejected": "b", "chosen_win_prob": 0.5}, "field 'rejected_win_prob'"),
        ({"prompt": "Q", "chosen": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "a"}],
          "rejected": "b"}, "field 'chosen': the messages before the last one do not match the prompt"),
    ]:
        path = write_jsonl(tmp_path / "p.jsonl", [row])
        with pytest.raises(PrideError, match="line 1") as e:
            rows_of(path)
        assert expected in str(e.value), str(e.value)


def test_not_utf8_line(tmp_path, conversations):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(conversations[0]).encode() + b"\n" + '{"messages": "caf\xe9"}'.encode("latin-1") + b"\n")
    with pytest.raises(PrideError, match=r"line 2: not UTF-8"):
        rows_of(path)


def test_on_bad_row_skip_counts(tmp_path, conversations):
    path = write_jsonl(tmp_path / "mixed.jsonl", conversations + ["{oops", '{"messages": []}'])
    data = DataSettings(sources=[SourceSettings(path=str(path))], on_bad_row="skip", shuffle=False)
    rows = load_rows(data, "conversation", seed=0)
    assert len(rows.train) == 3 and rows.stats["skipped_bad_rows"] == 2
    assert any("line 4" in x for x in rows.stats["bad_row_examples"])


def test_unknown_layout(tmp_path):
    with pytest.raises(PrideError, match="line 1: no known layout"):
        rows_of(write_jsonl(tmp_path / "x.jsonl", [{"text": "plain"}]))


def test_stage_rejects_wrong_layout(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q", "chosen": "a", "rejected": "b"}])
    with pytest.raises(PrideError, match="needs conversations"):
        rows_of(path, want="conversation")


def test_missing_file():
    with pytest.raises(PrideError, match="data file not found"):
        rows_of("./nope/data.jsonl")


def test_json_array_and_parquet_and_saved_dataset(tmp_path, conversations):
    import datasets

    (tmp_path / "a.json").write_text(json.dumps(conversations))
    assert len(rows_of(tmp_path / "a.json")) == 3
    ds = datasets.Dataset.from_list(conversations)
    ds.to_parquet(str(tmp_path / "a.parquet"))
    parquet_rows = rows_of(tmp_path / "a.parquet")
    assert [r.messages for r in parquet_rows] == [r.messages for r in rows_of(tmp_path / "a.json")]
    assert "a.parquet row 1" in parquet_rows[1].where
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "saved"))
    assert len(rows_of(tmp_path / "saved", split="test")) == 1
    with pytest.raises(PrideError, match="no split 'dev'"):
        rows_of(tmp_path / "saved", split="dev")


def test_prompt_only_rows(tmp_path):
    rows = rows_of(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Say hi"}]))
    assert rows[0].messages == [{"role": "user", "content": "Say hi"}]
    with pytest.raises(PrideError, match="prompt-only rows"):
        rows_of(tmp_path / "p.jsonl", want="conversation")


# openai/summarize_from_feedback "comparisons": the post under info, two summaries and the index of the preferred one
TLDR = {"info": {"id": "t3_1", "post": "My cat sat on the mat all day.", "title": "Cat news", "subreddit": "cats",
                 "site": None, "article": None},
        "summaries": [{"text": " cat sat", "policy": "sup2", "note": None},
                      {"text": " dog ran", "policy": "ppo", "note": None}],
        "choice": 1, "worker": "w1", "batch": "batch3", "split": "train", "extra": {"confidence": 8}}
# CustomPOs' SUMMARIZATION_TEMPLATE (algorithms/run_custom_po.py), Jinja fields written as paths
SUM_PROMPT = ("<|im_start|>user\nSUBREDDIT: r/{info.subreddit}\nTITLE: {info.title}\nPOST: {info.post}\nTL;DR: "
              "<|im_end|> <|im_start|>assistant ")
SUM_COLUMNS = {"prompt": SUM_PROMPT, "chosen": "summaries[choice].text", "rejected": "summaries[1-choice].text"}


def test_nested_summarization_layout(tmp_path):
    """CustomPOs' apply_sum_template: prompt from info, chosen = summaries[choice], rejected = summaries[1 - choice]."""
    (row,) = rows_of(write_jsonl(tmp_path / "tldr.jsonl", [TLDR]), columns=SUM_COLUMNS)
    assert row.prompt == [{"role": "user", "content": "<|im_start|>user\nSUBREDDIT: r/cats\nTITLE: Cat news\nPOST: "
                                                      "My cat sat on the mat all day.\nTL;DR: <|im_end|> "
                                                      "<|im_start|>assistant "}]
    assert (row.chosen, row.rejected) == (" dog ran", " cat sat")
    flipped = {**TLDR, "choice": 0}
    (row,) = rows_of(write_jsonl(tmp_path / "tldr0.jsonl", [flipped]), columns=SUM_COLUMNS)
    assert (row.chosen, row.rejected) == (" cat sat", " dog ran")


def test_template_renders_like_jinja(tmp_path):
    """The CNN/DM rows of the same dataset have no subreddit and a null post: Jinja renders '' and 'None'."""
    jinja2 = pytest.importorskip("jinja2")
    cnn = {**TLDR, "info": {"id": "c1", "article": "Text.", "title": "T", "post": None, "site": "cnn"}}
    (row,) = rows_of(write_jsonl(tmp_path / "cnn.jsonl", [cnn]), columns=SUM_COLUMNS)
    jinja = jinja2.Template(SUM_PROMPT.replace("{info.", "{{ ").replace("}", " }}")).render(**cnn["info"])
    assert row.prompt[0]["content"] == jinja and "r/\n" in jinja and "POST: None" in jinja


def test_nested_path_errors_name_the_path(tmp_path):
    bad = {**TLDR, "choice": 5}
    path = write_jsonl(tmp_path / "bad.jsonl", [TLDR, bad])
    with pytest.raises(PrideError, match=r"bad.jsonl line 2: field 'chosen': columns path 'summaries\[choice\].text': "
                                         r"no item \[5\]"):
        rows_of(path, columns=SUM_COLUMNS)
    with pytest.raises(PrideError, match=r"line 1: field 'chosen': columns path 'info.nope.x': 'nope' missing"):
        rows_of(path, columns={**SUM_COLUMNS, "chosen": "info.nope.x"})
