"""The Phi chat models this project fine-tunes, one entry per family: where the weights come from (an Azure ML
registry version, pinned), the chat template, the token that ends a turn, what generation must stop on, and where
LoRA goes.

A tuned chat model that never stops talking has, nearly always, an end-of-turn token that was not trained or not
served as a stop token. Here both are handled per family: the training template puts ``<|end|>`` inside the
assistant's loss, and ``chatft.model_source.apply_stop_tokens`` writes every stop token into the generation config
the merged model is saved with (which the endpoint and the evaluation read).

Sources, read 2026-12 (templates written out from them, not downloaded):
- Phi-3-mini-4k-instruct and Phi-3.5-mini-instruct: the chat templates of their Hugging Face tokenizer_config.json,
  which TRL 1.16 ships verbatim as ``trl/chat_templates/phi3.jinja`` and ``phi3_5.jinja`` (with training variants);
  special tokens and generation_config ``eos_token_id`` [32000, 32001, 32007] from the model cards' repositories.
- Phi-4-mini-instruct: the model card (https://huggingface.co/microsoft/Phi-4-mini-instruct, "Chat format":
  ``<|system|>...<|end|><|user|>...<|end|><|assistant|>``, no newlines) and its tokenizer_config.json chat_template
  (with the ``<|tool|>`` branch for a system message carrying tools); generation_config ``eos_token_id``
  [200020, 199999] = ``<|end|>``, ``<|endoftext|>``. Architecture Phi3ForCausalLM with a 200,064-word vocabulary,
  ``partial_rotary_factor`` 0.75 and tied embeddings.
- Registry versions: ``Phi-3-mini-4k-instruct/versions/4`` (this project's pin), ``Phi-3.5-mini-instruct/versions/4``
  (Microsoft's Phi Cookbook and Olive examples), ``Phi-4-mini-instruct/versions/3`` (the parent asset of the Foundry
  Local ONNX variants). Not checked against a live registry (none is reachable here): confirm with
  ``az ml model list --registry-name azureml --name <model>`` before a real run, and bump deliberately.
"""

from __future__ import annotations

from dataclasses import dataclass

# Phi-3 fuses q/k/v into qkv_proj and gate/up into gate_up_proj; Phi-3.5-mini and Phi-4-mini keep that layout.
PHI3_LORA_TARGETS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")

PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
# As Phi-3's, but an empty system message is left out.
PHI35_CHAT_TEMPLATE = PHI3_CHAT_TEMPLATE.replace(
    "{% if message['role'] == 'system' %}", "{% if message['role'] == 'system' and message['content'] %}"
)
PHI4_MINI_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message and message['tools'] is "
    "not none %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' + message['tools'] + '<|/tool|>' + "
    "'<|end|>' }}{% else %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)
# The same text, with {% generation %} around what the assistant must learn to write: its content and the <|end|>
# that closes its turn (TRL knows the Phi-3 and Phi-3.5 templates, not this one).
PHI4_MINI_TRAINING_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message and message['tools'] is "
    "not none %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' + message['tools'] + '<|/tool|>' + "
    "'<|end|>' }}{% elif message['role'] == 'assistant' %}{{ '<|assistant|>' }}{% generation %}"
    "{{ message['content'] + '<|end|>' }}{% endgeneration %}{% else %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)

_PHI3_ROLES = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
_PHI3_SPECIAL = ("<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>")


@dataclass(frozen=True)
class ModelFamily:
    name: str
    registry_model: str  # name in the Azure ML "azureml" registry
    registry_version: int
    hf_id: str
    chat_template: str  # the stock template, as the tokenizer ships it
    # With {% generation %} markers; None where TRL supplies it (get_training_chat_template).
    training_chat_template: str | None
    end_of_turn: str  # the token that closes every turn; the assistant's is trained
    stop_tokens: tuple[str, ...]  # generation stops on any of them (the model's generation_config, plus end_of_turn)
    special_tokens: tuple[str, ...]
    token_roles: dict  # bos/eos/unk/pad as the tokenizer defines them
    lora_target_modules: tuple[str, ...] = PHI3_LORA_TARGETS

    @property
    def registry_uri(self) -> str:
        return f"azureml://registries/azureml/models/{self.registry_model}/versions/{self.registry_version}"


def _phi3_family(name: str, model: str, chat_template: str) -> ModelFamily:
    """Phi-3 and Phi-3.5 mini share their tokens, roles and registry version; name and template tell them apart."""
    return ModelFamily(
        name=name,
        registry_model=model,
        registry_version=4,
        hf_id=f"microsoft/{model}",
        chat_template=chat_template,
        training_chat_template=None,
        end_of_turn="<|end|>",
        stop_tokens=("<|endoftext|>", "<|assistant|>", "<|end|>"),
        special_tokens=_PHI3_SPECIAL,
        token_roles=_PHI3_ROLES,
    )


FAMILIES = {
    "phi-3-mini-4k": _phi3_family("phi-3-mini-4k", "Phi-3-mini-4k-instruct", PHI3_CHAT_TEMPLATE),
    "phi-3.5-mini": _phi3_family("phi-3.5-mini", "Phi-3.5-mini-instruct", PHI35_CHAT_TEMPLATE),
    "phi-4-mini": ModelFamily(
        name="phi-4-mini",
        registry_model="Phi-4-mini-instruct",
        registry_version=3,
        hf_id="microsoft/Phi-4-mini-instruct",
        chat_template=PHI4_MINI_CHAT_TEMPLATE,
        training_chat_template=PHI4_MINI_TRAINING_CHAT_TEMPLATE,
        end_of_turn="<|end|>",
        stop_tokens=("<|end|>", "<|endoftext|>"),
        special_tokens=(
            "<|endoftext|>",
            "<|assistant|>",
            "<|end|>",
            "<|user|>",
            "<|system|>",
            "<|tool|>",
            "<|/tool|>",
            "<|tool_call|>",
            "<|/tool_call|>",
            "<|tool_response|>",
        ),
        token_roles={
            "unk_token": "<|endoftext|>",
            "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
        },
    ),
}


def family_for_template(template: str | None) -> ModelFamily | None:
    """The family whose stock chat template is exactly ``template`` (how TRL recognises templates too)."""
    return next((f for f in FAMILIES.values() if template and f.chat_template == template), None)


def family_for_registry_uri(uri: str) -> ModelFamily | None:
    """The family of an ``azureml://registries/azureml/models/<name>/versions/<n>`` URI, by model name."""
    return next((f for f in FAMILIES.values() if f"/models/{f.registry_model}/versions/" in uri), None)
