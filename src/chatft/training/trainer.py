"""The model, its PEFT config and the SFTTrainer of a run, wired from finetune's flags (nothing trained yet)."""

from __future__ import annotations

import argparse

from chatft.training.chats import apply_weights, load_chats
from chatft.training.config import check_qlora, resolve_precision, sft_config


def _load_model(args: argparse.Namespace, precision: str, device: str):
    import torch

    from chatft.model_source import find_model_dir, load_causal_lm

    if args.method == "qlora":
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        compute_dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
        return AutoModelForCausalLM.from_pretrained(
            find_model_dir(args.base_model), quantization_config=quantization, dtype=compute_dtype, device_map={"": 0}
        )
    # Adapters train in fp32 on top of a half-precision base (PEFT upcasts them); full fine-tuning keeps fp32
    # master weights and lets autocast run the matmuls in half precision. On a CPU, plain attention (matmul,
    # softmax, matmul) over the short packed rows beat torch's SDPA kernel, whose backward is slow there: a bf16
    # step ran 5–12% faster on 2 cores (bench/README.md).
    attention = "eager" if device == "cpu" else None
    return load_causal_lm(
        args.base_model, dtype="fp32" if args.method == "full" else precision, attn_implementation=attention
    )


def _peft_config(args: argparse.Namespace, model_type: str):
    from peft import LoraConfig

    from chatft.model_source import lora_target_modules

    if args.method == "full":
        return None
    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=lora_target_modules(model_type, args.lora_target_modules),
        use_dora=args.method == "dora",
        task_type="CAUSAL_LM",
    )


def _trainer_class():
    """TRL's SFTTrainer, projecting through the LM head only the positions that have a label when on one CPU.

    TRL's fused LM head scores only labelled positions on GPUs (a Triton kernel) but every position elsewhere, and
    with assistant-only loss about half of them have no label. On SmolLM2 the 49k-word head is a fifth of the
    matrix work of a step; skipping the unlabelled half made a CPU step 1.17× faster per CPU second
    (bench/README.md). The loss is the same sum over labelled tokens / num_items_in_batch.
    """
    import torch
    from trl import SFTTrainer

    class LabelledPositionsSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # Elsewhere TRL's own path is the right one: GPUs (its compact kernel), DDP (the wrapper's forward must
            # run to sync gradients), MoE aux losses, and callers that want the logits.
            # (One process can still be DDP-wrapped: Azure ML sets RANK/WORLD_SIZE=1 for a one-process pytorch job.)
            wrapped = isinstance(model, torch.nn.parallel.DistributedDataParallel)
            single_cpu = self.args.device.type == "cpu" and self.accelerator.num_processes == 1 and not wrapped
            if not single_cpu or return_outputs or self.aux_loss_enabled:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            mode = "train" if self.model.training else "eval"
            causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT or full
            labels = inputs["labels"][:, 1:]
            scored = labels != -100
            features = {key: value for key, value in inputs.items() if key != "labels"}
            hidden = causal_lm.base_model(**features, use_cache=False).last_hidden_state[:, :-1][scored]
            logits = causal_lm.get_output_embeddings()(hidden).float()
            targets = labels[scored]
            count = int(scored.sum())
            loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
            loss = loss / (num_items_in_batch if num_items_in_batch is not None else max(count, 1))
            # The metrics TRL logs, but entropy (a pass over every logit, for a number nobody reads here).
            with torch.no_grad():
                correct = int((logits.argmax(-1) == targets).sum())
            self._metrics[mode]["mean_token_accuracy"].append(correct / count if count else 0.0)
            if mode == "train":
                mask = inputs.get("attention_mask")
                self._total_train_tokens += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return loss

    return LabelledPositionsSFTTrainer


def build_trainer(args: argparse.Namespace):
    """Tokenizer, model, PEFT config and data wired into an SFTTrainer, ready to train (nothing trained yet)."""
    from chatft.devices import pick_device
    from chatft.model_source import load_tokenizer, training_chat_template

    device = pick_device()
    precision = resolve_precision(args.precision, device)
    if args.method == "qlora":
        check_qlora(device)

    # Cheap checks first: data, then the tokenizer, before the model is loaded.
    train_data = load_chats(args.train_data, "train_data")
    # eval_steps -1: no validation loss at all (the evaluate step scores the tuned model on the same chats anyway).
    validation_data = load_chats(args.validation_data, "validation_data") if args.eval_steps >= 0 else None
    tokenizer = load_tokenizer(args.base_model)
    if args.assistant_only_loss:
        # Renders the same text as the stock template, with {% generation %} around the assistant's tokens
        # (and not around a turn with weight 0).
        tokenizer.chat_template = training_chat_template(tokenizer)
    train_data = apply_weights(train_data, "train_data", tokenizer, args.assistant_only_loss)
    validation_data = apply_weights(validation_data, "validation_data", tokenizer, args.assistant_only_loss)
    model = _load_model(args, precision, device)
    periodic_eval = validation_data is not None and args.eval_steps > 0

    config = sft_config(args, precision, device, periodic_eval)
    return _trainer_class()(
        model=model,
        args=config,
        train_dataset=train_data,
        eval_dataset=validation_data,
        processing_class=tokenizer,
        peft_config=_peft_config(args, model.config.model_type),
    )
