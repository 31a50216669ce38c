"""Load a causal LM and its tokenizer from a model reference.

A reference is a local HF directory, a hub id (only when online; offline gives a clear
error naming the path to use instead), or `tiny:<arch>` for a small random-init model.
Here too: dtype, attention backend, gradient checkpointing, LoRA/QLoRA, and the chat
template's special tokens (added, with the embeddings resized, when the tokenizer lacks them).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from pride.chat import ChatFormat, chat_format, missing_special_tokens
from pride.config import ModelSettings
from pride.errors import PrideError
from pride.model_dirs import check_causal_lm, check_chat_template, check_tokenizer_dir, check_weights_dir

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_dtype(name: str, device: str | torch.device | None = None) -> torch.dtype:
    """auto: fp32 on CPU; bf16 on GPUs that support it, else fp16."""
    if name != "auto":
        return DTYPES[name]
    dev = torch.device(device) if device is not None else _default_device()
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def gpu_server() -> str | None:
    """The generation backend `auto` picks over pride's own engine: vLLM, then sglang, when
    installed and a GPU is there (online sampling and evaluation hosting both ask here)."""
    if not torch.cuda.is_available():
        return None
    return next((name for name in ("vllm", "sglang") if importlib.util.find_spec(name) is not None), None)


def attention_backend(model) -> str:
    """The attention implementation the model runs (sdpa, eager, flash_attention_2, ...): what
    `load_model` set. transformers keeps it on the config without a public accessor, so this is
    the one place that reads it (the loop's flat layout, the shared-prompt mask)."""
    return getattr(model.config, "_attn_implementation", None) or "eager"


def resolve_attention(name: str, device: str | torch.device | None = None, model_class=None) -> str:
    """auto: flash-attention 2 on a GPU where installed, else sdpa, else eager, each only where the
    architecture supports it (Gemma-2 has no sdpa: eager, which keeps its softcapping).
    flex_attention is taken on request only: on an H200 with torch 2.11 its compiled kernel
    failed for pride's mixed-precision training of a bf16 checkpoint (inductor: "No choices to
    select" for the flex_attention template), while a tiny Llama's log-probs and gradients
    matched sdpa there in fp32 and under bf16 autocast (BENCHMARKS.md, GPU check)."""
    fa2 = importlib.util.find_spec("flash_attn") is not None
    supports = {"flash_attention_2": getattr(model_class, "_supports_flash_attn", True),
                "flex_attention": getattr(model_class, "_supports_flex_attn", True),
                "sdpa": getattr(model_class, "_supports_sdpa", True), "eager": True}
    if name != "auto":
        if name == "flash_attention_2" and not fa2:
            raise PrideError("model.attn_implementation=flash_attention_2 but flash-attn is not installed "
                             "(pip install flash-attn --no-build-isolation), or use flex_attention or sdpa")
        if not supports[name]:
            raise PrideError(f"model.attn_implementation={name}: {model_class.__name__} does not support it "
                             "(use auto, or eager)")
        return name
    dev = torch.device(device) if device is not None else _default_device()
    if dev.type == "cuda" and fa2 and supports["flash_attention_2"]:
        return "flash_attention_2"
    return "sdpa" if supports["sdpa"] else "eager"


def causal_lm_class(settings: ModelSettings):
    """The transformers class a reference loads as (None when unknown, e.g. remote code)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if is_tiny(settings.path):
        from pride.tiny import ARCHS

        arch = ARCHS.get(settings.path.split(":", 1)[1])
        model_type = arch.model_type if arch else None
    else:
        config = Path(settings.path) / "config.json"
        try:
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type") if config.is_file() else None
        except (OSError, ValueError):
            model_type = None
    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type or "")
    return getattr(transformers, name, None) if name else None


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def is_tiny(ref: str) -> bool:
    return ref.startswith("tiny:")


def _check_reference(ref: str, key: str = "model.path", check=None) -> None:
    """Fail early and clearly when a reference is neither local nor a hub id; mark local ones as
    inputs (never written over) and give them to `check` (pride.model_dirs)."""
    if is_tiny(ref):
        return
    if Path(ref).is_dir():
        from pride.io import mark_inputs

        mark_inputs(ref)
        if check is not None:
            check(ref, key)
        return
    looks_like_hub_id = not ref.startswith((".", "/", "~")) and ref.count("/") <= 1
    if not looks_like_hub_id:
        raise PrideError(f"{key}: model directory not found: {ref}")


def not_reachable(key: str, ref: str) -> PrideError:
    """A hub id that is neither cached nor reachable (the preflight's and the loader's one message)."""
    return PrideError(f"{key}={ref}: not a local directory, not in the Hugging Face cache, and the hub cannot be "
                      f"reached (offline or HF_HUB_OFFLINE=1); download it where there is a connection "
                      f"(huggingface-cli download {ref} --local-dir DIR) and set {key}=DIR")


def check_model_reference(settings: ModelSettings) -> None:
    """What loading the model checks first, without loading it: a local directory's files
    (`pride.model_dirs`), or a hub id that is reachable or in the local cache."""
    for ref, key in ((settings.path, "model.path"), (settings.tokenizer, "model.tokenizer")):
        if ref is None or is_tiny(ref):
            continue
        _check_reference(ref, key, check=check_weights_dir if key == "model.path" and not settings.tokenizer
                         else check_tokenizer_dir)
        if key == "model.path" and settings.tokenizer is None and Path(ref).expanduser().is_dir():
            check_tokenizer_dir(ref, key)
        if key == "model.path" and Path(ref).expanduser().is_dir():
            check_weights_dir(ref, key)
        if not Path(ref).expanduser().is_dir():
            from huggingface_hub import try_to_load_from_cache

            from pride.hub import hub_reachable

            if not hub_reachable() and not isinstance(try_to_load_from_cache(ref, "config.json"), str):
                raise not_reachable(key, ref)


def load_tokenizer(settings: ModelSettings):
    ref = settings.path
    _check_reference(ref, check=None if settings.tokenizer else check_tokenizer_dir)
    if is_tiny(ref):
        from pride.tiny import tiny_tokenizer

        tok = tiny_tokenizer(ref.split(":", 1)[1])
    else:
        from transformers import AutoTokenizer

        if settings.tokenizer:
            _check_reference(settings.tokenizer, "model.tokenizer", check=check_tokenizer_dir)
        tok = from_pretrained(AutoTokenizer.from_pretrained, settings.tokenizer or ref,
                              key="model.tokenizer" if settings.tokenizer else "model.path",
                              revision=None if settings.tokenizer else settings.revision,
                              trust_remote_code=settings.trust_remote_code)
        check_chat_template(tok, settings.tokenizer or ref)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(settings: ModelSettings, *, seed: int = 0, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None, tokenizer=None, head: str = "lm"):
    """The model in `dtype` (default: settings.dtype resolved for the device), eval mode off.
    head="score": a sequence-classification model with one output (a reward model), its score
    head new (random, seeded) unless the directory already has one."""
    ref = settings.path
    _check_reference(ref, check=check_weights_dir)
    if head == "lm" and not is_tiny(ref):
        check_causal_lm(ref, "model.path")
    dtype = dtype or resolve_dtype(settings.dtype, device)
    attn = resolve_attention(settings.attn_implementation, device, causal_lm_class(settings))
    quantization = _bnb_4bit(dtype) if settings.load_in_4bit else None
    if quantization is not None and is_tiny(ref):
        raise PrideError("model.load_in_4bit applies to model directories; save the tiny model first")
    if is_tiny(ref):
        from pride.tiny import tiny_model

        model = tiny_model(ref.split(":", 1)[1], seed=seed, overrides=settings.tiny, tokenizer=tokenizer)
        if head == "score":
            model = with_score_head(model, seed)
        model = model.to(dtype)
        model.set_attn_implementation(attn)
    else:
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        kwargs = dict(dtype=dtype, attn_implementation=attn, trust_remote_code=settings.trust_remote_code,
                      revision=settings.revision)
        if quantization is not None:
            kwargs["quantization_config"] = quantization
        if head == "score":
            with torch.random.fork_rng(devices=[]):  # the new score head: the same for the same seed
                torch.manual_seed(seed)
                model = from_pretrained(AutoModelForSequenceClassification.from_pretrained, ref, num_labels=1,
                                        **kwargs)
        else:
            model = from_pretrained(AutoModelForCausalLM.from_pretrained, ref, **kwargs)
    if settings.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers 5's name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if settings.lora is not None:
        model = _apply_lora(model, settings, "SEQ_CLS" if head == "score" else "CAUSAL_LM")
    return model


def with_score_head(causal_lm, seed: int):
    """The same decoder weights under a sequence-classification model with one output (TRL's
    reward models: AutoModelForSequenceClassification, num_labels=1), the head seeded."""
    from transformers import AutoModelForSequenceClassification

    config = causal_lm.config
    config.num_labels = 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(config, dtype=causal_lm.dtype)
    prefix = model.base_model_prefix
    getattr(model, prefix).load_state_dict(getattr(causal_lm, prefix).state_dict())
    return model


def warn_fallback(fmt: ChatFormat, ref: str) -> None:
    """A model without a chat template of its own (and none named) is rendered with ChatML: said
    once, wherever it is loaded (training, serving, chat), naming the fallback."""
    if fmt.fallback:
        import sys

        print(f"pride: warning: {ref} has no chat template; conversations are rendered with ChatML (<|im_start|> "
              f"... <|im_end|>), which this model may never have seen. Save the template it was trained with into "
              f"its tokenizer_config.json, or set model.chat_template", file=sys.stderr, flush=True)


def load_model_and_tokenizer(settings: ModelSettings, *, seed: int = 0, device=None, dtype=None, head: str = "lm"):
    """Model, tokenizer and chat format, consistent with each other (template tokens added);
    head="score": a reward model (see `load_model`), its pad token id set for its pooling."""
    tokenizer = load_tokenizer(settings)
    fmt = chat_format(tokenizer, settings.chat_template)
    warn_fallback(fmt, settings.path)
    missing = missing_special_tokens(tokenizer, fmt.template)
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    if fmt.template is not None:
        tokenizer.chat_template = fmt.template.jinja()  # saved with the model: same format at inference
    model = load_model(settings, seed=seed, device=device, dtype=dtype, tokenizer=tokenizer, head=head)
    embeddings = model.get_input_embeddings().weight.shape[0]
    if settings.tokenizer:
        check_tokenizer_fits(tokenizer, model, settings, len(tokenizer) - len(missing))
    if len(tokenizer) > embeddings:
        model.resize_token_embeddings(len(tokenizer))
    if head == "score":  # transformers pools at the last token that is not padding (TRL sets it too)
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, fmt


def check_tokenizer_fits(tokenizer, model, settings: ModelSettings, own: int) -> None:
    """`model.tokenizer` from another directory must be this model's: its vocabulary (before the chat
    template's tokens pride adds) within the embeddings, and the beginning-of-sequence token the
    model's config names. Another family's tokenizer would train on ids the model never learnt,
    silently. (Its end-of-sequence token may differ: LIONs' ChatML tokenizers end turns with
    <|im_end|> on base models whose config names another.)"""
    rows = model.get_input_embeddings().weight.shape[0]
    where = f"model.tokenizer={settings.tokenizer}"
    if own > rows:
        raise PrideError(f"{where}: {own} tokens, but {settings.path} has {rows} embedding rows; it is another "
                         "model's tokenizer (unset model.tokenizer, or name this model's)")
    bos = getattr(model.config, "bos_token_id", None)
    if isinstance(bos, int) and tokenizer.bos_token_id is not None and tokenizer.bos_token_id != bos:
        raise PrideError(f"{where}: its beginning-of-sequence token is id {tokenizer.bos_token_id} "
                         f"({tokenizer.bos_token!r}), but {settings.path}'s config says {bos}; it is another "
                         "model's tokenizer (unset model.tokenizer, or name this model's)")


def disable_dropout(model: torch.nn.Module) -> int:
    """Dropout off everywhere: nn.Dropout modules and the attention's own dropout rate.

    The reference log-probs come from a model in eval mode; a policy with dropout on would
    differ from it at step 0 (DPO's loss would not start at log 2). Returns how many were on."""
    turned_off = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and module.p > 0:
            module.p, turned_off = 0.0, turned_off + 1
        rate = getattr(module, "attention_dropout", None)
        if isinstance(rate, float) and rate > 0:
            module.attention_dropout, turned_off = 0.0, turned_off + 1
    return turned_off


def load_chat(settings: ModelSettings) -> tuple[object, ChatFormat]:
    """Tokenizer and chat format only (data preparation needs no weights)."""
    tokenizer = load_tokenizer(settings)
    fmt = chat_format(tokenizer, settings.chat_template)
    warn_fallback(fmt, settings.path)
    missing = missing_special_tokens(tokenizer, fmt.template)
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return tokenizer, fmt


def from_pretrained(loader, ref: str, key: str = "model.path", **kwargs):
    """`loader(ref)` (any transformers `from_pretrained`), its failures as one line naming `ref`
    and the setting `key` that named it. A hub id with the hub unreachable loads from the local
    cache only (at once, instead of a minute of retries)."""
    from safetensors import SafetensorError

    from pride.hub import hub_reachable

    local = Path(ref).expanduser().is_dir()
    if not local and not hub_reachable():
        kwargs["local_files_only"] = True
    try:
        return loader(ref, **kwargs)
    except SafetensorError as e:  # a truncated or corrupt weights file (a copy cut short)
        raise PrideError(f"{ref}: its safetensors weights are corrupt or truncated ({str(e).splitlines()[0]}); "
                         "copy or download the model again") from None
    except (OSError, ValueError, KeyError) as e:
        if local:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise PrideError(f"{ref}: not a loadable Hugging Face model directory ({first})") from None
        if not isinstance(e, OSError):
            raise
        if kwargs.get("local_files_only"):
            raise not_reachable(key, ref) from None
        raise PrideError(f"{key}={ref}: not a local directory and could not be fetched from the hub "
                         f"({str(e).splitlines()[0]}); download it elsewhere and set {key}=DIR") from None


def _bnb_4bit(dtype: torch.dtype):
    if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
        raise PrideError("model.load_in_4bit (QLoRA) needs a CUDA GPU and bitsandbytes (pip install bitsandbytes)")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


def _apply_lora(model, settings: ModelSettings, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if settings.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=settings.gradient_checkpointing)
    lora = settings.lora
    cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                     target_modules=lora.target_modules, task_type=task_type)  # SEQ_CLS: the score head trains
    return get_peft_model(model, cfg)
