import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pride.config import LoraSettings, ModelSettings
from pride.errors import PrideError
from pride.models import load_model_and_tokenizer


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_tiny_builds_offline_deterministic_and_saves_as_hf(tmp_path, arch, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok, fmt = load_model_and_tokenizer(ModelSettings(path=f"tiny:{arch}"), seed=3)
    again, _, _ = load_model_and_tokenizer(ModelSettings(path=f"tiny:{arch}"), seed=3)
    other, _, _ = load_model_and_tokenizer(ModelSettings(path=f"tiny:{arch}"), seed=4)
    sd, sd2, sd3 = model.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert any(not torch.equal(sd[k], sd3[k]) for k in sd)
    assert model.config.model_type == arch and tok.chat_template

    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path)
    msgs = [{"role": "user", "content": "Hi"}]
    ids = loaded_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert list(ids) == fmt.encode_prompt(msgs)
    x = torch.tensor([ids])
    with torch.no_grad():
        # identical weights through the identical computation (default rtol 1e-5 never needed)
        assert torch.allclose(model(x).logits, loaded(x).logits)
    # and pride loads the directory back the same way
    reloaded, _, fmt2 = load_model_and_tokenizer(ModelSettings(path=str(tmp_path)))
    assert fmt2.template is not None and fmt2.template.name == fmt.template.name
    with torch.no_grad():
        assert torch.allclose(reloaded(x).logits, loaded(x).logits)


def test_tiny_size_overrides():
    model, tok, _ = load_model_and_tokenizer(ModelSettings(path="tiny:llama", tiny={"hidden_size": 32,
                                                                                   "vocab_size": 1024}))
    assert model.config.hidden_size == 32 and model.get_input_embeddings().weight.shape[0] == 1024


