"""finetune.py run for real on tiny random Phi-3 / Llama models: LoRA, DoRA, full, masking, resume, CLI errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.helpers.chat_data import make_conversations, write_chat_splits, write_jsonl
from tests.helpers.finetune_runs import COMPONENT_DIR, PHI3_TARGETS, finetune, latest_run, loss_spans, run_args

# Every MLflow run the scripts start goes to the session's test store (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("mlflow_env")


@pytest.fixture(scope="module")
def chats(tmp_path_factory) -> Path:
    return write_chat_splits(tmp_path_factory.mktemp("chats"))


def test_spec_loads_and_its_command_passes_every_input_and_output():
    from azure.ai.ml import load_component

    component = load_component(source=COMPONENT_DIR / "component.yml")
    spec = yaml.safe_load((COMPONENT_DIR / "component.yml").read_text(encoding="utf-8"))
    assert spec["environment"] == "azureml:chatft-train:2" and spec["additional_includes"] == ["../../src/chatft"]
    for name, port in spec["inputs"].items():
        flag = f"--{name} ${{{{inputs.{name}}}}}"
        assert (f"$[[{flag}]]" if port.get("optional") else flag) in component.command
        if port["type"] in ("integer", "number"):
            assert {"min", "max", "default"} <= set(port), f"{name} needs min/max/default"
    for name in spec["outputs"]:
        assert f"--{name} ${{{{outputs.{name}}}}}" in component.command
    # Multi-node on Azure ML: one process per node (one A100 each), nodes from resources.instance_count.
    assert component.distribution.type == "pytorch" and component.distribution.process_count_per_instance == 1
    assert component.resources.instance_count == 1
    # Defaults live in the spec only: the script reads them from there.
    outputs = ["--adapter", "a", "--merged_model", "m2", "--checkpoints", "c"]
    args = finetune.parse_args(["--base_model", "m", "--train_data", "d", *outputs])
    assert args.method == "lora" and args.lora_target_modules == "auto" and args.assistant_only_loss is True
    assert args.learning_rate == spec["inputs"]["learning_rate"]["default"]


def test_parse_args_rejects_values_outside_the_spec_range(capsys):
    base = ["--base_model", "m", "--train_data", "d", "--adapter", "a", "--merged_model", "m2", "--checkpoints", "c"]
    with pytest.raises(SystemExit):
        finetune.parse_args([*base, "--lora_dropout", "0.95"])
    assert "argument --lora_dropout: 0.95 is outside [0.0, 0.9] (see component.yml)" in capsys.readouterr().err
    assert finetune.parse_args([*base, "--packing", "False"]).packing is False  # Azure ML's rendering of booleans


def test_lora_on_phi3_writes_an_adapter_and_a_merged_model_that_differs_from_the_base(
    tiny_phi3_dir, chats, tmp_path, mlflow_store
):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "out"
    metrics = finetune.main(finetune.parse_args(run_args(tiny_phi3_dir, chats, out)))

    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert set(adapter_config["target_modules"]) == PHI3_TARGETS  # exactly the four fused Phi-3 projections
    assert adapter_config["use_dora"] is False and adapter_config["r"] == 16
    # The shipped tokenizer keeps the stock chat template (training swapped in one with generation markers).
    stock = AutoTokenizer.from_pretrained(tiny_phi3_dir).chat_template
    assert AutoTokenizer.from_pretrained(out / "adapter").chat_template == stock
    assert AutoTokenizer.from_pretrained(out / "merged_model").chat_template == stock

    base = AutoModelForCausalLM.from_pretrained(tiny_phi3_dir).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged_model").state_dict()
    assert merged.keys() == base.keys()  # a plain model: no LoRA leftovers
    changed = {name for name in base if not torch.equal(base[name], merged[name])}
    assert changed == {n for n in base if any(f".{t}." in n for t in PHI3_TARGETS)}

    assert metrics["global_step"] == 4 and metrics["method"] == "lora" and metrics["precision"] == "fp32"
    assert metrics["eval_loss_end"] < metrics["eval_loss_start"]
    assert metrics["real_token_fraction"] >= 0.97  # packed, padding-free: no computed position is padding
    assert metrics["world_size"] == 1 and metrics["global_batch_rows"] == 1  # 1 process × 1 row × 1 accumulation
    assert 0 < metrics["loss_token_fraction"] < 0.6  # assistant tokens only
    assert metrics["tokens_per_second"] > 0 and metrics["trainable_params"] < metrics["total_params"] / 2
    assert json.loads((out / "merged_model" / "train_metrics.json").read_text()) == metrics
    assert (out / "merged_model" / "loss_curve.png").read_bytes().startswith(b"\x89PNG")

    run = latest_run(mlflow_store)
    client = mlflow_store.client
    assert run.data.params["method"] == "lora" and run.data.params["precision_used"] == "fp32"
    assert run.data.params["global_batch_rows"] == "1"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
    for per_step in ("tokens_per_second", "real_token_fraction", "learning_rate", "mean_token_accuracy"):
        assert len(client.get_metric_history(run.info.run_id, per_step)) == 4, per_step
    assert "eval_loss" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"loss_curve.png", "train_metrics.json"} <= artifacts


@pytest.mark.parametrize("arch", ["phi3", "llama"])
def test_assistant_only_loss_trains_on_assistant_content_and_end_of_turn_only(arch, request, chats, tmp_path):
    model = request.getfixturevalue(f"tiny_{arch}_dir")
    trainer = finetune.build_trainer(finetune.parse_args(run_args(model, chats, tmp_path, validation=False)))
    expected = []
    for chat in make_conversations(24):
        answers = [m["content"] for m in chat["messages"] if m["role"] == "assistant"]
        if arch == "phi3":  # TRL's Phi-3 training template also trains the newline after <|end|> and the final eos
            expected += [a + "<|end|>\n" for a in answers[:-1]] + [answers[-1] + "<|end|>\n<|endoftext|>"]
        else:  # ChatML: the content and <|im_end|>, not the newline after it
            expected += [a + "<|im_end|>" for a in answers]
    assert sorted(loss_spans(trainer)) == sorted(expected)


def test_smollm2_training_template_renders_like_the_stock_one(tiny_llama_dir):
    from chatft.model_source import SMOLLM2_CHAT_TEMPLATE, load_tokenizer, training_chat_template

    tokenizer = load_tokenizer(tiny_llama_dir)
    assert tokenizer.chat_template == SMOLLM2_CHAT_TEMPLATE
    template = training_chat_template(tokenizer)
    assert template != SMOLLM2_CHAT_TEMPLATE and "{% generation %}" in template
    with_system = [c["messages"] for c in make_conversations(4)]
    without_system = [m[1:] for m in with_system]  # the stock template adds SmolLM's default system prompt
    for messages in with_system + without_system:
        for prompt in (False, True):
            turns = messages[:-1] if prompt else messages
            stock = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=prompt)
            assert (
                tokenizer.apply_chat_template(
                    turns, tokenize=False, add_generation_prompt=prompt, chat_template=template
                )
                == stock
            )


@pytest.mark.parametrize("arch", ["phi3", "llama"])
def test_weight_zero_turns_carry_no_loss_and_chats_left_with_none_are_dropped(arch, request, tmp_path):
    from chatft.model_source import load_tokenizer

    model = request.getfixturevalue(f"tiny_{arch}_dir")
    system = {"role": "system", "content": "You are a concise support assistant."}
    chats, trained = [], []
    for i in range(8):
        first = {"role": "assistant", "content": f"Skipped answer {i}.", "weight": 0}
        second = {"role": "assistant", "content": f"Learned answer {i}.", "weight": 1}
        chats.append(
            [system, {"role": "user", "content": f"Q{i}?"}, first, {"role": "user", "content": "And?"}, second]
        )
        trained.append(second["content"])
    # Nothing left to learn from this one: it is dropped (TRL refuses a chat without assistant tokens).
    chats.append([system, {"role": "user", "content": "Q?"}, {"role": "assistant", "content": "Never.", "weight": 0}])
    write_jsonl(tmp_path / "train" / "train.jsonl", [{"messages": m} for m in chats])

    trainer = finetune.build_trainer(finetune.parse_args(run_args(model, tmp_path, tmp_path / "out", validation=False)))
    end = "<|end|>\n" if arch == "phi3" else "<|im_end|>"
    eos = "<|endoftext|>" if arch == "phi3" else ""  # TRL's Phi-3 template also trains the closing eos
    assert sorted(loss_spans(trainer)) == sorted(answer + end + eos for answer in trained)
    # The text the model reads is unchanged: the weight only moves the loss.
    stock, training = load_tokenizer(model), trainer.processing_class.chat_template
    for messages in chats:
        assert stock.apply_chat_template(messages, tokenize=False, chat_template=training) == (
            stock.apply_chat_template(messages, tokenize=False)
        )
    packed = "".join(trainer.processing_class.decode(row["input_ids"]) for row in trainer.train_dataset)
    assert "Learned answer 7." in packed and "Never." not in packed


def test_cpu_loss_projects_only_labelled_positions_and_equals_trls_loss(tiny_phi3_dir, chats, tmp_path):
    """Our compute_loss (LM head on labelled positions only) gives TRL's loss and gradients, with less work."""
    import torch
    from trl import SFTTrainer

    # No dropout: both losses must see the same forward pass.
    flags = run_args(tiny_phi3_dir, chats, tmp_path, validation=False, lora_dropout=0.0)
    trainer = finetune.build_trainer(finetune.parse_args(flags))
    assert isinstance(trainer, SFTTrainer) and trainer.args.device.type == "cpu"
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    projected = []
    head = model.get_base_model().get_output_embeddings()
    handle = head.register_forward_hook(lambda module, inputs, output: projected.append(inputs[0].shape[0]))
    try:
        ours = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(37))
    finally:
        handle.remove()
    ours_grads = torch.autograd.grad(ours, params)
    theirs = SFTTrainer.compute_loss(trainer, model, dict(batch), num_items_in_batch=torch.tensor(37))
    theirs_grads = torch.autograd.grad(theirs, params)

    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert projected == [labelled] and labelled < 0.7 * batch["input_ids"].numel()
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    for mine, trl_grad in zip(ours_grads, theirs_grads, strict=True):
        assert torch.allclose(mine, trl_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("arch", ["phi3", "llama"])
def test_a_packed_row_scores_each_chat_as_if_it_were_alone(arch, request, chats, tmp_path):
    """Packing is padding-free and keeps attention within each chat: positions restart, nothing leaks across."""
    import torch

    model_dir = request.getfixturevalue(f"tiny_{arch}_dir")
    trainer = finetune.build_trainer(finetune.parse_args(run_args(model_dir, chats, tmp_path, validation=False)))
    batch = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1  # one flat row, no padding
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert len(starts) >= 2
    model = trainer.model.eval()
    one = torch.tensor(1)  # num_items_in_batch=1: the loss is the summed negative log-likelihood
    with torch.no_grad():
        packed = trainer.compute_loss(model, dict(batch), num_items_in_batch=one)
        alone = sum(
            trainer.compute_loss(
                model,
                {
                    "input_ids": batch["input_ids"][:, a:b],
                    "labels": batch["labels"][:, a:b],
                    "position_ids": torch.arange(b - a)[None],
                },
                num_items_in_batch=one,
            )
            for a, b in zip(starts, [*starts[1:], batch["input_ids"].shape[1]], strict=True)
        )
    assert packed.item() == pytest.approx(alone.item(), rel=1e-5)


@pytest.mark.parametrize("method", ["dora", "full"])
def test_dora_and_full_fine_tuning_train_a_step(method, tiny_llama_dir, chats, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    flags = run_args(tiny_llama_dir, chats, out, validation=False, method=method, max_steps=1)
    metrics = finetune.main(finetune.parse_args(flags))

    assert metrics["global_step"] == 1 and metrics["train_loss"] > 0
    if method == "dora":
        assert json.loads((out / "adapter" / "adapter_config.json").read_text())["use_dora"] is True
    else:  # full fine-tuning: every weight trains, and the "adapter" is the whole model
        assert metrics["trainable_params"] == metrics["total_params"]
        assert not (out / "adapter" / "adapter_config.json").exists()
        AutoModelForCausalLM.from_pretrained(out / "adapter")
    assert type(AutoModelForCausalLM.from_pretrained(out / "merged_model")).__name__ == "LlamaForCausalLM"


def test_auto_precision_follows_the_hardware_and_bf16_trains_on_a_cpu(tiny_llama_dir, chats, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this test is about CPUs")
    from chatft.devices import cpu_multiplies_bf16
    from chatft.training.config import resolve_precision

    native = cpu_multiplies_bf16()
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(finetune.ConfigError, match="precision=fp16 needs a CUDA GPU"):
        resolve_precision("fp16", "cpu")

    flags = run_args(tiny_llama_dir, chats, tmp_path, validation=False, precision="bf16", max_steps=2)
    metrics = finetune.main(finetune.parse_args(flags))
    assert metrics["precision"] == "bf16" and metrics["global_step"] == 2 and metrics["train_loss"] > 0
    # Merged into the base at the checkpoint's own precision, not rounded to the training one.
    merged = json.loads((tmp_path / "merged_model" / "config.json").read_text())
    assert merged["dtype"] == json.loads((tiny_llama_dir / "config.json").read_text())["dtype"] == "float32"


def test_it_estimates_the_training_time_after_a_short_warm_up_and_reports_each_step(
    tiny_llama_dir, chats, tmp_path, capsys
):
    flags = run_args(tiny_llama_dir, chats, tmp_path, validation=False, max_steps=4, eval_steps=0)
    finetune.main(finetune.parse_args(flags))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("finetune: ")]
    estimate = [i for i, line in enumerate(lines) if "estimate from 2 measured step(s) on this machine" in line]
    steps = [i for i, line in enumerate(lines) if re.match(r"finetune: step \d/4  loss \d", line)]
    assert len(estimate) == 1 and len(steps) == 4
    assert steps[1] < estimate[0] < steps[2]  # after two steps, before the other two
    assert "for the 2 left" in lines[estimate[0]] and lines[steps[-1]].endswith("about 0 s left")


def test_eval_steps_minus_one_never_computes_a_validation_loss(tiny_llama_dir, chats, tmp_path):
    metrics = finetune.main(finetune.parse_args(run_args(tiny_llama_dir, chats, tmp_path, max_steps=1, eval_steps=-1)))
    assert metrics["global_step"] == 1 and metrics["eval_loss_start"] is None and metrics["eval_loss_end"] is None


def test_without_packing_batches_are_padded_and_the_padding_is_measured(tiny_llama_dir, chats, tmp_path):
    # Batches of 4 chats of one or two turns: rows of unequal length, padded to the longest.
    inputs = {"packing": False, "max_steps": 2, "per_device_train_batch_size": 4, "eval_steps": 0}
    metrics = finetune.main(finetune.parse_args(run_args(tiny_llama_dir, chats, tmp_path, **inputs)))
    assert metrics["global_step"] == 2
    assert 0.5 < metrics["real_token_fraction"] < 1.0
    # eval_steps=0: validated once, after training only.
    assert metrics["eval_loss_start"] is None and metrics["eval_loss_end"] > 0
