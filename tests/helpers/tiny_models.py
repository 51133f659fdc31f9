"""Tiny random chat models for tests: real architectures and chat templates, a few hundred KB, built offline.

``build_tiny_model(out_dir, "phi3")`` gives a ``Phi3ForCausalLM`` (fused ``qkv_proj`` / ``gate_up_proj``, as in
Phi-3-mini) with Phi-3's chat template; ``"llama"`` gives a ``LlamaForCausalLM`` with SmolLM2's ChatML template,
the architecture of the local default. The tokenizer is a byte-level BPE trained in memory on the test chats,
so any text round-trips and no file or network is needed.
"""

from __future__ import annotations

from pathlib import Path

from chatft.model_source import SMOLLM2_CHAT_TEMPLATE
from tests.helpers.chat_data import make_conversations

# Phi-3-mini-4k-instruct's chat template, verbatim (TRL recognises it by exact match for assistant-only loss).
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

# Special tokens as the real tokenizers define them; the first ones get the lowest ids, like the originals.
_ARCHS = {
    "phi3": {
        "special": ["<unk>", "<s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        "roles": {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
        # Phi-3's generation_config stops on <|endoftext|>, <|assistant|> and <|end|>.
        "stop": ["<|endoftext|>", "<|assistant|>", "<|end|>"],
        "template": PHI3_CHAT_TEMPLATE,
    },
    "llama": {
        "special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "roles": {
            "unk_token": "<|endoftext|>",
            "bos_token": "<|im_start|>",
            "eos_token": "<|im_end|>",
            "pad_token": "<|im_end|>",
        },
        "stop": ["<|im_end|>"],
        "template": SMOLLM2_CHAT_TEMPLATE,
    },
}


def _corpus() -> list[str]:
    """A few hundred short strings in the style of the test chats, so common words become single tokens."""
    texts = []
    for chat in make_conversations(300, seed=1):
        texts.extend(message["content"] for message in chat["messages"])
    texts += ["system user assistant", "You are a helpful AI assistant.", "The quick brown fox jumps. 0123456789"]
    return texts


def build_tokenizer(arch: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    spec = _ARCHS[arch]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=spec["special"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte stays encodable
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=spec["template"], **spec["roles"])


def build_tiny_model(out_dir: str | Path, arch: str) -> Path:
    """Save a tiny random ``arch`` ("phi3" or "llama") model and its tokenizer to ``out_dir``; return the path."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM

    if arch not in _ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(_ARCHS)}")
    out = Path(out_dir)
    tokenizer = build_tokenizer(arch)
    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    # 2 layers × 64 wide: big enough for every projection LoRA targets, small enough to train in milliseconds.
    shape = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
    }
    torch.manual_seed(0)
    if arch == "phi3":
        config = Phi3Config(**shape, original_max_position_embeddings=1024, tie_word_embeddings=False, **ids)
        model = Phi3ForCausalLM(config)
    else:
        config = LlamaConfig(**shape, tie_word_embeddings=True, **ids)  # SmolLM2 ties its embeddings
        model = LlamaForCausalLM(config)
    stop_ids = tokenizer.convert_tokens_to_ids(_ARCHS[arch]["stop"])
    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos_token_id"], eos_token_id=stop_ids, pad_token_id=ids["pad_token_id"]
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