def test_unknown_tiny_and_missing_dir_and_offline_hub(monkeypatch):
    with pytest.raises(PrideError, match="unknown tiny model 'tiny:gpt9'"):
        load_model_and_tokenizer(ModelSettings(path="tiny:gpt9"))
    with pytest.raises(PrideError, match="model directory not found: ./no/such/dir"):
        load_model_and_tokenizer(ModelSettings(path="./no/such/dir"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PrideError, match="model.path=DIR"):
        load_model_and_tokenizer(ModelSettings(path="meta-llama/Meta-Llama-3-8B"))


def test_lora_and_dtype():
    model, _, _ = load_model_and_tokenizer(ModelSettings(path="tiny:llama", dtype="bf16", lora=LoraSettings(r=4)))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_qlora_needs_gpu():
    if torch.cuda.is_available():
        pytest.skip("GPU present")
    with pytest.raises(PrideError, match="needs a CUDA GPU"):
        load_model_and_tokenizer(ModelSettings(path="tiny:llama", load_in_4bit=True, lora=LoraSettings()))


def test_auto_attention_picks_what_the_architecture_supports():
    """Gemma-2 has no sdpa path in transformers: auto must pick eager there (flash-attn absent)."""
    model, _, _ = load_model_and_tokenizer(ModelSettings(path="tiny:gemma2"))
    assert model.config._attn_implementation == "eager"
    assert model.config.final_logit_softcapping and model.config.attn_logit_softcapping
    model, _, _ = load_model_and_tokenizer(ModelSettings(path="tiny:llama"))
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(PrideError, match="attn_implementation=sdpa: Gemma2ForCausalLM does not support it"):
        load_model_and_tokenizer(ModelSettings(path="tiny:gemma2", attn_implementation="sdpa"))


def test_gemma2_model_dir_loads_with_defaults(tmp_path):
    model, tok, _ = load_model_and_tokenizer(ModelSettings(path="tiny:gemma2"))
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, _, _ = load_model_and_tokenizer(ModelSettings(path=str(tmp_path)))
    assert loaded.config._attn_implementation == "eager"


def test_tokenizer_path_separate_from_the_model():
    """LIONs' tokenizer_name_or_path: the model's weights from model.path, the tokenizer from model.tokenizer."""
    from pride.config import ModelSettings
    from pride.models import load_tokenizer
    from tests.real_tokenizers import real_tokenizer_dir

    tok = load_tokenizer(ModelSettings(path=str(real_tokenizer_dir("llama3")), tokenizer=str(real_tokenizer_dir("mistral"))))
    assert tok.bos_token == "<s>" and len(tok) == len(load_tokenizer(ModelSettings(path=str(real_tokenizer_dir("mistral")))))


def test_a_model_is_what_its_directory_says_it_is(tmp_path):
    """A reward model's directory is not a policy (training, serving and the reload route refuse it);
    another model's tokenizer as model.tokenizer, and a config whose special ids fall outside its
    vocabulary, are one line naming the two numbers; the reload route refuses a config that changes
    the computation (activation, rope, norm epsilon), naming the field."""
    import json

    import httpx

    from pride.cli import main
    from pride.config import ModelSettings
    from pride.engine import Engine
    from pride.errors import PrideError
    from pride.models import load_model_and_tokenizer, with_score_head
    from pride.serve.app import create_app, weights_loader
    from tests.test_serve import saved_tiny, start

    policy = saved_tiny(tmp_path / "policy")
    m, tok, fmt = load_model_and_tokenizer(ModelSettings(path=str(policy)))
    with_score_head(load_model_and_tokenizer(ModelSettings(path=str(policy)))[0], 0).save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                             {"role": "assistant", "content": "Hello"}]}) + "\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{sources: [{{path: {data}}}]}}\ntrain: {{max_steps: 1}}\n")
    rm_line = r"a reward model \(LlamaForSequenceClassification: a score head, no LM head\), not a model that writes"
    for command in (["sft", str(cfg), f"model.path={tmp_path / 'rm'}", f"output_dir={tmp_path / 'o'}"],
                    ["serve", str(tmp_path / "rm"), "--port", "0"]):
        with pytest.raises(PrideError, match=rm_line):
            load_model_and_tokenizer(ModelSettings(path=str(tmp_path / "rm")))
        assert main(command) == 2
    # another model's tokenizer: more tokens than embedding rows; or another beginning-of-sequence id
    from tests.real_tokenizers import real_tokenizer_dir

    with pytest.raises(PrideError, match=r"model\.tokenizer=.*: 32000 tokens, but .* has \d+ embedding rows"):
        load_model_and_tokenizer(ModelSettings(path=str(policy), tokenizer=str(real_tokenizer_dir("mistral"))))
    moved = saved_tiny(tmp_path / "moved")
    config = json.loads((moved / "config.json").read_text())
    config["bos_token_id"] = (tok.bos_token_id + 1) % config["vocab_size"]
    (moved / "config.json").write_text(json.dumps(config))
    with pytest.raises(PrideError, match=rf"its beginning-of-sequence token is id {tok.bos_token_id} .* config says "
                                         rf"{config['bos_token_id']}"):
        load_model_and_tokenizer(ModelSettings(path=str(moved), tokenizer=str(policy)))
    config["bos_token_id"], config["pad_token_id"] = tok.bos_token_id, config["vocab_size"] + 5
    (moved / "config.json").write_text(json.dumps(config))
    with pytest.raises(PrideError, match=rf"config\.json: pad_token_id {config['vocab_size'] + 5} is outside the "
                                         rf"vocabulary of vocab_size {config['vocab_size']}"):
        load_model_and_tokenizer(ModelSettings(path=str(moved)))
    # the reload route: a reward model, and a config that computes otherwise
    engine = Engine(m, tok, max_batch_size=2)
    server, base = start(create_app(engine, fmt, "tiny", None, 64, 64, model_path=str(policy),
                                    load_weights=weights_loader(m, tok)))
    try:
        answer = httpx.post(base + "/update_weights_from_disk", json={"model_path": str(tmp_path / "rm")}, timeout=60)
        assert answer.status_code == 400 and "a reward model" in answer.json()["message"]
        rope = {"rope_theta": 1234.0, "rope_type": "default"}
        for field, value in (("hidden_act", "gelu"), ("rms_norm_eps", 1e-3), ("rope_parameters", rope)):
            other = saved_tiny(tmp_path / f"other-{field}")
            config = json.loads((other / "config.json").read_text())
            config[field] = value
            (other / "config.json").write_text(json.dumps(config))
            answer = httpx.post(base + "/update_weights_from_disk", json={"model_path": str(other)}, timeout=60)
            assert answer.status_code == 400 and f"has {field}=" in answer.json()["message"], (field, answer.text)
        same = saved_tiny(tmp_path / "same", seed=3)
        assert httpx.post(base + "/update_weights_from_disk", json={"model_path": str(same)}, timeout=60).status_code == 200
    finally:
        server.should_exit = True
        engine.stop()
