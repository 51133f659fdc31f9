"""Tiny random chat models for tests: real architectures and chat templates, a few hundred KB, built offline.

``build_tiny_model(out_dir, "phi3")`` gives a ``Phi3ForCausalLM`` (fused ``qkv_proj`` / ``gate_up_proj``, as in
Phi-3-mini) with Phi-3's chat template; ``"llama"`` gives a ``LlamaForCausalLM`` with SmolLM2's ChatML template,
the architecture of the local default; ``"phi3.5"`` and ``"phi4-mini"`` the newer Phi families, each with its
own special tokens, chat template and stop tokens (``chatft.model_families``). The tokenizer is a byte-level BPE
trained in memory on the test chats, so any text round-trips and no file or network is needed.
"""

from __future__ import annotations

from pathlib import Path

from chatft.model_families import FAMILIES
from chatft.model_source import SMOLLM2_CHAT_TEMPLATE
from tests.helpers.chat_data import make_conversations

# Phi-3-mini-4k-instruct's chat template, verbatim (TRL recognises it by exact match for assistant-only loss).
PHI3_CHAT_TEMPLATE = FAMILIES["phi-3-mini-4k"].chat_template


def _family_arch(family: str) -> dict:
    spec = FAMILIES[family]
    return {
        "special": list(spec.special_tokens),
        "roles": spec.token_roles,
        "stop": list(spec.stop_tokens),
        "template": spec.chat_template,
    }


# Special tokens as the real tokenizers define them; the first ones get the lowest ids, like the originals.
# "phi3" is Phi-3-mini-4k; "phi3.5" and "phi4-mini" the newer Phi families (chatft.model_families), Phi3ForCausalLM all.
_ARCHS = {
    "phi3": {
        "special": ["<unk>", "<s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        "roles": {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
        # Phi-3's generation_config stops on <|endoftext|>, <|assistant|> and <|end|>.
        "stop": ["<|endoftext|>", "<|assistant|>", "<|end|>"],
        "template": PHI3_CHAT_TEMPLATE,
    },
    "phi3.5": _family_arch("phi-3.5-mini"),
    "phi4-mini": _family_arch("phi-4-mini"),
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
    """Save a tiny random ``arch`` model ("phi3", "phi3.5", "phi4-mini", "llama") and its tokenizer; return the path."""
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
    if arch in ("phi3", "phi3.5"):
        config = Phi3Config(**shape, original_max_position_embeddings=1024, tie_word_embeddings=False, **ids)
        model = Phi3ForCausalLM(config)
    elif arch == "phi4-mini":
        # Phi-4-mini: Phi-3's architecture with a vocabulary padded past the tokenizer (200,064 rows for ~200k
        # tokens), rotary embeddings on 3/4 of each head, tied input and output embeddings.
        ids["vocab_size"] = -(-len(tokenizer) // 64) * 64 + 64
        config = Phi3Config(
            **shape,
            original_max_position_embeddings=1024,
            partial_rotary_factor=0.75,
            tie_word_embeddings=True,
            **ids,
        )
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
