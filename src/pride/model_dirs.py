"""One check of a local model directory before anything loads it: training, serving, judging
and evaluation all come through here, so a bad directory reads the same everywhere.

transformers' own failures on a bad directory name neither the file nor the cause (a LoRA
adapter is "not a model", a truncated tokenizer.json a Rust parse error, a Jinja typo a failure
on the first data row); these checks say which file, what is wrong with it, and what to do.
"""

import json
from pathlib import Path

from pride.errors import PrideError

JSON_FILES = ("config.json", "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json",
              "added_tokens.json", "generation_config.json", "adapter_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "tokenizer_config.json")


def read_json(path: Path) -> dict:
    """A JSON file of a model directory, its parse error as one line naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise PrideError(f"{path}: not UTF-8 text; the file is corrupt, copy it again") from None
    except json.JSONDecodeError as e:
        raise PrideError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); the file is "
                         "truncated or corrupt, copy it again") from None
    except OSError as e:
        raise PrideError(f"{path}: cannot read it ({e.strerror})") from None
    if not isinstance(data, dict):
        raise PrideError(f"{path}: a JSON {type(data).__name__}, not an object; the file is not what its name says")
    return data


def check_json_files(d: Path) -> None:
    for name in JSON_FILES:
        if (d / name).is_file():
            read_json(d / name)


def check_not_adapter(d: Path, key: str) -> None:
    """An adapter-only directory (peft's adapter_config.json, no config.json) is not a model."""
    if (d / "adapter_config.json").is_file() and not (d / "config.json").is_file():
        base = read_json(d / "adapter_config.json").get("base_model_name_or_path") or "its base model"
        raise PrideError(f"{key}={d}: a LoRA adapter (adapter_config.json, base {base}), not a full model; merge it "
                         f"into its base (peft: PeftModel.from_pretrained(base, '{d}').merge_and_unload()"
                         f".save_pretrained(OUT)) and use OUT, or serve the base with the adapter "
                         f"(vllm serve {base} --enable-lora --lora-modules NAME={d})")


def check_weights_dir(path: str, key: str) -> None:
    """Before loading weights: a model directory, not an adapter, with JSON files that parse and a
    vocabulary that holds its own special tokens."""
    d = Path(path).expanduser()
    check_not_adapter(d, key)
    check_json_files(d)
    if not (d / "config.json").is_file():
        raise PrideError(f"{key}={path}: not a model directory (no config.json there)")
    config = read_json(d / "config.json")
    config = config.get("text_config", config) if isinstance(config.get("text_config"), dict) else config
    vocab = config.get("vocab_size")
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        ids = config.get(name)
        for token in ids if isinstance(ids, list) else [ids]:
            if isinstance(vocab, int) and isinstance(token, int) and not 0 <= token < vocab:
                raise PrideError(f"{d / 'config.json'}: {name} {token} is outside the vocabulary of vocab_size "
                                 f"{vocab} (ids 0 to {vocab - 1}); the config does not belong to these weights")


def check_causal_lm(path: str, key: str) -> None:
    """A chat model is a causal LM: a reward model's directory (a score head, no LM head) would be
    loaded with a random LM head and answer bytes, so it is refused where a policy is loaded."""
    d = Path(path).expanduser()
    if not (d / "config.json").is_file():
        return
    architectures = read_json(d / "config.json").get("architectures") or []
    if architectures and all(a.endswith("ForSequenceClassification") for a in architectures):
        raise PrideError(f"{key}={path}: a reward model ({architectures[0]}: a score head, no LM head), not a model "
                         "that writes text; it would generate with a random LM head. Use the policy it was trained "
                         "beside, or judge with it (online.judge.type=reward_model)")


def check_tokenizer_dir(path: str, key: str) -> None:
    """Before loading a tokenizer: its files are there and their JSON parses."""
    d = Path(path).expanduser()
    check_not_adapter(d, key)
    check_json_files(d)
    if not any((d / name).is_file() for name in TOKENIZER_FILES):
        if not (d / "config.json").is_file():
            raise PrideError(f"{key}={path}: not a Hugging Face model directory (no config.json and no tokenizer "
                             "files there)")
        raise PrideError(f"{key}={path}: no tokenizer there (none of {', '.join(TOKENIZER_FILES)}); copy the "
                         "tokenizer files into it, or set model.tokenizer to the directory that has them")


def template_source(path: str) -> str:
    """The file a directory's chat template comes from (for error messages)."""
    d = Path(path).expanduser()
    for name in ("chat_template.jinja", "chat_template.json"):
        if (d / name).is_file():
            return str(d / name)
    return str(d / "tokenizer_config.json")


def check_chat_template(tokenizer, path: str) -> None:
    """The tokenizer's Jinja chat template(s) compile, with transformers' own compiler (its
    extensions and sandbox), so a syntax error is named before any data row is rendered."""
    import jinja2
    from transformers.utils.chat_template_utils import _compile_jinja_template

    templates = tokenizer.chat_template
    if isinstance(templates, str):
        templates = {"default": templates}
    for name, text in (templates or {}).items():
        try:
            _compile_jinja_template(text)
        except jinja2.TemplateSyntaxError as e:
            which = "" if name == "default" else f" {name!r}"
            raise PrideError(f"{template_source(path)}: chat template{which}, line {e.lineno}: Jinja syntax error "
                             f"({e.message})") from None


def check_score_head(path: str, key: str = "online.judge.path") -> None:
    """A reward model is a sequence-classification model: a causal LM's directory would get a
    randomly initialised score head and judge at random, so it is refused."""
    d = Path(path).expanduser()
    check_weights_dir(path, key)
    architectures = read_json(d / "config.json").get("architectures") or []
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise PrideError(f"{key}={path}: a {architectures[0]} (no score head), not a reward model; a reward model "
                         "is a sequence-classification directory (architectures: ...ForSequenceClassification), "
                         "or it would judge with a random head")
