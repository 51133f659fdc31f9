"""The pieces of supervised fine-tuning that components/finetune/finetune.py wires together.

config: the settings that must agree (precision, QLoRA, multi-GPU strategy) and the SFTConfig; chats: the training
data; trainer: model, PEFT and the SFTTrainer; checkpoints: resume; callbacks: throughput, progress and MLflow
logging per step; outputs: the merged model, train_metrics.json and the loss curve.
"""
