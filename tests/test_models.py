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
