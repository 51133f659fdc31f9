"""Phi-3-mini-4k, Phi-3.5-mini and Phi-4-mini, each as a tiny random model built from its config class with its
own tokenizer and chat template: the end-of-turn token is trained, generation stops on it, and the merged model's
tokenizer, chat template and generation config survive a save and a reload."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatft.model_families import FAMILIES, family_for_registry_uri, family_for_template
from chatft.model_source import apply_stop_tokens
from tests.helpers.chat_data import make_conversations, write_jsonl
from tests.helpers.components import load_script
from tests.helpers.tiny_models import build_tiny_model

REPO = Path(__file__).resolve().parents[1]
finetune = load_script("component_finetune_families", REPO / "components" / "finetune" / "finetune.py")
pytestmark = pytest.mark.usefixtures("mlflow_env")

# tiny-model arch → family
ARCHS = {"phi3": "phi-3-mini-4k", "phi3.5": "phi-3.5-mini", "phi4-mini": "phi-4-mini"}
CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Where is my invoice?"},
    {"role": "assistant", "content": "On the billing page."},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You are welcome."},
]


@pytest.fixture(scope="module", params=list(ARCHS))
def family_model(request, tmp_path_factory):
    arch = request.param
    return FAMILIES[ARCHS[arch]], build_tiny_model(tmp_path_factory.mktemp(arch.replace(".", "_")), arch)


@pytest.fixture(scope="module")
def chats(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("family_chats")
    write_jsonl(root / "train" / "train.jsonl", make_conversations(16))
    return root


def test_templates_are_the_stock_ones_and_every_family_has_a_pinned_registry_version():
    from trl.chat_template_utils import phi3_5_chat_template, phi3_chat_template

    # TRL ships the Phi-3 and Phi-3.5 templates verbatim (and recognises them by exact match): ours are those.
    assert FAMILIES["phi-3-mini-4k"].chat_template == phi3_chat_template
    assert FAMILIES["phi-3.5-mini"].chat_template == phi3_5_chat_template
    for family in FAMILIES.values():
        assert family.end_of_turn == "<|end|>" and family.end_of_turn in family.stop_tokens
        assert family.lora_target_modules == ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
        assert family.registry_uri.endswith(f"/models/{family.registry_model}/versions/{family.registry_version}")
        assert family_for_registry_uri(family.registry_uri) is family
        assert family_for_template(family.chat_template) is family


def test_the_training_template_renders_like_the_stock_one_and_trains_the_end_of_turn(family_model, chats, tmp_path):
    from chatft.model_source import load_tokenizer, training_chat_template

    family, model_dir = family_model
    tokenizer = load_tokenizer(model_dir)
    assert family_for_template(tokenizer.chat_template) is family
    training = training_chat_template(tokenizer)
    for chat in (CHAT, CHAT[1:], [{"role": "system", "content": ""}, *CHAT[1:3]]):
        stock = tokenizer.apply_chat_template(chat, tokenize=False)
        assert tokenizer.apply_chat_template(chat, chat_template=training, tokenize=False) == stock
    mask = tokenizer.apply_chat_template(
        CHAT, chat_template=training, return_assistant_tokens_mask=True, return_dict=True
    )
    trained = [t for t, m in zip(mask["input_ids"], mask["assistant_masks"], strict=True) if m]
    text = tokenizer.decode(trained)
    assert text.count("<|end|>") == 2 and "On the billing page." in text and "Where is my invoice" not in text

    # What the trainer really trains on: every loss-carrying span is an assistant reply closed by <|end|>.
    flags = ["--base_model", str(model_dir), "--train_data", str(chats / "train"), "--max_steps", "1"]
    flags += ["--max_seq_length", "256", "--precision", "fp32", "--per_device_train_batch_size", "1"]
    flags += ["--adapter", str(tmp_path / "a"), "--merged_model", str(tmp_path / "m"), "--checkpoints", str(tmp_path)]
    trainer = finetune.build_trainer(finetune.parse_args(flags))
    assert set(trainer.model.peft_config["default"].target_modules) == set(family.lora_target_modules)
    batch = next(iter(trainer.get_train_dataloader()))
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    end_id = tokenizer.convert_tokens_to_ids("<|end|>")
    spans, run = [], []
    for token, label in zip(ids, labels, strict=True):
        if label != -100:
            run.append(token)
        elif run:
            spans.append(run)
            run = []
    spans += [run] if run else []
    assert spans
    for span in spans:  # the reply, its <|end|>, then at most what the template writes after it (TRL's Phi-3: "\n")
        assert end_id in span and tokenizer.decode(span[: span.index(end_id)]).startswith("Answer ")
        assert tokenizer.decode(span[span.index(end_id) + 1 :]).replace(tokenizer.eos_token, "").strip() == ""


def _generate(model, tokenizer, force_end_at: int, eos_ids):
    """Greedy generation with ``<|end|>`` forced at new token ``force_end_at`` (random weights never choose it)."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    end_id = tokenizer.convert_tokens_to_ids("<|end|>")
    prompt = tokenizer.apply_chat_template(CHAT[:2], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    start = prompt["input_ids"].shape[1]

    class ForceEnd(LogitsProcessor):
        def __call__(self, input_ids, scores):
            if input_ids.shape[1] - start == force_end_at:
                scores = torch.full_like(scores, -float("inf"))
                scores[:, end_id] = 0.0
            else:
                scores[:, eos_ids] = -float("inf")  # nothing else may stop it
            return scores

    with torch.no_grad():
        out = model.generate(
            **prompt,
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=eos_ids,
            logits_processor=LogitsProcessorList([ForceEnd()]),
        )
    return out[0, start:].tolist()


def test_the_merged_model_stops_on_end_of_turn_and_its_tokenizer_template_and_generation_config_survive_reload(
    family_model, chats, tmp_path
):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    family, model_dir = family_model
    out = tmp_path / "out"
    flags = ["--base_model", str(model_dir), "--train_data", str(chats / "train"), "--max_steps", "2"]
    flags += ["--max_seq_length", "256", "--precision", "fp32", "--per_device_train_batch_size", "1"]
    flags += ["--adapter", str(out / "adapter"), "--merged_model", str(out / "merged"), "--checkpoints", str(out / "c")]
    finetune.main(finetune.parse_args(flags))

    base_tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for folder in (out / "merged", out / "resaved"):
        tokenizer = AutoTokenizer.from_pretrained(folder)
        assert tokenizer.chat_template == family.chat_template  # the stock one, not the training variant
        assert tokenizer.get_vocab() == base_tokenizer.get_vocab()
        assert tokenizer.eos_token == family.token_roles["eos_token"] and tokenizer.pad_token is not None
        assert tokenizer.apply_chat_template(CHAT, tokenize=False) == base_tokenizer.apply_chat_template(
            CHAT, tokenize=False
        )
        end_id = tokenizer.convert_tokens_to_ids("<|end|>")
        generation = GenerationConfig.from_pretrained(folder)
        stops = {tokenizer.convert_tokens_to_ids(t) for t in family.stop_tokens}
        assert end_id in generation.eos_token_id and stops <= set(generation.eos_token_id)
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert model.config.model_type == "phi3" and model.generation_config.eos_token_id == generation.eos_token_id
        if family.name == "phi-4-mini":
            assert model.config.partial_rotary_factor == 0.75 and model.config.vocab_size > len(tokenizer)
        # Stops right at the forced <|end|> with the saved stop ids; without <|end|> among them it talks on.
        assert _generate(model, tokenizer, 3, generation.eos_token_id)[-1] == end_id
        assert len(_generate(model, tokenizer, 3, generation.eos_token_id)) == 4
        others = [i for i in generation.eos_token_id if i != end_id]
        assert len(_generate(model, tokenizer, 3, others)) == 8
        if folder.name == "merged":
            model.save_pretrained(out / "resaved")
            tokenizer.save_pretrained(out / "resaved")


def test_apply_stop_tokens_adds_the_end_of_turn_a_base_generation_config_lacks(family_model):
    from chatft.model_source import load_causal_lm, load_tokenizer

    family, model_dir = family_model
    tokenizer, model = load_tokenizer(model_dir), load_causal_lm(model_dir)
    model.generation_config.eos_token_id = tokenizer.eos_token_id  # as a base that only knows <|endoftext|>
    ids = apply_stop_tokens(model, tokenizer)
    assert tokenizer.convert_tokens_to_ids("<|end|>") in ids and model.generation_config.eos_token_id == ids
    assert set(tokenizer.convert_tokens_to_ids(list(family.stop_tokens))) <= set(ids)


@pytest.mark.parametrize(
    "preset, family",
    [("azure.yaml", "phi-3-mini-4k"), ("azure-phi35.yaml", "phi-3.5-mini"), ("azure-phi4mini.yaml", "phi-4-mini")],
)
def test_each_family_has_an_azure_preset_pinned_to_its_registry_version(preset, family):
    from pipelines.finetune_pipeline import build_pipeline
    from pipelines.settings import load_settings

    settings = load_settings(REPO / "pipelines" / "config" / preset)
    assert settings.base_model == FAMILIES[family].registry_uri
    assert family_for_registry_uri(settings.base_model) is FAMILIES[family]
    assert settings.base_model_name == FAMILIES[family].registry_model
    job = build_pipeline(settings)
    assert job._validate().passed
    assert job.inputs["base_model"]._data.path == FAMILIES[family].registry_uri
